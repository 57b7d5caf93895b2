"""``advmon incidents`` and ``advmon db`` on PostgreSQL, as on-call runs them.

Each test gets its own PostgreSQL schema in the session's database: the commands reach
it through ``ADVMON_DATABASE__URL`` plus libpq's ``PGOPTIONS=-csearch_path=SCHEMA``.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.cli import main
from monitor.incidents.storage.incidents import GroupingPolicy, IncidentFilter, IncidentStore
from monitor.incidents.storage.models import IncidentStatus
from monitor.incidents.storage.schema import upgrade
from monitor.incidents.views import (
    incident_dict,
)
from tests.monitor.cli_support import assert_clean_failure
from tests.monitor.database_support import detection
from tests.monitor.incidents.query_attacks import query_attack

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """An engine on the fresh schema (not migrated); the CLI is pointed at it too."""
    monkeypatch.setenv("ADVMON_DATABASE__URL", pg_url)
    monkeypatch.setenv("PGOPTIONS", f"-csearch_path={schema}")
    engine = create_engine(pg_url, connect_args={"options": f"-csearch_path={schema}"})
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> IncidentStore:
    """The incident store on the migrated schema (gap 10 minutes)."""
    upgrade(engine)
    return IncidentStore(engine, GroupingPolicy(gap=timedelta(minutes=10)))


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.integration), "sqlite"])
def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[IncidentStore]:
    """The incident store the CLI is pointed at: on PostgreSQL (``store``), then on a
    SQLite file, as the demo keeps it."""
    if request.param == "postgresql":
        yield request.getfixturevalue("store")
        return
    url = f"sqlite:///{tmp_path / 'advmon.db'}"
    monkeypatch.setenv("ADVMON_DATABASE__URL", url)
    engine = create_engine(url)
    try:
        upgrade(engine)
        yield IncidentStore(engine, GroupingPolicy(gap=timedelta(minutes=10)))
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "oncall-os-user")


def _seed(store: IncidentStore) -> tuple[int, int, int]:
    """Three incidents: adversarial on digits, drift on other (acknowledged), quarantine."""
    (adversarial,) = store.record(
        [
            detection("a1", T0, model_version="v3", score=0.5),
            detection("a2", T0 + timedelta(seconds=20), score=0.75),
            detection("a3", T0 + timedelta(seconds=70), source="key-b", score=1.0),
        ]
    ).opened
    (drift,) = store.record(
        [detection("d1", T0 + timedelta(hours=1), kind="drift", model_id="other", score=3.0)]
    ).opened
    (quarantine,) = store.record(
        [
            detection(
                "q1",
                T0 + timedelta(hours=2),
                kind="quarantine",
                source="key-z",
                score=12,
                threshold=10,
                expires_at=T0 + timedelta(hours=3),
            )
        ]
    ).opened
    store.set_status(drift, IncidentStatus.ACKNOWLEDGED, "alice", "looking", now=T0)
    return adversarial, drift, quarantine


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _ok(*args: str) -> Result:
    result = _run(*args)
    assert result.exit_code == 0, result.output
    return result


def _table_rows(output: str) -> list[list[str]]:
    """The cells of a rich table's body rows."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


# --- list ---------------------------------------------------------------------------


def test_list_shows_a_table_newest_first(store: IncidentStore) -> None:
    adversarial, drift, quarantine = _seed(store)
    result = _ok("incidents", "list")
    assert _table_rows(result.stdout) == [
        [
            str(quarantine),
            "quarantine",
            "digits",
            "key-z",
            "open",
            "2026-05-01 14:00:00",
            "2026-05-01 14:00:00",
            "1",
            "12",
        ],
        [
            str(drift),
            "drift",
            "other",
            "—",
            "acknowledged",
            "2026-05-01 13:00:00",
            "2026-05-01 13:00:00",
            "1",
            "3",
        ],
        [
            str(adversarial),
            "adversarial",
            "digits",
            "—",
            "open",
            "2026-05-01 12:00:00",
            "2026-05-01 12:01:10",
            "3",
            "1",
        ],
    ]
    assert result.stderr == "1–3 of 3 matching incident(s)\n"


