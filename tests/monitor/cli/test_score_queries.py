"""``advmon score`` watching each source for query attacks, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from monitor.cli import main
from tests.monitor.cli_support import DemoModel, assert_clean_failure, normalized, write_events
from tests.monitor.test_offline_queries import (
    ATTACK_QUERIES,
    BENIGN_SOURCES,
    FLAGGED_WITHIN,
    QUERY_FIELDS,
    Sent,
    attack_stream,
    event_line,
    min_linked_of,
    query_traffic,
    tabular_detector_without_query_settings,
    write_traffic,
)


def _score(runner: CliRunner, detector: Path, events: Path, out: Path, *extra: str) -> Result:
    args = ["score", "--detector", str(detector), "--events", str(events), "--out", str(out)]
    return runner.invoke(main, [*args, "--device", "cpu", *extra])


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def traffic(demo_model: DemoModel) -> list[Sent]:
    return query_traffic(demo_model.data.test_x)


@pytest.fixture
def events(traffic: list[Sent], tmp_path: Path) -> Path:
    return write_traffic(tmp_path / "events.jsonl", traffic)


def test_score_lists_the_flagged_attacker_and_the_sources_watched(
    runner: CliRunner, detector_path: Path, traffic: list[Sent], events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.jsonl"
    result = _score(runner, detector_path, events, out)
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert [r["event_id"] for r in records] == [s.event_id for s in traffic]
    threshold = min_linked_of(detector_path)

    attacker = [r for s, r in zip(traffic, records, strict=True) if s.kind == "attack"]
    first = next(k for k, r in enumerate(attacker) if r["query_attack"])
    assert first + 1 <= FLAGGED_WITHIN
    assert all(r["query_attack"] for r in attacker[first:])
    benign = [r for s, r in zip(traffic, records, strict=True) if s.source in BENIGN_SOURCES]
    assert not any(r["query_attack"] for r in benign)
    retried = [r for s, r in zip(traffic, records, strict=True) if s.kind == "retry"]
    repeated = [r for s, r in zip(traffic, records, strict=True) if s.kind == "repeat"]
    assert [r["query_outcome"] for r in retried] == ["retry"] * 10
    assert [r["query_outcome"] for r in repeated] == ["repeat"] * 21

    summary = normalized(result.stderr)
    queries = sum(s.source is not None for s in traffic)
    assert (
        f"query attacks: {1 + len(BENIGN_SOURCES)} source(s) watched ({queries} queries), "
        f"min_linked {threshold} (detector file): 1 flagged" in summary
    )
    assert "source first flagged event queries until flagged linked" in summary
    flagged = attacker[first]
    assert f"attacker {flagged['event_id']} {first + 1} {flagged['query_linked']}" in summary
    for source in BENIGN_SOURCES:
        assert f"\n{source} " not in result.stderr
    assert summary.index("query attacks:") < summary.index(f"scores written to {out}")


def test_min_linked_changes_who_is_flagged(
    runner: CliRunner, detector_path: Path, events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.jsonl"
    result = _score(runner, detector_path, events, out, "--min-linked", "3")
    assert result.exit_code == 0, result.output
    summary = normalized(result.stderr)
    assert "min_linked 3 (--min-linked): 1 flagged" in summary
    assert "attacker attacker-4 4 3" in summary
    first = next(r for r in _records(out) if r.get("query_attack"))
    assert first["event_id"] == "attacker-4"

    result = _score(runner, detector_path, events, out, "--min-linked", str(ATTACK_QUERIES))
    assert result.exit_code == 0, result.output
    summary = normalized(result.stderr)
    assert f"min_linked {ATTACK_QUERIES} (--min-linked): 0 flagged" in summary
    assert "first flagged event" not in summary
    assert not any(r.get("query_attack") for r in _records(out))


def test_no_query_attacks_scores_each_event_alone(
    runner: CliRunner, detector_path: Path, events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.jsonl"
    result = _score(runner, detector_path, events, out, "--no-query-attacks")
    assert result.exit_code == 0, result.output
    assert all(list(r) == ["event_id", "score", "flagged"] for r in _records(out))
    assert "query attacks" not in result.stderr
    assert "scored" in result.stderr


@pytest.mark.parametrize(
    ("extra", "exit_code", "words"),
    [
        (["--min-linked", "0"], 2, ["--min-linked"]),
        (["--min-linked", "many"], 2, ["--min-linked"]),
        (["--no-query-attacks", "--min-linked", "3"], 2, ["--min-linked", "--no-query-attacks"]),
    ],
)
def test_score_refuses_bad_query_options(
    runner: CliRunner,
    detector_path: Path,
    events: Path,
    tmp_path: Path,
    extra: list[str],
    exit_code: int,
    words: list[str],
) -> None:
    out = tmp_path / "scores.jsonl"
    message = assert_clean_failure(_score(runner, detector_path, events, out, *extra), exit_code)
    for word in words:
        assert word in message
    assert not out.exists()


def test_sources_are_printed_as_text_not_markup(
    runner: CliRunner, detector_path: Path, demo_model: DemoModel, tmp_path: Path
) -> None:
    source = "[bold]mallory[/] [/]"
    queries = attack_stream(source, demo_model.data.test_x[0], n=20)
    events = write_traffic(tmp_path / "events.jsonl", queries)
    result = _score(runner, detector_path, events, tmp_path / "scores.jsonl")
    assert result.exit_code == 0, result.output
    assert "1 flagged" in result.stderr
    assert f"{source} {source}-" in normalized(result.stderr)


def test_many_flagged_sources_are_summed_up(
    runner: CliRunner, detector_path: Path, demo_model: DemoModel, tmp_path: Path
) -> None:
    images = demo_model.data.test_x
    streams = [attack_stream(f"bot-{i:02}", images[i], n=12, seed=i) for i in range(23)]
    lines = [event_line(stream[k], ts=None) for k in range(12) for stream in streams]
    out = tmp_path / "scores.jsonl"
    result = _score(runner, detector_path, write_events(tmp_path / "e.jsonl", lines), out)
    assert result.exit_code == 0, result.output
    summary = normalized(result.stderr)
    assert "23 source(s) watched (276 queries)" in summary
    assert ": 23 flagged" in summary
    # Listed in the order they were flagged, the first 20 of them.
    order: list[str] = []
    for record in _records(out):
        bot = record["event_id"].rsplit("-", 1)[0]
        if record["query_attack"] and bot not in order:
            order.append(bot)
    assert sorted(order) == [f"bot-{i:02}" for i in range(23)]
    shown = [bot for bot in order if f"{bot} {bot}-" in summary]
    assert shown == order[:20]
    assert "… and 3 more flagged source(s)" in summary


def test_a_tabular_detector_without_query_settings_says_so_in_one_line(
    runner: CliRunner, tmp_path: Path
) -> None:
    detector = tabular_detector_without_query_settings(tmp_path)
    lines = [
        json.dumps(
            {"event_id": f"e-{i}", "model_id": "m", "source": "s", "input": [0.1 * i] * 4}
        ).encode()
        for i in range(5)
    ]
    out = tmp_path / "scores.jsonl"
    result = _score(runner, detector, write_events(tmp_path / "e.jsonl", lines), out)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "query" in line]
    assert len(notes) == 1, result.stderr
    assert "query-attack detection needs a re-calibration" in notes[0]
    assert "scored 5 events" in result.stderr
    assert [list(r) for r in _records(out)] == [["event_id", "score", "flagged"]] * 5
    assert QUERY_FIELDS[0] not in out.read_text(encoding="utf-8")
