"""Score lines, detections and decisions: the records advmon writes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas import Action, Decision, Detection, DetectionKind, Reason, Scope, ScoreRecord

_SHA = "ab" * 32
_DECIDED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _detection(**fields: Any) -> Detection:
    values: dict[str, Any] = {
        "event_id": "e1",
        "model_id": "digits",
        "model_version": "3",
        "request_id": "r1",
        "source": "key-7",
        "kind": DetectionKind.ADVERSARIAL,
        "score": 0.73,
        "threshold": 0.41,
        "prediction": 7,
        "detector_sha256": _SHA,
        "event_ts": datetime(2024, 5, 1, 11, 59, 59, tzinfo=timezone(timedelta(hours=2))),
        "detected_at": _DECIDED,
        "topic": "inference.digits",
        "partition": 3,
        "offset": 1042,
        "details": {"bit_depth_5": 0.73, "median_2x2": 0.12},
    }
    values.update(fields)
    return Detection(**values)


def _decision(**fields: Any) -> Decision:
    values: dict[str, Any] = {
        "event_id": "e1",
        "request_id": "r1",
        "source": "key-7",
        "model_id": "digits",
        "model_version": "3",
        "action": Action.QUARANTINE,
        "scope": Scope.SOURCE,
        "reasons": [Reason(detector="squeeze", score=0.73, threshold=0.41)],
        "expires_at": _DECIDED + timedelta(minutes=15),
        "decided_at": _DECIDED,
    }
    values.update(fields)
    return Decision(**values)


# --- ScoreRecord --------------------------------------------------------------------------


def test_score_record_line_has_exactly_the_contract_fields_in_order() -> None:
    line = ScoreRecord(event_id="e1", score=0.5, flagged=True).model_dump_json()
    assert line == '{"event_id":"e1","score":0.5,"flagged":true}'


def test_score_record_round_trip() -> None:
    record = ScoreRecord(event_id="e1", score=0.125, flagged=False)
    assert ScoreRecord.model_validate_json(record.model_dump_json()) == record
    assert ScoreRecord.model_validate(orjson.loads(orjson.dumps(record.model_dump()))) == record


@pytest.mark.parametrize("score", [math.nan, math.inf])
def test_scores_must_be_finite(score: float) -> None:
    # JSON has no NaN or infinity; pydantic would write null and break every reader.
    with pytest.raises(ValidationError):
        ScoreRecord(event_id="e1", score=score, flagged=True)
    with pytest.raises(ValidationError):
        _detection(score=score)
    with pytest.raises(ValidationError):
        Reason(detector="squeeze", score=0.5, threshold=score)


# --- Detection ----------------------------------------------------------------------------


def test_detection_round_trip() -> None:
    detection = _detection()
    assert Detection.model_validate_json(detection.model_dump_json()) == detection
    assert detection.key == "digits"


def test_detection_json_fields() -> None:
    data = orjson.loads(_detection().model_dump_json())
    assert list(data) == [
        "event_id",
        "model_id",
        "model_version",
        "request_id",
        "source",
        "kind",
        "score",
        "threshold",
        "prediction",
        "detector_sha256",
        "expires_at",
        "event_ts",
        "detected_at",
        "topic",
        "partition",
        "offset",
        "signal",
        "detector",
        "related_event_ids",
        "details",
    ]
    assert data["kind"] == "adversarial"
    assert data["related_event_ids"] == []
    assert data["event_ts"] == "2024-05-01T11:59:59+02:00"
    assert data["detected_at"] == "2024-05-01T12:00:00Z"


def test_minimal_drift_detection() -> None:
    detection = Detection(
        event_id="e9",
        model_id="digits",
        kind="drift",
        score=1.0,
        threshold=0.5,
        detector_sha256=_SHA,
        detected_at="2024-05-01T12:00:00Z",
    )
    assert detection.kind is DetectionKind.DRIFT
    assert (detection.topic, detection.partition, detection.offset) == (None, None, None)
    assert detection.details == {}
    assert Detection.model_validate_json(detection.model_dump_json()) == detection


def test_query_attack_detection_round_trip() -> None:
    detection = _detection(
        event_id="q-17",
        kind="query_attack",
        score=12,
        threshold=8,
        prediction=None,
        detector_sha256=None,
        related_event_ids=[f"q-{n}" for n in range(16, 0, -1)],
        expires_at=_DECIDED + timedelta(minutes=30),
        details={
            "matches": 5,
            "held": 40,
            "span_seconds": 90.5,
            "first_linked_ts": 1714564709.5,
            "enforced": 1.0,
            "min_linked": 8,
        },
    )
    assert detection.kind is DetectionKind.QUERY_ATTACK
    data = orjson.loads(detection.model_dump_json())
    assert data["kind"] == "query_attack"
    assert data["related_event_ids"] == [f"q-{n}" for n in range(16, 0, -1)]
    assert Detection.model_validate_json(detection.model_dump_json()) == detection


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"detector_sha256": "AB" * 32}, "detector_sha256"),
        ({"detector_sha256": "ab" * 31}, "detector_sha256"),
        ({"detected_at": datetime(2024, 5, 1, 12, 0)}, "detected_at"),
        ({"event_ts": "2024-05-01T12:00:00"}, "event_ts"),
        ({"kind": "probe"}, "kind"),
        ({"offset": -1}, "offset"),
        ({"model_id": ""}, "model_id"),
        ({"related_event_ids": [f"q-{n}" for n in range(17)]}, "related_event_ids"),
    ],
)
def test_invalid_detection(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _detection(**fields)
    assert caught.value.errors()[0]["loc"] == (field,)


def test_related_event_ids_are_not_empty() -> None:
    with pytest.raises(ValidationError) as caught:
        _detection(related_event_ids=["q-1", ""])
    assert caught.value.errors()[0]["loc"] == ("related_event_ids", 1)


# --- Decision -----------------------------------------------------------------------------


def test_decision_round_trip() -> None:
    decision = _decision()
    assert Decision.model_validate_json(decision.model_dump_json()) == decision
    assert decision.key == "key-7"


def test_decision_json_fields() -> None:
    data = orjson.loads(_decision().model_dump_json())
    assert list(data) == [
        "event_id",
        "request_id",
        "source",
        "model_id",
        "model_version",
        "action",
        "scope",
        "reasons",
        "expires_at",
        "decided_at",
    ]
    assert (data["action"], data["scope"]) == ("quarantine", "source")
    assert data["reasons"] == [{"detector": "squeeze", "score": 0.73, "threshold": 0.41}]
    assert data["expires_at"] == "2024-05-01T12:15:00Z"


def test_request_scoped_allow_decision() -> None:
    decision = _decision(source=None, action="allow", scope="request", reasons=[], expires_at=None)
    assert decision.key == "r1"
    assert Decision.model_validate_json(decision.model_dump_json()) == decision


def test_source_decision_needs_its_source() -> None:
    with pytest.raises(ValidationError, match="a source-scoped decision needs a source"):
        _decision(scope=Scope.SOURCE, source=None)


def test_request_decision_without_request_id_is_keyed_by_event_id() -> None:
    decision = _decision(scope=Scope.REQUEST, request_id=None)
    assert decision.key == decision.event_id


def test_decision_rejects_naive_times_and_unknown_actions() -> None:
    with pytest.raises(ValidationError, match="no timezone offset"):
        _decision(decided_at=datetime(2024, 5, 1, 12, 0))
    with pytest.raises(ValidationError):
        _decision(action="block")


def test_records_ignore_unknown_fields() -> None:
    data = orjson.loads(_decision().model_dump_json())
    assert Decision.model_validate({**data, "ttl_s": 900}) == _decision()


def test_records_are_frozen() -> None:
    with pytest.raises(ValidationError):
        _decision().action = Action.ALLOW  # type: ignore[misc]