def test_list_json_is_the_api_shape(store: IncidentStore) -> None:
    adversarial, drift, quarantine = _seed(store)
    document = json.loads(_ok("incidents", "list", "--json").stdout)
    rows, _ = store.find()
    assert document == {
        "items": [incident_dict(incident) for incident in rows],
        "total": 3,
        "limit": 50,
        "offset": 0,
    }
    assert [item["id"] for item in document["items"]] == [quarantine, drift, adversarial]
    first = document["items"][2]
    assert (first["detection_count"], first["peak_score"], first["mean_score"]) == (3, 1.0, 0.75)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "digits"], ["quarantine", "adversarial"]),
        (["--kind", "drift"], ["drift"]),
        (["--status", "acknowledged"], ["drift"]),
        (["--status", "open"], ["quarantine", "adversarial"]),
        (["--source", "key-z"], ["quarantine"]),
        (["--since", "2026-05-01T13:00:00Z"], ["quarantine", "drift"]),
        (["--since", "2026-05-01T15:00:00+02:00"], ["quarantine", "drift"]),
        (["--until", "2026-05-01T13:30:00"], ["drift", "adversarial"]),
        (["--since", "2026-05-01", "--until", "2026-05-01T12:30:00Z"], ["adversarial"]),
        (["--model", "digits", "--kind", "drift"], []),
        (["--limit", "1", "--offset", "1"], ["drift"]),
    ],
)
def test_list_filters(store: IncidentStore, args: list[str], expected: list[str]) -> None:
    _seed(store)
    document = json.loads(_ok("incidents", "list", "--json", *args).stdout)
    assert [item["kind"] for item in document["items"]] == expected


def test_list_takes_times_relative_to_now(store: IncidentStore) -> None:
    _seed(store)
    now = datetime.now(UTC)
    (recent,) = store.record([detection("r1", now - timedelta(minutes=30))]).opened
    recent_only = json.loads(_ok("incidents", "list", "--json", "--since", "1h").stdout)
    assert [item["id"] for item in recent_only["items"]] == [recent]
    older = json.loads(_ok("incidents", "list", "--json", "--until", "2h").stdout)
    assert older["total"] == 3
    assert recent not in [item["id"] for item in older["items"]]


def test_list_pages_and_says_how_to_see_more(store: IncidentStore) -> None:
    _, drift, _ = _seed(store)
    result = _ok("incidents", "list", "--limit", "1", "--offset", "1")
    assert [row[0] for row in _table_rows(result.stdout)] == [str(drift)]
    assert result.stderr == "2–2 of 3 matching incident(s); --offset 2 shows more\n"
    result = _ok("incidents", "list", "--model", "nobody")
    assert result.stdout == ""
    assert result.stderr == "none of 0 matching incident(s)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--since", "yesterday"],
            "Invalid value for '--since': 'yesterday' is neither an ISO 8601 time "
            "(2026-05-01T12:00:00Z) nor a span before now (45s, 30m, 2h, 7d, 2w)",
        ),
        (["--until", "3 days"], "Invalid value for '--until': '3 days' is neither"),
        (["--kind", "evil"], "Invalid value for '--kind': 'evil' is not one of"),
        (["--status", "closed"], "Invalid value for '--status': 'closed' is not one of"),
        (["--limit", "0"], "Invalid value for '--limit'"),
        (
            ["--since", "1h", "--until", "2h"],
            "Invalid value for '--since': --since (",
        ),
    ],
)
def test_bad_filters_are_refused_clearly(
    store: IncidentStore, args: list[str], message: str
) -> None:
    result = _run("incidents", "list", *args)
    assert assert_clean_failure(result, exit_code=2).startswith(message)


# --- show ---------------------------------------------------------------------------


