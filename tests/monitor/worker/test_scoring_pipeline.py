"""The scoring pipeline without a broker: decode, dead letters, decisions, detections."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from detectors import Detector, input_from_nested_list
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


# --- Hostile messages (issue 12, finding 1): one dead letter each, never a crash --------

CAPTURE_TOPIC = "sm-capture"
KSERVE_TOPIC = "kserve-log"
MAPPED_TOPIC = "custom-log"


def hostile_pipeline(detector_path: Path) -> ScoringPipeline:
    """The demo detector behind one model per format, each on its own topic."""
    config = MonitorConfig.model_validate(
        {
            "models": [
                {"id": "digits", "detector": str(detector_path), "topics": [TOPIC]},
                {
                    "id": "digits-sm",
                    "detector": str(detector_path),
                    "topics": [CAPTURE_TOPIC],
                    "format": "sagemaker",
                },
                {
                    "id": "digits-oip",
                    "detector": str(detector_path),
                    "topics": [KSERVE_TOPIC],
                    "format": "oip-v2",
                },
                {
                    "id": "digits-mapped",
                    "detector": str(detector_path),
                    "topics": [MAPPED_TOPIC],
                    "format": "mapped",
                    "mapping": {"event_id": "$..id", "input": "$..features"},
                },
            ]
        }
    )
    return ScoringPipeline(config, load_model_detectors(config))


def _npy_capture(header_shape: str, header_start: str = "{") -> bytes:
    header = f"{header_start}'descr': '<f4', 'fortran_order': False, 'shape': {header_shape}, }}"
    encoded = header.encode("latin1")
    encoded += b" " * ((-(10 + len(encoded) + 1)) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(encoded).to_bytes(2, "little") + encoded + bytes(16)
    capture = {
        "endpointInput": {
            "observedContentType": "application/x-npy",
            "mode": "INPUT",
            "data": base64.b64encode(body).decode(),
            "encoding": "BASE64",
        }
    }
    return orjson.dumps({"captureData": capture, "eventMetadata": {"eventId": "npy-1"}})


def _tensor_event(shape: list[int], data: bytes = b"") -> bytes:
    payload = {"dtype": "uint8", "shape": shape, "data_b64": base64.b64encode(data).decode()}
    return json.dumps({"event_id": "hostile", "model_id": "digits", "input": payload}).encode()


def _deep_cloudevent() -> tuple[bytes, list[tuple[str, bytes]]]:
    envelope = (
        b'{"specversion": "1.0", "id": "ce-1", "source": "s", '
        b'"type": "org.kubeflow.serving.inference.request", "deep": '
        + b"[" * 300
        + b"]" * 300
        + b', "data": {"inputs": []}}'
    )
    return envelope, [("content-type", b"application/cloudevents+json")]


def _padded_mapped() -> bytes:
    return orjson.dumps({"id": "m-1", "features": [0.5] * 64, "padding": [0] * 10_000})


HOSTILE = {
    # numpy refuses more than 64 dimensions (ValueError before the limits)
    "70-dimensions": (TOPIC, _tensor_event([1] * 70, b"\x00"), [], "too_large"),
    # overflows int64 when numpy reshapes (ValueError before the limits)
    "0-by-2**63": (TOPIC, _tensor_event([0, 2**63]), [], "too_large"),
    "0-by-2**63-1": (TOPIC, _tensor_event([0, 2**63 - 1]), [], "too_large"),
    # numpy.load allocated 37 GiB from the header (MemoryError before the limits)
    "npy-header-100000x100000": (CAPTURE_TOPIC, _npy_capture("(100000, 100000)"), [], "too_large"),
    "npy-header-70-dimensions": (CAPTURE_TOPIC, _npy_capture(str((1,) * 70)), [], "too_large"),
    "npy-header-negative": (CAPTURE_TOPIC, _npy_capture("(-1, -4)"), [], "shape_mismatch"),
    # found by the fuzz suite: numpy's header parser raised tokenize.TokenError
    "npy-header-unclosed": (
        CAPTURE_TOPIC,
        _npy_capture("()", "{\x93NUMPY{"),
        [],
        "invalid_sagemaker",
    ),
    # found by the fuzz suite: orjson cannot re-encode an attribute nested 300 deep
    "cloudevent-attribute-300-deep": (KSERVE_TOPIC, *_deep_cloudevent(), "invalid_cloudevent"),
    # found by the fuzz suite: a searching path walked 10,000 padding values (seconds)
    "mapped-padding": (MAPPED_TOPIC, _padded_mapped(), [], "too_large"),
}


@pytest.mark.parametrize(("topic", "value", "headers", "reason"), HOSTILE.values(), ids=HOSTILE)
def test_a_hostile_message_is_one_dead_letter_and_the_good_events_around_it_decode(
    detector_path: Path, topic: str, value: bytes, headers: list[tuple[str, bytes]], reason: str
) -> None:
    pipeline = hostile_pipeline(detector_path)
    image = np.zeros((1, 8, 8), dtype=np.float32)
    messages = [
        message(demo_event("before", image, as_tensor=True, source="s"), 0),
        InputMessage(topic, 0, 1, None, value, 1_700_000_000.0, tuple(headers)),
        message(demo_event("after", image, as_tensor=False, source="s"), 2),
    ]
    decoded = pipeline.decode(messages)
    assert decoded.invalid_reasons == [reason]
    (letter,) = [DeadLetter.model_validate_json(r.value) for r in decoded.dead_letters]
    assert letter.offset == 1
    assert sorted(e.event_id for b in decoded.batches for e in b.events) == ["after", "before"]


def test_an_unforeseen_exception_while_decoding_is_a_decode_error_dead_letter(
    detector_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The last line of defence: a decoder bug costs one message, logged with its
    traceback, never the worker."""
    pipeline = make_pipeline(detector_path)
    real = input_from_nested_list

    def broken(value: Any) -> np.ndarray:
        if value == [[[7.0]]]:
            raise IndexError("a bug")
        return real(value)

    monkeypatch.setattr("monitor.decoding.input_from_nested_list", broken)
    image = np.zeros((1, 8, 8), dtype=np.float32)
    values = [
        demo_event("before", image, as_tensor=False, source="s"),
        orjson.dumps({"event_id": "buggy", "model_id": "digits", "input": [[[7.0]]]}),
        demo_event("after", image, as_tensor=False, source="s"),
    ]
    with caplog.at_level(logging.ERROR, logger="monitor.decoding"):
        decoded = pipeline.decode([message(v, i) for i, v in enumerate(values)])
    assert decoded.invalid_reasons == ["decode_error"]
    (letter,) = [DeadLetter.model_validate_json(r.value) for r in decoded.dead_letters]
    assert "IndexError: a bug" in letter.error
    assert letter.event_id == "buggy"
    assert [e.event_id for b in decoded.batches for e in b.events] == ["before", "after"]
    (logged,) = caplog.records
    assert logged.exc_info is not None


def test_a_memory_error_is_not_taken_for_a_bad_message(
    detector_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory says nothing about the message: it is not dead-lettered (it would
    be lost) but stops the batch, uncommitted."""
    pipeline = make_pipeline(detector_path)

    def exhausted(value: Any) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr("monitor.decoding.input_from_nested_list", exhausted)
    event = demo_event("e", np.zeros((1, 8, 8), np.float32), as_tensor=False, source="s")
    with pytest.raises(MemoryError):
        pipeline.decode([message(event, 0)])
