"""Query-attack detection in ``score_file``: an events file replayed through per-source
query histories, in file order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from detectors import calibrate_detector
from monitor.offline import QueryAttackSummary, ScoreReport, score_file
from schemas import ScoreRecord
from tests.monitor.cli_support import DemoModel, write_events

QUERY_FIELDS = [
    "query_outcome",
    "query_matches",
    "query_linked",
    "query_attack",
    "query_matched_event_ids",
]
ATTACK_QUERIES = 60
FLAGGED_WITHIN = 15
"""The attacker must be flagged within this many of its queries."""
BENIGN_SOURCES = ("alice", "bob", "carol", "dave")
_START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Sent:
    """One event of a query-traffic file."""

    event_id: str
    source: str | None
    request_id: str | None
    image: np.ndarray
    kind: str
    """attack, benign, retry (same request id and bytes as an earlier event), repeat
    (same bytes, another request id), blank (nothing to fingerprint) or anonymous (no
    source)."""


def near_duplicates(base: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` distinct copies of ``base``, each with 3 pixels moved by 0.02 (inwards)."""
    rng = np.random.default_rng(seed)
    flat = base.reshape(-1)
    out: list[np.ndarray] = []
    seen = {base.tobytes()}
    while len(out) < n:
        x = flat.copy()
        pixels = rng.choice(flat.size, 3, replace=False)
        x[pixels] += np.where(x[pixels] < 0.5, 0.02, -0.02).astype(np.float32)
        if x.tobytes() not in seen:
            seen.add(x.tobytes())
            out.append(x.reshape(base.shape))
    return out


def attack_stream(
    source: str, base: np.ndarray, n: int = ATTACK_QUERIES, seed: int = 0
) -> list[Sent]:
    """A query attacker: ``n`` near-duplicates of one image, one request each."""
    return [
        Sent(f"{source}-{k + 1}", source, f"{source}-r{k + 1}", x, "attack")
        for k, x in enumerate(near_duplicates(base, n, seed))
    ]


def query_traffic(images: np.ndarray, *, attacker: str = "attacker", seed: int = 0) -> list[Sent]:
    """An attacker sending 60 near-duplicates of ``images[0]``, interleaved with four
    benign sources sending distinct images of the rest (one retrying requests, one
    resending the same three inputs, one sending blank frames too) and events without a
    source. The streams are merged at random, each in its own order."""
    pool = iter(images[1:])
    streams: list[list[Sent]] = [attack_stream(attacker, images[0], seed=seed)]
    streams.append(
        [Sent(f"alice-{k}", "alice", f"alice-r{k}", next(pool), "benign") for k in range(40)]
    )
    bob = []
    for k in range(20):
        image = next(pool)
        bob.append(Sent(f"bob-{k}", "bob", f"bob-r{k}", image, "benign"))
        if k % 2:
            bob.append(Sent(f"bob-{k}-again", "bob", f"bob-r{k}", image.copy(), "retry"))
    streams.append(bob)
    favourites = [next(pool) for _ in range(3)]
    streams.append(
        [
            Sent(f"carol-{k}", "carol", f"carol-r{k}", favourites[k % 3].copy(), kind)
            for k in range(24)
            for kind in ["benign" if k < 3 else "repeat"]
        ]
    )
    dave = [Sent(f"dave-{k}", "dave", None, next(pool), "benign") for k in range(20)]
    blank = np.zeros_like(images[0])
    dave.insert(5, Sent("dave-blank-1", "dave", None, blank, "blank"))
    dave.insert(12, Sent("dave-blank-2", "dave", None, blank.copy(), "blank"))
    streams.append(dave)
    streams.append([Sent(f"anon-{k}", None, None, next(pool), "anonymous") for k in range(10)])

    rng = np.random.default_rng(seed)
    merged: list[Sent] = []
    queues = [list(reversed(stream)) for stream in streams]
    while any(queues):
        weights = np.array([len(q) for q in queues], dtype=np.float64)
        merged.append(queues[int(rng.choice(len(queues), p=weights / weights.sum()))].pop())
    return merged


def event_line(sent: Sent, *, ts: datetime | None, model_id: str = "digits") -> bytes:
    """The native event of ``sent``, as a nested list."""
    event: dict[str, Any] = {"event_id": sent.event_id, "model_id": model_id}
    if ts is not None:
        event["ts"] = ts.isoformat()
    if sent.source is not None:
        event["source"] = sent.source
    if sent.request_id is not None:
        event["request_id"] = sent.request_id
    event["input"] = sent.image.tolist()
    return orjson.dumps(event)