def test_show_prints_the_history(store: IncidentStore) -> None:
    adversarial, _, _ = _seed(store)
    store.set_status(
        adversarial, IncidentStatus.RESOLVED, "bob", "key-a revoked", now=T0 + timedelta(hours=3)
    )
    stdout = _ok("incidents", "show", str(adversarial)).stdout
    lines = [line.rstrip() for line in stdout.splitlines()]
    summary = lines[: lines.index("status changes")]
    assert summary == [
        f"incident {adversarial}",
        " kind        adversarial",
        " model       digits (version v3)",
        " status      resolved",
        " first seen  2026-05-01 12:00:00 UTC",
        " last seen   2026-05-01 12:01:10 UTC",
        " resolved    2026-05-01 15:00:00 UTC",
        " detections  3",
        " score       peak 1, mean 0.75, threshold 0.25",
        " sources     key-a (2), key-b (1)",
    ]
    rows = _table_rows(stdout)
    assert rows == [
        # status changes
        ["2026-05-01 12:00:00", "open", "advmon", "opened by adversarial detection of event a1"],
        ["2026-05-01 15:00:00", "resolved", "bob", "key-a revoked"],
        # detections over time
        ["2026-05-01 12:00:00", "2", "0.75", "█" * 20],
        ["2026-05-01 12:01:00", "1", "1", "█" * 10],
        # decisions: the quarantine of key-z, decided while the incident was open
        [
            "2026-05-01 14:00:00",
            "quarantine",
            "source",
            "key-z",
            "2026-05-01 15:00:00",
            "12 flagged events",
        ],
        # sample events
        ["a1", "0.5", "key-a", "2026-05-01 12:00:00"],
        ["a2", "0.75", "key-a", "2026-05-01 12:00:20"],
        ["a3", "1", "key-b", "2026-05-01 12:01:10"],
    ]
    assert "detections over time (1-minute buckets)" in lines


def test_show_json_is_the_detailed_api_shape(store: IncidentStore) -> None:
    adversarial, _, _ = _seed(store)
    document = json.loads(_ok("incidents", "show", str(adversarial), "--json").stdout)
    assert document == incident_dict(store.get(adversarial), detail=True)
    assert document["timeline"] == [
        {"start": "2026-05-01T12:00:00+00:00", "count": 2, "peak_score": 0.75},
        {"start": "2026-05-01T12:01:00+00:00", "count": 1, "peak_score": 1.0},
    ]
    assert document["sources"] == [
        {"source": "key-a", "detections": 2},
        {"source": "key-b", "detections": 1},
    ]


def test_show_never_reads_traffic_text_as_markup(store: IncidentStore) -> None:
    (incident,) = store.record([detection("[bold]x[/]", T0, source="[/]")]).opened
    stdout = _ok("incidents", "show", str(incident)).stdout
    assert ["[bold]x[/]", "0.5", "[/]", "2026-05-01 12:00:00"] in _table_rows(stdout)


def test_show_says_what_drifted(store: IncidentStore) -> None:
    drifts = [
        detection(
            f"drift:{signal}:req:{n}",
            T0 + timedelta(seconds=n),
            kind="drift",
            source=None,
            score=abs(after - before),
            threshold=0.0,
            signal=signal,
            detector="adwin",
            details={"mean_before": before, "mean_recent": after, "events_seen": float(n)},
        )
        for signal, before, after, n in (("input_mean", 0.31, 0.4, 1247), ("top1", 0.97, 0.9, 1375))
    ]
    (incident,) = store.record(drifts).opened
    rows = _table_rows(_ok("incidents", "show", str(incident)).stdout)
    assert ["input_mean", "adwin", "0.31", "0.4", "req:1247", "1,247 events"] in rows
    assert ["top1", "adwin", "0.97", "0.9", "req:1375", "1,375 events"] in rows
    stored = {d.signal: d for d in store.get(incident).detections}
    assert stored["top1"].details == {
        "mean_before": 0.97,
        "mean_recent": 0.9,
        "events_seen": 1375.0,
    }


def _record_attack(
    store: IncidentStore, event_id: str = "q-17", source: str = "key-z", **fields: Any
) -> int:
    """An adversarial incident of digits, then the query attack of ``source``: quarantined
    at 12:01 (query ``event_id``), only flagged at 12:03 (q-40). The query attack's id."""
    store.record([detection("a1", T0)])
    (attack,) = store.record(
        [
            query_attack(event_id, T0 + timedelta(minutes=1), source=source, **fields),
            query_attack(
                "q-40",
                T0 + timedelta(minutes=3),
                source=source,
                linked=14,
                enforced=False,
                related=[],
            ),
        ]
    ).opened
    return attack


