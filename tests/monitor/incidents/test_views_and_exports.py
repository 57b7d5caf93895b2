"""Incident serialization and postmortem exports, on incidents built in memory."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.incidents.exports import (
    render_csv,
    render_export,
    render_json,
    render_markdown,
)
from monitor.incidents.storage.incidents import IncidentFilter
from monitor.incidents.storage.models import (
    DetectionRow,
    Incident,
    IncidentKind,
    IncidentStatus,
    StatusChange,
)
from monitor.incidents.views import (
    DecisionTaken,
    DetectionBucket,
    DriftChange,
    QueryAttack,
    SampleEvent,
    decision_reason,
    decisions_taken,
    detection_dict,
    detection_timeline,
    drift_changes,
    incident_dict,
    parse_time,
    query_attack_dict,
    query_attacks,
    sample_events,
    score_summary,
    source_counts,
    sources_summary,
    timeline_width,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 5, 1, 13, 0, tzinfo=UTC)


def _detection(event_id: str, seconds: float, score: float, source: str | None) -> DetectionRow:
    return DetectionRow(
        kind=IncidentKind.ADVERSARIAL,
        event_id=event_id,
        model_id="digits",
        source=source,
        score=score,
        threshold=0.25,
        detected_at=T0 + timedelta(seconds=seconds),
        topic="inference",
        partition=0,
        offset=int(seconds),
    )


def _incident(**overrides: Any) -> Incident:
    """Incident 7: four detections over 2.5 minutes, a quarantine, acknowledged then resolved."""
    detections = [
        _detection("e1", 0, 0.5, "key-a"),
        _detection("e2", 30, 0.75, "key-a"),
        _detection("e3", 70, 1.0, "key-b"),
        _detection("e4", 150, 0.25, None),
    ]
    values: dict[str, Any] = {
        "id": 7,
        "kind": IncidentKind.ADVERSARIAL,
        "model_id": "digits",
        "model_version": "v3",
        "source": None,
        "status": IncidentStatus.RESOLVED,
        "first_seen": T0,
        "last_seen": T0 + timedelta(seconds=150),
        "detection_count": 4,
        "peak_score": 1.0,
        "score_sum": 2.5,
        "threshold": 0.25,
        "detector_sha256": "ab" * 32,
        "sample_events": [
            {"event_id": "e1", "score": 0.5, "source": "key-a", "detected_at": T0.isoformat()},
            {
                "event_id": "e3",
                "score": 1.0,
                "source": "key-b",
                "detected_at": (T0 + timedelta(seconds=70)).isoformat(),
            },
        ],
        "decisions": [
            {
                "action": "quarantine",
                "scope": "source",
                "source": "key-a",
                "decided_at": (T0 + timedelta(seconds=40)).isoformat(),
                "expires_at": (T0 + timedelta(hours=1)).isoformat(),
                "flagged_events": 10.0,
            }
        ],
        "resolved_at": T0 + timedelta(minutes=20),
        "alert_sent_at": T0 + timedelta(seconds=5),
    }
    values.update(overrides)
    incident = Incident(**values)
    incident.changes = [
        StatusChange(status=IncidentStatus.OPEN, at=T0, by="advmon", note="opened by e1"),
        StatusChange(
            status=IncidentStatus.ACKNOWLEDGED,
            at=T0 + timedelta(minutes=5),
            by="alice",
            note="looking",
        ),
        StatusChange(
            status=IncidentStatus.RESOLVED,
            at=T0 + timedelta(minutes=20),
            by="bob",
            note="key-a revoked",
        ),
    ]
    incident.detections = detections
    return incident


# --- parse_time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", NOW - timedelta(seconds=45)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 2 h ", NOW - timedelta(hours=2)),
        ("2026-04-30T10:00:00Z", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30T12:00:00+02:00", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30T10:00:00", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30", datetime(2026, 4, 30, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_iso_and_spans_before_now(text: str, expected: datetime) -> None:
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("text", ["yesterday", "2x", "-2h", "", "2026-13-01"])
def test_parse_time_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="neither an ISO 8601 time") as error:
        parse_time(text, NOW)
    assert repr(text) in str(error.value)


# --- JSON shape ---------------------------------------------------------------------


def test_incident_dict_has_every_field_of_the_incident() -> None:
    assert incident_dict(_incident()) == {
        "id": 7,
        "kind": "adversarial",
        "model_id": "digits",
        "model_version": "v3",
        "source": None,
        "status": "resolved",
        "first_seen": "2026-05-01T12:00:00+00:00",
        "last_seen": "2026-05-01T12:02:30+00:00",
        "resolved_at": "2026-05-01T12:20:00+00:00",
        "detection_count": 4,
        "peak_score": 1.0,
        "mean_score": 0.625,
        "threshold": 0.25,
        "detector_sha256": "ab" * 32,
        "alert_sent_at": "2026-05-01T12:00:05+00:00",
        "sample_events": _incident().sample_events,
        "decisions": _incident().decisions,
    }


def test_incident_dict_in_detail_adds_history_sources_and_timeline() -> None:
    data = incident_dict(_incident(), detail=True)
    assert data["status_changes"] == [
        {
            "status": "open",
            "at": "2026-05-01T12:00:00+00:00",
            "by": "advmon",
            "note": "opened by e1",
        },
        {
            "status": "acknowledged",
            "at": "2026-05-01T12:05:00+00:00",
            "by": "alice",
            "note": "looking",
        },
        {
            "status": "resolved",
            "at": "2026-05-01T12:20:00+00:00",
            "by": "bob",
            "note": "key-a revoked",
        },
    ]
    assert data["sources"] == [
        {"source": "key-a", "detections": 2},
        {"source": None, "detections": 1},
        {"source": "key-b", "detections": 1},
    ]
    assert data["timeline"] == [
        {"start": "2026-05-01T12:00:00+00:00", "count": 2, "peak_score": 0.75},
        {"start": "2026-05-01T12:01:00+00:00", "count": 1, "peak_score": 1.0},
        {"start": "2026-05-01T12:02:00+00:00", "count": 1, "peak_score": 0.25},
    ]
    assert data["query_attacks"] == []
    # The summary fields are the same as without detail.
    assert {k: v for k, v in data.items() if k in incident_dict(_incident())} == incident_dict(
        _incident()
    )


def test_timeline_buckets_align_to_the_epoch() -> None:
    detections = _incident().detections
    buckets = detection_timeline(detections, timedelta(minutes=2))
    assert buckets == [
        DetectionBucket(T0, timedelta(minutes=2), 3, 1.0),
        DetectionBucket(T0 + timedelta(minutes=2), timedelta(minutes=2), 1, 0.25),
    ]
    assert detection_timeline([]) == []


@pytest.mark.parametrize(
    ("span", "width"),
    [
        (timedelta(0), timedelta(minutes=1)),
        (timedelta(minutes=29), timedelta(minutes=1)),
        (timedelta(minutes=30), timedelta(minutes=5)),
        (timedelta(hours=5), timedelta(minutes=15)),
        (timedelta(days=2), timedelta(hours=3)),
        (timedelta(days=400), timedelta(weeks=1)),
    ],
)
def test_timeline_width_fits_thirty_buckets(span: timedelta, width: timedelta) -> None:
    assert timeline_width(_incident(last_seen=T0 + span)) == width


def test_source_counts_most_first() -> None:
    assert source_counts(_incident().detections) == [("key-a", 2), (None, 1), ("key-b", 1)]


# --- what an incident shows ---------------------------------------------------------


def test_what_an_incident_shows_is_read_from_its_columns() -> None:
    incident = _incident()
    assert score_summary(incident) == "peak 1, mean 0.625, threshold 0.25"
    assert decisions_taken(incident) == [
        DecisionTaken(
            action="quarantine",
            scope="source",
            source="key-a",
            decided_at=T0 + timedelta(seconds=40),
            expires_at=T0 + timedelta(hours=1),
            flagged_events=10.0,
        )
    ]
    assert sample_events(incident) == [
        SampleEvent("e1", 0.5, "key-a", T0),
        SampleEvent("e3", 1.0, "key-b", T0 + timedelta(seconds=70)),
    ]
    assert drift_changes(incident) == []


def test_sources_summary_names_the_first_and_counts_the_rest() -> None:
    sources = [("key-a", 3), ("key-b", 2), ("(none)", 1)]
    assert sources_summary(sources, most=5) == "key-a (3), key-b (2), (none) (1)"
    assert sources_summary(sources, most=1) == "key-a (3), and 2 more"


def test_drift_changes_say_what_moved_and_when() -> None:
    drift = DetectionRow(
        kind=IncidentKind.DRIFT,
        event_id="drift:top1:req-9",
        model_id="digits",
        source=None,
        score=0.07,
        threshold=0.0,
        detected_at=T0,
        topic="signals",
        partition=0,
        offset=3,
        signal="top1",
        detector="adwin",
        details={"mean_before": 0.97, "mean_recent": 0.9, "events_seen": 1375.0},
    )
    incident = _incident(kind=IncidentKind.DRIFT)
    incident.detections = [drift, _detection("e1", 0, 0.5, "key-a")]
    assert drift_changes(incident) == [
        DriftChange(
            signal="top1",
            detector="adwin",
            mean_before=0.97,
            mean_recent=0.9,
            at_event="req-9",
            events_seen=1375,
        )
    ]
    assert drift_changes(incident, most=0) == []


# --- exports ------------------------------------------------------------------------


def test_json_export_holds_the_filters_and_every_incident_in_detail() -> None:
    filters = IncidentFilter(model_id="digits", kind=IncidentKind.ADVERSARIAL, since=T0)
    document = json.loads(render_json([_incident()], filters=filters, generated_at=NOW))
    assert document == {
        "generated_at": "2026-05-01T13:00:00+00:00",
        "filters": {
            "model_id": "digits",
            "kind": "adversarial",
            "since": "2026-05-01T12:00:00+00:00",
        },
        "incidents": [incident_dict(_incident(), detail=True)],
    }


def test_csv_export_is_one_row_per_incident() -> None:
    text = render_csv([_incident(), _incident(id=8, status=IncidentStatus.OPEN, resolved_at=None)])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["id"] for row in rows] == ["7", "8"]
    assert rows[0] == {
        "id": "7",
        "kind": "adversarial",
        "model_id": "digits",
        "model_version": "v3",
        "source": "",
        "status": "resolved",
        "first_seen": "2026-05-01T12:00:00+00:00",
        "last_seen": "2026-05-01T12:02:30+00:00",
        "resolved_at": "2026-05-01T12:20:00+00:00",
        "detection_count": "4",
        "peak_score": "1.0",
        "mean_score": "0.625",
        "threshold": "0.25",
        "detector_sha256": "ab" * 32,
        "alert_sent_at": "2026-05-01T12:00:05+00:00",
        "sample_events": json.dumps(_incident().sample_events),
        "decisions": json.dumps(_incident().decisions),
    }
    assert rows[1]["status"] == "open"
    assert rows[1]["resolved_at"] == ""


def test_csv_export_defuses_spreadsheet_formulas_from_the_traffic() -> None:
    attack = '=HYPERLINK("http://evil.example","x")'
    text = render_csv([_incident(kind=IncidentKind.QUARANTINE, source=attack, model_id="@m")])
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["source"] == "'" + attack
    assert row["model_id"] == "'@m"


def test_markdown_export_is_a_postmortem_summary() -> None:
    text = render_markdown(
        [_incident()], filters=IncidentFilter(model_id="digits"), generated_at=NOW
    )
    assert text == (
        "# advmon incident report\n"
        "\n"
        "Generated 2026-05-01 13:00:00 UTC; 1 incident(s) matching model_id digits.\n"
        "\n"
        "## Incident 7: adversarial on model digits\n"
        "\n"
        "**What:** Adversarial inputs flagged by feature squeezing against model digits "
        "(version v3).\n"
        "\n"
        "- Status: resolved\n"
        "- First seen: 2026-05-01 12:00:00 UTC\n"
        "- Last seen: 2026-05-01 12:02:30 UTC (2m 30s after the first)\n"
        "- Resolved: 2026-05-01 12:20:00 UTC\n"
        f"- Detector: sha256 {'ab' * 32}\n"
        "\n"
        "### Impact\n"
        "\n"
        "- Detections: 4 from 3 source(s)\n"
        "- Score: peak 1, mean 0.625, threshold 0.25 (peak 4.00× the threshold)\n"
        "- Sources: key-a (2), (no source) (1), key-b (1)\n"
        "\n"
        "### Decisions taken\n"
        "\n"
        "- 2026-05-01 12:00:40 UTC: quarantine of source key-a until 2026-05-01 13:00:00 UTC "
        "after 10 flagged events\n"
        "\n"
        "### Timeline\n"
        "\n"
        "| time | what |\n"
        "|---|---|\n"
        "| 2026-05-01 12:00:00 UTC | first detection |\n"
        "| 2026-05-01 12:00:00 UTC | opened by advmon: opened by e1 |\n"
        "| 2026-05-01 12:00:40 UTC | decision: quarantine of source key-a until "
        "2026-05-01 13:00:00 UTC after 10 flagged events |\n"
        "| 2026-05-01 12:02:30 UTC | last detection |\n"
        "| 2026-05-01 12:05:00 UTC | acknowledged by alice: looking |\n"
        "| 2026-05-01 12:20:00 UTC | resolved by bob: key-a revoked |\n"
        "\n"
        "### Detections over time (per 1m)\n"
        "\n"
        "| from | detections | peak score |\n"
        "|---|---:|---:|\n"
        "| 2026-05-01 12:00:00 UTC | 2 | 0.75 |\n"
        "| 2026-05-01 12:01:00 UTC | 1 | 1 |\n"
        "| 2026-05-01 12:02:00 UTC | 1 | 0.25 |\n"
        "\n"
        "### Sample events\n"
        "\n"
        "| event id | score | source | detected at |\n"
        "|---|---:|---|---|\n"
        "| e1 | 0.5 | key-a | 2026-05-01 12:00:00 UTC |\n"
        "| e3 | 1 | key-b | 2026-05-01 12:01:10 UTC |\n"
    )


def test_markdown_escapes_text_from_the_traffic_and_the_notes() -> None:
    incident = _incident(kind=IncidentKind.QUARANTINE, source="a|b*<script>", decisions=[])
    incident.changes[1].note = "line one\nline | two"
    text = render_markdown([incident], filters=IncidentFilter(), generated_at=NOW)
    assert "## Incident 7: quarantine on model digits, source a\\|b\\*\\<script\\>\n" in text
    assert "| acknowledged by alice: line one line \\| two |\n" in text
    assert "### Decisions taken\n\nNone recorded.\n" in text
    assert "Generated 2026-05-01 13:00:00 UTC; 1 incident(s).\n" in text


def test_render_export_picks_the_format() -> None:
    incidents, filters = [_incident()], IncidentFilter()
    assert render_export(incidents, "csv", filters=filters, generated_at=NOW) == render_csv(
        incidents
    )
    assert render_export(incidents, "json", filters=filters, generated_at=NOW) == render_json(
        incidents, filters=filters, generated_at=NOW
    )
    assert render_export(
        incidents, "markdown", filters=filters, generated_at=NOW
    ) == render_markdown(incidents, filters=filters, generated_at=NOW)


# --- query attacks ------------------------------------------------------------------

#: When query q-17 was served: the end of the 90 seconds its linked queries span.
SERVED = T0 + timedelta(minutes=1, seconds=59)


def _attack_row(
    event_id: str,
    seconds: float,
    *,
    source: str | None = "key-z",
    related: list[str] | None = None,
    enforced: float = 1.0,
    **details: float,
) -> DetectionRow:
    """A stored query-attack detection, ``seconds`` after T0 + 2 minutes."""
    detected = T0 + timedelta(minutes=2, seconds=seconds)
    served = detected - timedelta(seconds=1)
    stored: dict[str, Any] = {
        "matches": 5.0,
        "held": 40.0,
        "span_seconds": 90.0,
        "first_linked_ts": served.timestamp() - 90.0,
        "enforced": enforced,
        "min_linked": 8.0,
        **details,
        "related_event_ids": ["q-16", "q-15", "q-11"] if related is None else related,
        "expires_at": (detected + timedelta(hours=1)).isoformat(),
    }
    return DetectionRow(
        kind=IncidentKind.QUERY_ATTACK,
        event_id=event_id,
        model_id="digits",
        source=source,
        score=12.0,
        threshold=8.0,
        detected_at=detected,
        topic="inference",
        partition=0,
        offset=17,
        details=stored,
    )


def _attack_incident(*rows: DetectionRow, **overrides: Any) -> Incident:
    """Incident 9: the query attack of source key-z, quarantined until 13:02."""
    rows = rows or (_attack_row("q-17", 0),)
    values: dict[str, Any] = {
        "id": 9,
        "kind": IncidentKind.QUERY_ATTACK,
        "model_id": "digits",
        "model_version": "v3",
        "source": rows[0].source,
        "status": IncidentStatus.OPEN,
        "first_seen": rows[0].detected_at,
        "last_seen": rows[-1].detected_at,
        "detection_count": len(rows),
        "peak_score": 12.0,
        "score_sum": 12.0 * len(rows),
        "threshold": 8.0,
        "detector_sha256": None,
        "sample_events": [
            {
                "event_id": row.event_id,
                "score": row.score,
                "source": row.source,
                "detected_at": row.detected_at.isoformat(),
            }
            for row in rows
        ],
        "decisions": [
            {
                "action": "quarantine",
                "scope": "source",
                "source": rows[0].source,
                "decided_at": rows[0].detected_at.isoformat(),
                "expires_at": (rows[0].detected_at + timedelta(hours=1)).isoformat(),
                "reason": "query_attack",
                "event_id": rows[0].event_id,
                "linked_queries": 12.0,
            }
        ],
        "resolved_at": None,
        "alert_sent_at": None,
    }
    values.update(overrides)
    incident = Incident(**values)
    incident.changes = [
        StatusChange(
            status=IncidentStatus.OPEN,
            at=rows[0].detected_at,
            by="advmon",
            note=f"opened by query_attack detection of event {rows[0].event_id}",
        )
    ]
    incident.detections = list(rows)
    return incident


def test_a_query_attack_says_what_linked_the_queries() -> None:
    assert query_attacks(_attack_incident()) == [
        QueryAttack(
            event_id="q-17",
            source="key-z",
            detected_at=T0 + timedelta(minutes=2),
            linked_queries=12.0,
            min_linked=8.0,
            matched_directly=5.0,
            held_queries=40.0,
            first_linked_at=SERVED - timedelta(seconds=90),
            query_at=SERVED,
            span=timedelta(seconds=90),
            related_event_ids=("q-16", "q-15", "q-11"),
            action="quarantine",
            expires_at=T0 + timedelta(hours=1, minutes=2),
        )
    ]
    flagged = query_attacks(_attack_incident(_attack_row("q-17", 0, enforced=0.0)))
    assert [attack.action for attack in flagged] == ["flag"]
    # Other kinds have none.
    assert query_attacks(_incident()) == []


def test_a_query_attack_without_its_times_still_says_the_rest() -> None:
    row = _attack_row("q-17", 0, related=[])
    assert row.details is not None
    for name in ("first_linked_ts", "span_seconds", "matches", "held", "expires_at"):
        del row.details[name]
    (attack,) = query_attacks(_attack_incident(row))
    assert (attack.first_linked_at, attack.query_at, attack.span) == (None, None, None)
    assert (attack.matched_directly, attack.held_queries, attack.expires_at) == (None, None, None)
    assert (attack.linked_queries, attack.min_linked, attack.related_event_ids) == (12, 8, ())
    huge = _attack_row("q-18", 0, first_linked_ts=1e300, span_seconds=1e300)
    (attack,) = query_attacks(_attack_incident(huge))
    assert (attack.first_linked_at, attack.query_at, attack.span) == (None, None, None)


def test_only_the_newest_query_attacks_are_shown() -> None:
    rows = [_attack_row(f"q-{n}", n) for n in range(5)]
    shown = query_attacks(_attack_incident(*rows), most=2)
    assert [attack.event_id for attack in shown] == ["q-3", "q-4"]


def test_incident_dict_in_detail_explains_a_query_attack() -> None:
    data = incident_dict(_attack_incident(), detail=True)
    assert data["kind"] == "query_attack"
    assert data["source"] == "key-z"
    assert data["query_attacks"] == [
        {
            "event_id": "q-17",
            "source": "key-z",
            "detected_at": "2026-05-01T12:02:00+00:00",
            "linked_queries": 12,
            "min_linked": 8,
            "matched_directly": 5,
            "held_queries": 40,
            "first_linked_at": "2026-05-01T12:00:29+00:00",
            "query_at": "2026-05-01T12:01:59+00:00",
            "span_seconds": 90.0,
            "related_event_ids": ["q-16", "q-15", "q-11"],
            "action": "quarantine",
            "expires_at": "2026-05-01T13:02:00+00:00",
        }
    ]
    assert data["query_attacks"] == [
        query_attack_dict(a) for a in query_attacks(_attack_incident())
    ]
    assert json.loads(json.dumps(data)) == data


def test_a_stored_query_attack_detection_keeps_the_wire_shape() -> None:
    data = detection_dict(_attack_row("q-17", 0))
    assert data["details"] == {
        "matches": 5.0,
        "held": 40.0,
        "span_seconds": 90.0,
        "first_linked_ts": (SERVED - timedelta(seconds=90)).timestamp(),
        "enforced": 1.0,
        "min_linked": 8.0,
    }
    assert data["related_event_ids"] == ["q-16", "q-15", "q-11"]
    assert data["expires_at"] == "2026-05-01T13:02:00+00:00"


def test_a_query_attack_decision_says_why() -> None:
    (decision,) = decisions_taken(_attack_incident())
    assert decision == DecisionTaken(
        action="quarantine",
        scope="source",
        source="key-z",
        decided_at=T0 + timedelta(minutes=2),
        expires_at=T0 + timedelta(hours=1, minutes=2),
        flagged_events=None,
        reason="query_attack",
        linked_queries=12.0,
    )
    assert decision_reason(decision) == "12 linked queries (query attack)"
    (quarantine,) = decisions_taken(_incident())
    assert decision_reason(quarantine) == "10 flagged events"


def test_markdown_export_explains_a_query_attack() -> None:
    text = render_markdown([_attack_incident()], filters=IncidentFilter(), generated_at=NOW)
    assert text == (
        "# advmon incident report\n"
        "\n"
        "Generated 2026-05-01 13:00:00 UTC; 1 incident(s).\n"
        "\n"
        "## Incident 9: query_attack on model digits, source key-z\n"
        "\n"
        "**What:** A black-box query attack: one source's queries linked by fingerprint "
        "matches against model digits (version v3).\n"
        "\n"
        "- Status: open\n"
        "- First seen: 2026-05-01 12:02:00 UTC\n"
        "- Last seen: 2026-05-01 12:02:00 UTC (0s after the first)\n"
        "\n"
        "### Impact\n"
        "\n"
        "- Detections: 1 from 1 source(s)\n"
        "- Score: peak 12, mean 12, threshold 8 (peak 1.50× the threshold)\n"
        "- Sources: key-z (1)\n"
        "\n"
        "### Query attack\n"
        "\n"
        "Query q-17 from source key-z, sent 2026-05-01 12:01:59 UTC, was linked by chains "
        "of fingerprint matches to 12 of the source's held queries (threshold 8), the "
        "oldest sent 1m 30s before it (2026-05-01 12:00:29 UTC). It matched 5 of the 40 "
        "queries held for the source directly, among them q-16, q-15, q-11 (newest first). "
        "Decision: source quarantined until 2026-05-01 13:02:00 UTC.\n"
        "\n"
        "### Decisions taken\n"
        "\n"
        "- 2026-05-01 12:02:00 UTC: quarantine of source key-z until 2026-05-01 13:02:00 UTC "
        "after 12 linked queries (query attack)\n"
        "\n"
        "### Timeline\n"
        "\n"
        "| time | what |\n"
        "|---|---|\n"
        "| 2026-05-01 12:02:00 UTC | first detection |\n"
        "| 2026-05-01 12:02:00 UTC | last detection |\n"
        "| 2026-05-01 12:02:00 UTC | opened by advmon: opened by query\\_attack detection of "
        "event q-17 |\n"
        "| 2026-05-01 12:02:00 UTC | decision: quarantine of source key-z until "
        "2026-05-01 13:02:00 UTC after 12 linked queries (query attack) |\n"
        "\n"
        "### Detections over time (per 1m)\n"
        "\n"
        "| from | detections | peak score |\n"
        "|---|---:|---:|\n"
        "| 2026-05-01 12:02:00 UTC | 1 | 12 |\n"
        "\n"
        "### Sample events\n"
        "\n"
        "| event id | score | source | detected at |\n"
        "|---|---:|---|---|\n"
        "| q-17 | 12 | key-z | 2026-05-01 12:02:00 UTC |\n"
    )


def test_markdown_says_when_the_source_was_only_flagged() -> None:
    rows = (_attack_row("q-17", 0, enforced=0.0), _attack_row("q-40", 60, related=[]))
    text = render_markdown([_attack_incident(*rows)], filters=IncidentFilter(), generated_at=NOW)
    section = text[text.index("### Query attack\n") : text.index("### Decisions taken")]
    assert section == (
        "### Query attack\n"
        "\n"
        "Query q-17 from source key-z, sent 2026-05-01 12:01:59 UTC, was linked by chains "
        "of fingerprint matches to 12 of the source's held queries (threshold 8), the "
        "oldest sent 1m 30s before it (2026-05-01 12:00:29 UTC). It matched 5 of the 40 "
        "queries held for the source directly, among them q-16, q-15, q-11 (newest first). "
        "Decision: source flagged, not quarantined (the policy does not enforce), until "
        "2026-05-01 13:02:00 UTC.\n"
        "\n"
        "Query q-40 from source key-z, sent 2026-05-01 12:02:59 UTC, was linked by chains "
        "of fingerprint matches to 12 of the source's held queries (threshold 8), the "
        "oldest sent 1m 30s before it (2026-05-01 12:01:29 UTC). It matched 5 of the 40 "
        "queries held for the source directly. Decision: source quarantined until "
        "2026-05-01 13:03:00 UTC.\n"
        "\n"
    )


def test_markdown_escapes_what_a_query_attacker_sent() -> None:
    row = _attack_row("q|1\n## owned", 0, source="[/]*x*", related=["<img src=x>", "a`b`"])
    text = render_markdown([_attack_incident(row)], filters=IncidentFilter(), generated_at=NOW)
    section = text[text.index("### Query attack\n") : text.index("### Decisions taken")]
    # Line breaks are folded: the id cannot start a heading or a table row of its own.
    assert section.startswith(
        "### Query attack\n\nQuery q\\|1 ## owned from source \\[/\\]\\*x\\*, sent"
    )
    assert "among them \\<img src=x\\>, a\\`b\\` (newest first)" in section
    assert "\n## owned" not in text


def test_csv_export_carries_a_query_attack_decision() -> None:
    row = next(csv.DictReader(io.StringIO(render_csv([_attack_incident()]))))
    assert (row["kind"], row["source"], row["peak_score"], row["threshold"]) == (
        "query_attack",
        "key-z",
        "12.0",
        "8.0",
    )
    assert json.loads(row["decisions"]) == _attack_incident().decisions