def write_traffic(path: Path, traffic: list[Sent], *, seconds_apart: float | None = 1.0) -> Path:
    """One event per line in order; with ``seconds_apart``, each with a ``ts`` that far
    after the one before, else none."""
    lines = [
        event_line(
            sent,
            ts=None if seconds_apart is None else _START + timedelta(seconds=k * seconds_apart),
        )
        for k, sent in enumerate(traffic)
    ]
    return write_events(path, lines)


def score(
    detector: Path, events: Path, tmp_path: Path, **options: Any
) -> tuple[ScoreReport, list[dict[str, Any]]]:
    """``score_file`` on CPU, watching for query attacks unless told not to; its report
    and its lines, parsed."""
    out = tmp_path / "scores.jsonl"
    options.setdefault("query_attacks", True)
    report = score_file(detector, events, out, device="cpu", **options)
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    return report, records


def watched(report: ScoreReport) -> QueryAttackSummary:
    """The report's query-attack summary (which must be there)."""
    assert report.query_attacks is not None
    return report.query_attacks


def tabular_model(path: Path, features: int = 4) -> Path:
    """A linear two-class model over ``features`` features (fixed feature axis)."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(features, 2)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(2, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def tabular_detector_without_query_settings(folder: Path) -> Path:
    """A tabular detector file as an advmon without query-attack detection wrote it."""
    model = tabular_model(folder / "linear.onnx")
    rows = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    config = calibrate_detector(
        model, lambda: iter([rows]), squeezer_spec="quantize:0.5", device="cpu"
    )
    path = folder / "tabular.json"
    config.save(path)
    content = json.loads(path.read_text(encoding="utf-8"))
    assert "query_attacks" in content
    del content["query_attacks"]
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def min_linked_of(detector: Path) -> int:
    return int(json.loads(detector.read_text(encoding="utf-8"))["query_attacks"]["min_linked"])


@pytest.fixture(scope="module")
def traffic(demo_model: DemoModel) -> list[Sent]:
    return query_traffic(demo_model.data.test_x)


@pytest.fixture
def events(traffic: list[Sent], tmp_path: Path) -> Path:
    return write_traffic(tmp_path / "events.jsonl", traffic)


def _by_source(
    traffic: list[Sent], records: list[dict[str, Any]]
) -> Iterator[tuple[Sent, dict[str, Any]]]:
    assert [r["event_id"] for r in records] == [s.event_id for s in traffic]
    return zip(traffic, records, strict=True)


# --- the attacker and the benign sources --------------------------------------------------


def test_the_attacker_is_flagged_early_and_no_benign_source_is(
    detector_path: Path, traffic: list[Sent], events: Path, tmp_path: Path
) -> None:
    report, records = score(detector_path, events, tmp_path)
    threshold = min_linked_of(detector_path)
    summary = report.query_attacks
    assert summary is not None
    assert report.query_attacks_unavailable is None
    assert (summary.min_linked, summary.min_linked_overridden) == (threshold, False)
    assert summary.sources == 1 + len(BENIGN_SOURCES)
    assert summary.queries == sum(s.source is not None for s in traffic)

    (flag,) = summary.flags
    attacker = [r for s, r in _by_source(traffic, records) if s.kind == "attack"]
    first = next(k for k, r in enumerate(attacker) if r["query_attack"])
    assert (flag.model_id, flag.source) == ("digits", "attacker")
    assert flag.event_id == attacker[first]["event_id"] == f"attacker-{first + 1}"
    assert flag.queries == first + 1 <= FLAGGED_WITHIN
    assert flag.linked == attacker[first]["query_linked"] >= threshold
    assert all(r["query_linked"] < threshold for r in attacker[:first])
    # Once flagged, its later queries are still scored, written and marked.
    assert len(attacker) == ATTACK_QUERIES
    assert all(r["query_attack"] for r in attacker[first:])
    assert summary.attack_queries == ATTACK_QUERIES - first
    assert attacker[-1]["query_matched_event_ids"][0] == f"attacker-{ATTACK_QUERIES - 1}"

    benign = [r for s, r in _by_source(traffic, records) if s.source in BENIGN_SOURCES]
    assert not any(r["query_attack"] for r in benign)
    assert max(r["query_linked"] for r in benign) < threshold


def test_retries_repeats_and_blank_frames_get_their_outcomes(
    detector_path: Path, traffic: list[Sent], events: Path, tmp_path: Path
) -> None:
    _, records = score(detector_path, events, tmp_path)
    outcomes = {"attack": "new", "benign": "new", "retry": "retry", "repeat": "repeat"}
    outcomes["blank"] = "low_information"
    kinds = {s.kind for s in traffic}
    assert kinds == {*outcomes, "anonymous"}
    for sent, record in _by_source(traffic, records):
        if sent.kind == "anonymous":
            assert list(record) == ["event_id", "score", "flagged"]
            continue
        assert list(record) == ["event_id", "score", "flagged", *QUERY_FIELDS]
        assert record["query_outcome"] == outcomes[sent.kind], sent.event_id
        if sent.kind not in ("attack", "benign"):
            assert record["query_matches"] == record["query_linked"] == 0
            assert record["query_attack"] is False
            assert record["query_matched_event_ids"] == []


def test_every_line_is_a_score_record(detector_path: Path, events: Path, tmp_path: Path) -> None:
    _, records = score(detector_path, events, tmp_path)
    for record in records:
        parsed = ScoreRecord.model_validate(record)
        assert orjson.loads(parsed.model_dump_json()) == record


# --- options -------------------------------------------------------------------------------


def test_min_linked_sets_the_threshold(
    detector_path: Path, traffic: list[Sent], events: Path, tmp_path: Path
) -> None:
    report, records = score(detector_path, events, tmp_path, min_linked=3)
    assert report.query_attacks is not None
    assert (report.query_attacks.min_linked, report.query_attacks.min_linked_overridden) == (
        3,
        True,
    )
    (flag,) = report.query_attacks.flags
    assert (flag.source, flag.event_id, flag.queries, flag.linked) == (
        "attacker",
        "attacker-4",
        4,
        3,
    )

    report, records = score(detector_path, events, tmp_path, min_linked=ATTACK_QUERIES)
    assert report.query_attacks is not None
    assert report.query_attacks.flags == []
    assert report.query_attacks.attack_queries == 0
    assert not any(r.get("query_attack") for r in records)
    # The attacker's last query is linked to every other one: one less than the threshold.
    assert max(r.get("query_linked", 0) for r in records) == ATTACK_QUERIES - 1


def test_min_linked_below_one_is_refused(detector_path: Path, events: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_linked"):
        score(detector_path, events, tmp_path, min_linked=0)


def test_turned_off_the_lines_hold_the_verdict_alone(
    detector_path: Path, events: Path, tmp_path: Path
) -> None:
    report, records = score(detector_path, events, tmp_path, query_attacks=False)
    assert (report.query_attacks, report.query_attacks_unavailable) == (None, None)
    assert all(list(record) == ["event_id", "score", "flagged"] for record in records)
    _, with_queries = score(detector_path, events, tmp_path)
    assert [(r["event_id"], r["score"], r["flagged"]) for r in records] == [
        (r["event_id"], r["score"], r["flagged"]) for r in with_queries
    ]
    # The library leaves it off unless asked (advmon score asks).
    default = score_file(detector_path, events, tmp_path / "default.jsonl", device="cpu")
    assert default.query_attacks is None
    lines = (tmp_path / "default.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == records


def test_batch_size_changes_nothing(detector_path: Path, events: Path, tmp_path: Path) -> None:
    def queries(batch_size: int) -> list[list[Any]]:
        _, records = score(detector_path, events, tmp_path, batch_size=batch_size)
        return [[r["event_id"], *(r.get(k) for k in QUERY_FIELDS)] for r in records]

    one = queries(1)
    assert one == queries(7) == queries(256)
    assert any(row[4] for row in one)


# --- time and keys -------------------------------------------------------------------------


def test_event_times_come_from_ts(
    detector_path: Path, demo_model: DemoModel, tmp_path: Path
) -> None:
    """Queries further apart than the maximum age never link; the ``ts`` says how far."""
    attacker = attack_stream("attacker", demo_model.data.test_x[0], n=20)
    apart = write_traffic(tmp_path / "apart.jsonl", attacker, seconds_apart=10.0)
    report, records = score(detector_path, apart, tmp_path, max_age_seconds=5.0)
    assert watched(report).flags == []
    assert {r["query_linked"] for r in records} == {0}

    close = write_traffic(tmp_path / "close.jsonl", attacker, seconds_apart=0.1)
    report, _ = score(detector_path, close, tmp_path, max_age_seconds=5.0)
    assert len(watched(report).flags) == 1


def test_events_without_ts_are_a_second_apart(
    detector_path: Path, demo_model: DemoModel, tmp_path: Path
) -> None:
    attacker = attack_stream("attacker", demo_model.data.test_x[0], n=20)
    events = write_traffic(tmp_path / "events.jsonl", attacker, seconds_apart=None)
    _, records = score(detector_path, events, tmp_path, max_age_seconds=4.5)
    # Four earlier queries are at most 4 s old; the fifth is 5 s old and gone.
    assert [r["query_linked"] for r in records[:6]] == [0, 1, 2, 3, 4, 4]
    assert max(r["query_linked"] for r in records) == 4
    report, _ = score(detector_path, events, tmp_path)
    assert len(watched(report).flags) == 1


def test_a_source_silent_longer_than_the_maximum_age_starts_afresh(
    detector_path: Path, demo_model: DemoModel, tmp_path: Path
) -> None:
    attacker = attack_stream("attacker", demo_model.data.test_x[0], n=30)
    lines = [
        event_line(sent, ts=_START + timedelta(seconds=k if k < 15 else 1000 + k))
        for k, sent in enumerate(attacker)
    ]
    # Another source keeps the file's time moving while the attacker is silent.
    quiet = attack_stream("other", demo_model.data.test_x[1], n=2)
    lines[15:15] = [event_line(quiet[0], ts=_START + timedelta(seconds=500))]
    events = write_events(tmp_path / "events.jsonl", lines)
    report, records = score(detector_path, events, tmp_path, max_age_seconds=100.0, batch_size=1)
    attacker_records = [r for r in records if r["event_id"].startswith("attacker")]
    assert attacker_records[15]["query_linked"] == 0
    assert attacker_records[15]["query_matched_event_ids"] == []
    assert attacker_records[29]["query_linked"] == 14
    assert report.query_attacks is not None
    (flag,) = report.query_attacks.flags  # flagged before its pause, counted once
    assert flag.queries <= FLAGGED_WITHIN
    assert report.query_attacks.sources == 2


def test_each_model_keeps_its_own_history_of_a_source(
    detector_path: Path, demo_model: DemoModel, tmp_path: Path
) -> None:
    attacker = attack_stream("attacker", demo_model.data.test_x[0], n=40)
    lines = [
        event_line(sent, ts=_START + timedelta(seconds=k), model_id=("digits", "digits-b")[k % 2])
        for k, sent in enumerate(attacker)
    ]
    events = write_events(tmp_path / "events.jsonl", lines)
    report, records = score(detector_path, events, tmp_path)
    assert report.query_attacks is not None
    assert report.query_attacks.sources == 2
    flags = report.query_attacks.flags
    assert sorted(flag.model_id for flag in flags) == ["digits", "digits-b"]
    threshold = min_linked_of(detector_path)
    for flag in flags:
        assert (flag.source, flag.linked) == ("attacker", threshold)
        assert flag.queries == threshold + 1
    # Each history holds only its model's queries: the first of digits-b matched nothing.
    assert records[1]["query_linked"] == 0


# --- detectors without query-attack settings -----------------------------------------------


def test_a_tabular_detector_without_query_settings_scores_and_says_why(tmp_path: Path) -> None:
    detector = tabular_detector_without_query_settings(tmp_path)
    rows = np.random.default_rng(2).normal(size=(12, 4)).astype(np.float32)
    lines = [
        orjson.dumps({"event_id": f"e-{i}", "model_id": "m", "source": "s", "input": row.tolist()})
        for i, row in enumerate(rows)
    ]
    events = write_events(tmp_path / "events.jsonl", lines)
    report, records = score(detector, events, tmp_path)
    assert report.query_attacks is None
    assert report.query_attacks_unavailable is not None
    assert "needs a re-calibration" in report.query_attacks_unavailable
    assert "re-run advmon calibrate" in report.query_attacks_unavailable
    assert report.scored == 12
    assert all(list(record) == ["event_id", "score", "flagged"] for record in records)

    report, _ = score(detector, events, tmp_path, query_attacks=False)
    assert report.query_attacks_unavailable is None


def test_a_tabular_detector_with_query_settings_watches_its_sources(tmp_path: Path) -> None:
    model = tabular_model(tmp_path / "linear.onnx")
    rows = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    config = calibrate_detector(
        model, lambda: iter([rows]), squeezer_spec="quantize:0.5", device="cpu"
    )
    assert config.query_attacks is not None
    detector = tmp_path / "tabular.json"
    config.save(detector)
    row = rows[0]
    lines = [
        orjson.dumps(
            {
                "event_id": f"e-{i}",
                "model_id": "m",
                "source": "s",
                "input": (row + np.float32(0.001 * i)).tolist(),
            }
        )
        for i in range(5)
    ]
    report, records = score(detector, write_events(tmp_path / "e.jsonl", lines), tmp_path)
    assert watched(report).sources == 1
    assert [r["query_outcome"] for r in records] == ["new"] * 5