def _block(lines: list[str], title: str) -> list[str]:
    """The lines of the borderless table titled ``title``, up to the next title."""
    start = lines.index(title)
    end = next(
        (n for n in range(start + 1, len(lines)) if not lines[n].startswith(" ")), len(lines)
    )
    return lines[start + 1 : end]


def test_show_explains_a_query_attack(any_store: IncidentStore) -> None:
    attack = _record_attack(any_store)
    stdout = _ok("incidents", "show", str(attack)).stdout
    lines = [line.rstrip() for line in stdout.splitlines()]
    assert _block(lines, f"incident {attack}") == [
        " kind        query_attack",
        " model       digits (version v3)",
        " source      key-z",
        " status      open",
        " first seen  2026-05-01 12:01:00 UTC",
        " last seen   2026-05-01 12:03:00 UTC",
        " detections  2",
        " score       peak 14, mean 13, threshold 8",
        " sources     key-z (2)",
    ]
    assert _block(lines, "query attack detected 2026-05-01 12:01:00 UTC") == [
        " source            key-z",
        " triggering query  q-17",
        " linked queries    12 of the source's held queries, by chains of fingerprint matches "
        "(threshold 8)",
        " matched directly  5 of the 40 queries held for the source",
        " over              1m 30s: oldest linked query 2026-05-01 11:59:29 → triggering query "
        "2026-05-01 12:00:59 (UTC)",
        " matched events    q-16, q-15, q-11",
        " decision          source quarantined until 2026-05-01 13:01:00 UTC",
    ]
    assert _block(lines, "query attack detected 2026-05-01 12:03:00 UTC") == [
        " source            key-z",
        " triggering query  q-40",
        " linked queries    14 of the source's held queries, by chains of fingerprint matches "
        "(threshold 8)",
        " matched directly  5 of the 40 queries held for the source",
        " over              1m 30s: oldest linked query 2026-05-01 12:01:29 → triggering query "
        "2026-05-01 12:02:59 (UTC)",
        " matched events    —",
        " decision          source flagged, not quarantined (the policy does not enforce), "
        "until 2026-05-01 13:03:00 UTC",
    ]
    # The explanation comes right after the summary, before the history.
    assert lines.index("query attack detected 2026-05-01 12:03:00 UTC") < lines.index(
        "status changes"
    )
    rows = _table_rows(stdout)
    assert [
        "2026-05-01 12:01:00",
        "open",
        "advmon",
        "opened by query_attack detection of event q-17",
    ] in rows
    decisions = [row for row in rows if row[-1].endswith("(query attack)")]
    assert decisions == [
        [
            "2026-05-01 12:01:00",
            "quarantine",
            "source",
            "key-z",
            "2026-05-01 13:01:00",
            "12 linked queries (query attack)",
        ],
        [
            "2026-05-01 12:03:00",
            "flag",
            "source",
            "key-z",
            "2026-05-01 13:03:00",
            "14 linked queries (query attack)",
        ],
    ]
    # The model's adversarial incident shows the decisions on key-z, and no explanation.
    (adversarial,) = [i.id for i in any_store.find()[0] if i.kind.value == "adversarial"]
    other = _ok("incidents", "show", str(adversarial)).stdout
    assert "query attack detected" not in other
    assert [row for row in _table_rows(other) if row[-1].endswith("(query attack)")] == decisions


def test_show_json_explains_a_query_attack(any_store: IncidentStore) -> None:
    attack = _record_attack(any_store)
    document = json.loads(_ok("incidents", "show", str(attack), "--json").stdout)
    assert document == incident_dict(any_store.get(attack), detail=True)
    assert [
        (
            a["event_id"],
            a["source"],
            a["linked_queries"],
            a["min_linked"],
            a["matched_directly"],
            a["held_queries"],
            a["first_linked_at"],
            a["query_at"],
            a["span_seconds"],
            a["related_event_ids"],
            a["action"],
            a["expires_at"],
        )
        for a in document["query_attacks"]
    ] == [
        (
            "q-17",
            "key-z",
            12,
            8,
            5,
            40,
            "2026-05-01T11:59:29+00:00",
            "2026-05-01T12:00:59+00:00",
            90.0,
            ["q-16", "q-15", "q-11"],
            "quarantine",
            "2026-05-01T13:01:00+00:00",
        ),
        (
            "q-40",
            "key-z",
            14,
            8,
            5,
            40,
            "2026-05-01T12:01:29+00:00",
            "2026-05-01T12:02:59+00:00",
            90.0,
            [],
            "flag",
            "2026-05-01T13:03:00+00:00",
        ),
    ]


