"""The scoring pipeline without a broker: decode, dead letters, decisions, detections."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from detectors import Detector
from monitor.config import MonitorConfig
from monitor.demo.run import demo_event
from monitor.worker.models import load_model_detectors
from monitor.worker.records import InputMessage
from monitor.worker.stages.scoring import ScoringPipeline
from schemas import Action, DeadLetter, Decision, Detection, SourceFlag
from tests.monitor.cli_support import DemoModel

TOPIC = "inference-events"


def make_pipeline(detector_path: Path, policy: str = "enforce") -> ScoringPipeline:
    config = MonitorConfig.model_validate(
        {"models": [{"id": "digits", "detector": str(detector_path), "policy": policy}]}
    )
    return ScoringPipeline(config, load_model_detectors(config))


def message(
    value: bytes, offset: int, topic: str = TOPIC, key: bytes | None = None
) -> InputMessage:
    return InputMessage(topic, 0, offset, key, value, timestamp=1_700_000_000.0)


def test_bad_messages_become_dead_letters_with_reasons(detector_path: Path) -> None:
    pipeline = make_pipeline(detector_path)
    image = np.zeros((1, 8, 8), dtype=np.float32)
    good = demo_event("ok-1", image, as_tensor=False, source="s")
    bright = demo_event("bright", image + 3.0, as_tensor=True, source="s")
    other = orjson.dumps({"event_id": "o", "model_id": "cats", "input": [[0.0]]})
    values = [good, b"{not json", bright, other, b'{"event_id": "x", "input": [1]}']
    decoded = pipeline.decode([message(v, i, key=b"k") for i, v in enumerate(values)])
    assert [len(b.events) for b in decoded.batches] == [1]
    assert decoded.invalid_reasons == ["invalid_event", "range", "unknown_model", "invalid_event"]
    letters = [DeadLetter.model_validate_json(r.value) for r in decoded.dead_letters]
    assert [letter.offset for letter in letters] == [1, 2, 3, 4]
    assert base64.b64decode(letters[0].value_b64) == b"{not json"
    assert letters[0].key_b64 == base64.b64encode(b"k").decode()
    assert "outside the calibrated range [0, 1]" in letters[1].error
    assert letters[1].event_id == "bright"
    assert "'cats' is not monitored (configured: digits)" in letters[2].error
    assert all(r.topic == "advmon-dead-letter" for r in decoded.dead_letters)


def test_events_on_a_topic_not_configured_for_their_model_are_refused(
    detector_path: Path,
) -> None:
    pipeline = make_pipeline(detector_path)
    event = demo_event("e", np.zeros((1, 8, 8), np.float32), as_tensor=False, source="s")
    decoded = pipeline.decode([message(event, 0, topic="elsewhere")])
    assert decoded.invalid_reasons == ["unknown_model"]


@pytest.mark.parametrize("policy", ["enforce", "observe"])
def test_a_decision_per_event_and_detections_for_flagged_ones(
    demo_model: DemoModel, detector_path: Path, policy: str
) -> None:
    pipeline = make_pipeline(detector_path, policy)
    images = np.concatenate(
        [
            demo_model.data.test_x[:20],
            np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32),
        ]
    )
    values = [
        demo_event(f"e{i}", im, as_tensor=i % 2 == 0, source=f"s{i % 3}")
        for i, im in enumerate(images)
    ]
    decoded = pipeline.decode([message(v, i) for i, v in enumerate(values)])
    (batch,) = decoded.batches
    verdict = Detector.from_file(detector_path, device="cpu").score(batch.stacked())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    decided = pipeline.decide(batch, verdict, now)

    by_topic: dict[str, list[bytes]] = {}
    for record in decided.records:
        by_topic.setdefault(record.topic, []).append(record.value)
    decisions = [Decision.model_validate_json(v) for v in by_topic["advmon-decisions"]]
    assert [d.event_id for d in decisions] == [f"e{i}" for i in range(40)]
    flagged = verdict.flagged.tolist()
    assert 0 < sum(flagged) < 40
    for decision, is_flagged, score in zip(
        decisions, flagged, verdict.scores.score.tolist(), strict=True
    ):
        expected = (
            Action.ALLOW
            if not is_flagged
            else (Action.QUARANTINE if policy == "enforce" else Action.FLAG)
        )
        assert decision.action == expected
        assert decision.reasons[0].score == score
        assert decision.decided_at == now
    assert decided.actions == [d.action for d in decisions]

    detections = [Detection.model_validate_json(v) for v in by_topic["advmon-detections"]]
    assert [d.event_id for d in detections] == [f"e{i}" for i, f in enumerate(flagged) if f]
    assert all(d.offset == int(d.event_id[1:]) for d in detections)
    assert set(detections[0].details) == {"bit_depth:2"}
    flags = [SourceFlag.model_validate_json(v) for v in by_topic["advmon-source-flags"]]
    assert [f.event_id for f in flags] == [d.event_id for d in detections]
    assert all(f.enforce == (policy == "enforce") for f in flags)
    keys = [r.key for r in decided.records if r.topic == "advmon-source-flags"]
    assert keys == [f.source.encode() for f in flags]


def test_decisions_are_keyed_by_request_id_else_event_id(
    demo_model: DemoModel, detector_path: Path
) -> None:
    pipeline = make_pipeline(detector_path)
    image = demo_model.data.test_x[0]
    with_request = orjson.loads(demo_event("e1", image, as_tensor=False, source="s"))
    with_request["request_id"] = "req-1"
    values = [orjson.dumps(with_request), demo_event("e2", image, as_tensor=False, source="s")]
    (batch,) = pipeline.decode([message(v, i) for i, v in enumerate(values)]).batches
    verdict = Detector.from_file(detector_path, device="cpu").score(batch.stacked())
    keys = [r.key for r in pipeline.decide(batch, verdict).records if r.topic == "advmon-decisions"]
    assert keys == [b"req-1", b"e2"]
