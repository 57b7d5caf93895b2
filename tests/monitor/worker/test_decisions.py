"""The policy and the decision records, for requests and for sources."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.worker.decisions import (
    DETECTOR_NAME,
    SOURCE_LIMIT_NAME,
    quarantine_due,
    request_action,
    request_decision,
    request_decisions,
    source_action,
    source_decision,
)
from schemas import Action, Decision, Scope, SourceFlag, decode_event

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_policy() -> None:
    assert request_action(False, "enforce") is Action.ALLOW
    assert request_action(True, "enforce") is Action.QUARANTINE
    assert request_action(True, "observe") is Action.FLAG
    assert source_action(True) is Action.QUARANTINE
    assert source_action(False) is Action.FLAG
    assert quarantine_due(5, 5, 0.0, 10.0)
    assert not quarantine_due(4, 5, 0.0, 10.0)
    assert not quarantine_due(9, 5, 10.5, 10.0)
    assert quarantine_due(9, 5, 10.0, 10.0)


def test_a_request_decision_names_the_event_and_the_detector() -> None:
    event = decode_event(
        b'{"event_id": "e1", "request_id": "r1", "source": "user-7", "model_id": "m",'
        b' "model_version": "3", "input": [1]}'
    )
    decision = request_decision(event, Action.FLAG, 0.8, 0.5, NOW)
    assert (decision.key, decision.scope, decision.action, decision.decided_at) == (
        "r1",
        Scope.REQUEST,
        Action.FLAG,
        NOW,
    )
    assert (decision.source, decision.model_id, decision.model_version) == ("user-7", "m", "3")
    assert [(r.detector, r.score, r.threshold) for r in decision.reasons] == [
        (DETECTOR_NAME, 0.8, 0.5)
    ]
    assert decision.expires_at is None


def test_a_source_decision_quarantines_only_when_enforced() -> None:
    flag = SourceFlag(
        source="user-7",
        event_id="e9",
        model_id="m",
        model_version=None,
        score=0.9,
        threshold=0.5,
        enforce=True,
        flagged_at=NOW,
    )
    expires = NOW + timedelta(seconds=600)
    enforced = source_decision(flag, 20, 20, expires, NOW)
    assert (enforced.scope, enforced.action, enforced.expires_at) == (
        Scope.SOURCE,
        Action.QUARANTINE,
        expires,
    )
    assert [(r.detector, r.score, r.threshold) for r in enforced.reasons] == [
        (SOURCE_LIMIT_NAME, 20, 20)
    ]
    observed = source_decision(flag.model_copy(update={"enforce": False}), 20, 20, expires, NOW)
    assert observed.action is Action.FLAG


def test_a_batch_of_request_decisions_is_field_for_field_what_request_decision_builds() -> None:
    """The batch path encodes decisions with orjson, not the pydantic model: the same
    contract, whatever the event leaves out, and the same key."""
    events = [
        decode_event(
            b'{"event_id": "e1", "request_id": "r1", "source": "user-7", "model_id": "m",'
            b' "model_version": "3", "ts": "2026-01-02T03:04:00+02:00", "input": [1]}'
        ),
        decode_event(b'{"event_id": "e2", "model_id": "m", "input": [1]}'),
        decode_event('{"event_id": "é3", "model_id": "m", "source": "", "input": [1]}'.encode()),
    ]
    actions = [Action.QUARANTINE, Action.ALLOW, Action.FLAG]
    scores = [0.8125, 1e-7, 123456.789]
    batch = request_decisions(events, actions, scores, 0.5, NOW)
    assert len(batch) == len(events)
    for (key, value), event, action, score in zip(batch, events, actions, scores, strict=True):
        expected = request_decision(event, action, score, 0.5, NOW)
        assert Decision.model_validate_json(value) == expected
        assert key == expected.key