def test_show_prints_what_a_query_attacker_sent_as_it_is(any_store: IncidentStore) -> None:
    related = ["[bold]x[/]", "[red]", "esc\x1b[2Jclear", "line\nbreak", "rtl\u202eexe.txt"]
    attack = _record_attack(any_store, source="[red]key[/red]", event_id="[/]q", related=related)
    stdout = _ok("incidents", "show", str(attack)).stdout
    assert "\x1b" not in stdout
    assert "\u202e" not in stdout
    lines = [line.rstrip() for line in stdout.splitlines()]
    shown = _block(lines, "query attack detected 2026-05-01 12:01:00 UTC")
    assert shown[:2] == [" source            [red]key[/red]", " triggering query  [/]q"]
    assert shown[5] == (
        " matched events    [bold]x[/], [red], esc\\x1b[2Jclear, line\\nbreak, rtl\\u202eexe.txt"
    )
    assert " source      [red]key[/red]" in lines
    assert ["[/]q", "12", "[red]key[/red]", "2026-05-01 12:01:00"] in _table_rows(stdout)
    document = json.loads(_ok("incidents", "show", str(attack), "--json").stdout)
    assert document["query_attacks"][0]["related_event_ids"] == related
    assert document["query_attacks"][0]["source"] == "[red]key[/red]"


def test_list_and_export_a_query_attack(any_store: IncidentStore) -> None:
    attack = _record_attack(any_store)
    result = _ok("incidents", "list", "--kind", "query_attack")
    assert _table_rows(result.stdout) == [
        [
            str(attack),
            "query_attack",
            "digits",
            "key-z",
            "open",
            "2026-05-01 12:01:00",
            "2026-05-01 12:03:00",
            "2",
            "14",
        ]
    ]
    by_source = json.loads(_ok("incidents", "list", "--json", "--source", "key-z").stdout)
    assert [item["id"] for item in by_source["items"]] == [attack]

    text = _ok("incidents", "export", "--kind", "query_attack").stdout
    assert f"## Incident {attack}: query_attack on model digits, source key-z\n" in text
    assert (
        "\n### Query attack\n\nQuery q-17 from source key-z, sent 2026-05-01 12:00:59 UTC, "
        "was linked by chains of fingerprint matches to 12 of the source's held queries "
        "(threshold 8), the oldest sent 1m 30s before it (2026-05-01 11:59:29 UTC). It "
        "matched 5 of the 40 queries held for the source directly, among them q-16, q-15, "
        "q-11 (newest first). Decision: source quarantined until 2026-05-01 13:01:00 UTC.\n"
    ) in text
    document = json.loads(_ok("incidents", "export", "--format", "json").stdout)
    (exported,) = [i for i in document["incidents"] if i["id"] == attack]
    assert exported == incident_dict(any_store.get(attack), detail=True)


def test_show_unknown_incident(store: IncidentStore) -> None:
    message = assert_clean_failure(_run("incidents", "show", "4242"))
    assert message == "no incident 4242; `advmon incidents list` shows the ids"


# --- ack / resolve ------------------------------------------------------------------


def test_ack_then_resolve_record_who_and_why(store: IncidentStore) -> None:
    adversarial, _, _ = _seed(store)
    result = _ok("incidents", "ack", str(adversarial), "--note", "on it", "--by", "carol")
    assert result.stdout == f"incident {adversarial} acknowledged by carol\n"
    result = _ok("incidents", "resolve", str(adversarial), "--note", "blocked key-a")
    assert result.stdout == f"incident {adversarial} resolved by oncall-os-user\n"

    incident = store.get(adversarial)
    assert incident.status is IncidentStatus.RESOLVED
    assert [(c.status, c.by, c.note) for c in incident.changes] == [
        (IncidentStatus.OPEN, "advmon", "opened by adversarial detection of event a1"),
        (IncidentStatus.ACKNOWLEDGED, "carol", "on it"),
        (IncidentStatus.RESOLVED, "oncall-os-user", "blocked key-a"),
    ]
    before, after = incident.changes[1].at, datetime.now(UTC)
    assert timedelta(0) <= after - before < timedelta(minutes=1)


def test_ack_and_resolve_refuse_clearly(store: IncidentStore) -> None:
    adversarial, drift, _ = _seed(store)
    message = assert_clean_failure(_run("incidents", "ack", str(drift), "--note", "again"))
    assert message == f"incident {drift} is acknowledged; it cannot become acknowledged"
    _ok("incidents", "resolve", str(adversarial), "--note", "done")
    message = assert_clean_failure(_run("incidents", "resolve", str(adversarial), "--note", "x"))
    assert message == f"incident {adversarial} is resolved; it cannot become resolved"
    message = assert_clean_failure(_run("incidents", "ack", "4242", "--note", "x"))
    assert message == "no incident 4242; `advmon incidents list` shows the ids"
    assert len(store.get(adversarial).changes) == 2


def test_a_note_is_required(store: IncidentStore) -> None:
    message = assert_clean_failure(_run("incidents", "ack", "1"), exit_code=2)
    assert message == "Missing option '--note'."


# --- export -------------------------------------------------------------------------


def test_export_markdown_to_a_file(store: IncidentStore, tmp_path: Path) -> None:
    adversarial, _, quarantine = _seed(store)
    out = tmp_path / "postmortem.md"
    result = _ok("incidents", "export", "--model", "digits", "--out", str(out))
    assert result.stdout == ""
    assert result.stderr == f"exported 2 incident(s) to {out}\n"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# advmon incident report\n\nGenerated ")
    assert "; 2 incident(s) matching model_id digits.\n" in text
    assert text.index(f"## Incident {quarantine}: quarantine on model digits, source key-z") < (
        text.index(f"## Incident {adversarial}: adversarial on model digits\n")
    )
    assert "- Detections: 3 from 2 source(s)\n" in text
    assert "- Score: peak 1, mean 0.75, threshold 0.25 (peak 4.00× the threshold)\n" in text
    assert "| 2026-05-01 12:00:00 UTC | opened by advmon: opened by adversarial detection" in text


def test_export_json_and_csv(store: IncidentStore) -> None:
    adversarial, drift, quarantine = _seed(store)
    document = json.loads(_ok("incidents", "export", "--format", "json", "--kind", "drift").stdout)
    assert document["filters"] == {"kind": "drift"}
    assert document["incidents"] == [incident_dict(store.get(drift), detail=True)]

    csv_text = _ok("incidents", "export", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [(row["id"], row["kind"], row["status"]) for row in rows] == [
        (str(quarantine), "quarantine", "open"),
        (str(drift), "drift", "acknowledged"),
        (str(adversarial), "adversarial", "open"),
    ]


def test_export_says_when_more_incidents_match(store: IncidentStore) -> None:
    _seed(store)
    result = _ok("incidents", "export", "--format", "csv", "--limit", "2")
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 2
    assert result.stderr == (
        "3 incidents match; exported 2 (--offset 0 --limit 2): narrow the filters or page "
        "with --offset\n"
    )


def test_export_to_an_unwritable_place(store: IncidentStore, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "report.md"
    message = assert_clean_failure(_run("incidents", "export", "--out", str(out)))
    assert message == f"No such file or directory: {out}"


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["incidents", "list"],
        ["incidents", "show", "1"],
        ["incidents", "ack", "1", "--note", "x"],
        ["incidents", "resolve", "1", "--note", "x"],
        ["incidents", "export"],
        ["api"],
    ],
)
def test_commands_refuse_a_schema_that_is_behind(
    engine: Engine, pg_url: str, args: list[str]
) -> None:
    message = assert_clean_failure(_run(*args))
    database = make_url(pg_url).render_as_string(hide_password=True)
    assert message == (
        f"the database {database} is empty, this advmon needs revision 0003: "
        "run `advmon db upgrade`"
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "args",
    [["incidents", "list"], ["incidents", "show", "1"], ["db", "upgrade"], ["db", "current"]],
)
def test_an_unreachable_database_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    port = _closed_port()
    monkeypatch.setenv(
        "ADVMON_DATABASE__URL", f"postgresql+psycopg://advmon:hunter2-secret@127.0.0.1:{port}/prod"
    )
    result = _run(*args)
    message = assert_clean_failure(result)
    assert message.startswith(f"cannot connect to the database prod on 127.0.0.1:{port}: ")
    assert message.endswith("; check ADVMON_DATABASE__URL and that the server is up")
    assert "Connection refused" in message
    assert "hunter2" not in result.output


# --- ``advmon api``: beyond loopback only with a token --------------------------------


@pytest.mark.parametrize(
    ("args", "environment"),
    [
        (["--host", "0.0.0.0"], {}),
        (["--host", "::"], {}),
        (["--host", "192.0.2.10"], {}),
        (["--host", "api.example.invalid"], {}),
        # As compose passes an unset variable: ADVMON_API__TOKEN=${ADVMON_API__TOKEN:-}.
        ([], {"ADVMON_API__HOST": "0.0.0.0", "ADVMON_API__TOKEN": ""}),
    ],
)
def test_api_refuses_to_listen_beyond_loopback_without_a_token(
    monkeypatch: pytest.MonkeyPatch, args: list[str], environment: dict[str, str]
) -> None:
    monkeypatch.delenv("ADVMON_API__TOKEN", raising=False)
    monkeypatch.delenv("ADVMON_API__HOST", raising=False)
    # A database that does not answer: the refusal comes before the database is opened.
    monkeypatch.setenv(
        "ADVMON_DATABASE__URL", f"postgresql+psycopg://advmon@127.0.0.1:{_closed_port()}/prod"
    )
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    message = assert_clean_failure(_run("api", *args, "--port", "8080"))
    host = args[1] if args else environment["ADVMON_API__HOST"]
    assert message == (
        f"refusing to serve the incident API on {host}:8080 without a token: set "
        "ADVMON_API__TOKEN, or listen on 127.0.0.1"
    )


@pytest.mark.parametrize(
    ("host", "token"),
    [("127.0.0.1", None), ("localhost", None), ("::1", None), ("0.0.0.0", "s3cret-api-token")],
)
def test_api_listens_on_loopback_or_with_a_token(
    store: IncidentStore, monkeypatch: pytest.MonkeyPatch, host: str, token: str | None
) -> None:
    from aiohttp import web

    monkeypatch.delenv("ADVMON_API__TOKEN", raising=False)
    if token is not None:
        monkeypatch.setenv("ADVMON_API__TOKEN", token)
    served: list[tuple[str, int]] = []

    def run_app(app: web.Application, *, host: str, port: int, **_: object) -> None:
        served.append((host, port))

    monkeypatch.setattr(web, "run_app", run_app)
    _ok("api", "--host", host, "--port", "8080")
    assert served == [(host, 8080)]


def test_no_database_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVMON_DATABASE__URL", raising=False)
    message = assert_clean_failure(_run("incidents", "list"))
    assert message.startswith("no incident database configured: set ADVMON_DATABASE__URL")


def test_the_engine_is_closed_after_each_command(store: IncidentStore, engine: Engine) -> None:
    adversarial, _, _ = _seed(store)
    count = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
    with engine.connect() as connection:
        before = connection.scalar(count)
        _ok("incidents", "list")
        _ok("incidents", "show", str(adversarial))
        after = connection.scalar(count)
    assert after == before


def test_filters_match_the_store(store: IncidentStore) -> None:
    # The CLI passes its filters straight to the store: same rows, same total.
    _seed(store)
    document = json.loads(_ok("incidents", "list", "--json", "--model", "digits").stdout)
    rows, total = store.find(IncidentFilter(model_id="digits"))
    assert (document["total"], [item["id"] for item in document["items"]]) == (
        total,
        [row.id for row in rows],
    )


def test_ack_asks_for_a_name_when_the_os_has_none(
    store: IncidentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_user() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", no_user)
    adversarial, _, _ = _seed(store)
    result = _run("incidents", "ack", str(adversarial), "--note", "x")
    assert assert_clean_failure(result, exit_code=2) == (
        "cannot tell who you are from the OS: give --by NAME"
    )
    assert store.get(adversarial).status is IncidentStatus.OPEN
