"""What the worker decides and reports: the policy, decisions for serving, detections.

A request decision is made for every scored event (:func:`request_decision`); a flagged
event also gets a detection (:func:`adversarial_detection`) and, when it names its
source, a source flag for the quarantine stage (:func:`source_flag`). A source that
crosses its limit of flagged events gets a source decision (:func:`source_decision`) and,
when enforced, a quarantine detection (:func:`quarantine_detection`); a source whose
queries link into a query attack gets a source decision
(:func:`query_attack_decision`) and a query-attack detection
(:func:`query_attack_detection`). All of them are
assembled here, so each topic carries one shape whichever stage decided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from pydantic import TypeAdapter

from monitor.config import Policy

if TYPE_CHECKING:
    from detectors import QueryObservation
    from monitor.worker.records import InputMessage

from schemas import (
    Action,
    Decision,
    Detection,
    DetectionKind,
    InferenceEvent,
    QueryPrints,
    Reason,
    Scope,
    SourceFlag,
)

__all__ = [
    "DETECTOR_NAME",
    "QUERY_ATTACK_NAME",
    "SOURCE_LIMIT_NAME",
    "adversarial_detection",
    "quarantine_detection",
    "quarantine_due",
    "query_attack_decision",
    "query_attack_detection",
    "request_action",
    "request_decision",
    "request_decisions",
    "source_action",
    "source_decision",
    "source_flag",
]

DETECTOR_NAME = "feature_squeezing"
"""The reason's detector on request decisions."""
SOURCE_LIMIT_NAME = "flagged_events_per_source"
"""The reason's detector on source decisions."""
QUERY_ATTACK_NAME = "query_attack"
"""The reason's detector on a source decision for a query attack."""


def request_action(flagged: bool, policy: Policy) -> Action:
    """The per-request action: ``allow`` unless flagged; flagged requests are quarantined
    under ``enforce`` and flagged under ``observe``.

    >>> request_action(False, "enforce"), request_action(True, "observe")
    (<Action.ALLOW: 'allow'>, <Action.FLAG: 'flag'>)
    """
    if not flagged:
        return Action.ALLOW
    return Action.QUARANTINE if policy == "enforce" else Action.FLAG


def source_action(enforce: bool) -> Action:
    """The action for a source past its flag limit: quarantine when enforced, else flag."""
    return Action.QUARANTINE if enforce else Action.FLAG


def quarantine_due(count: int, limit: int, in_force_until: float, now: float) -> bool:
    """Whether a source with ``count`` flags in the window gets a new quarantine decision.

    Only one decision is published while a quarantine is in force.

    >>> quarantine_due(20, 20, 0.0, 100.0), quarantine_due(25, 20, 150.0, 100.0)
    (True, False)
    """
    return count >= limit and in_force_until <= now


def request_decision(
    event: InferenceEvent, action: Action, score: float, threshold: float, now: datetime
) -> Decision:
    """The decision for one scored event."""
    return Decision(
        event_id=event.event_id,
        request_id=event.request_id,
        source=event.source,
        model_id=event.model_id,
        model_version=event.model_version,
        action=action,
        scope=Scope.REQUEST,
        reasons=[Reason(detector=DETECTOR_NAME, score=score, threshold=threshold)],
        decided_at=now,
    )


_WIRE_TIME = TypeAdapter(datetime)


def request_decisions(
    events: Sequence[InferenceEvent],
    actions: Sequence[Action],
    scores: Sequence[float],
    threshold: float,
    now: datetime,
) -> list[tuple[str, bytes]]:
    """The key and JSON of each event's :func:`request_decision`, for a whole batch.

    The same contract, field for field, built as plain objects and encoded with orjson:
    a pydantic model per decision cost more than scoring the event. A score that is not
    finite (which the contract refuses) goes through :func:`request_decision`, which
    raises as it always did.

    >>> from datetime import UTC
    >>> event = InferenceEvent(event_id="e1", model_id="m", input=[1.0])
    >>> [(key, Decision.model_validate_json(value).action) for key, value in request_decisions(
    ...     [event], [Action.ALLOW], [0.25], 0.5, datetime(2026, 1, 2, tzinfo=UTC))]
    [('e1', <Action.ALLOW: 'allow'>)]
    """
    decided_at = _WIRE_TIME.dump_python(now, mode="json")
    out: list[tuple[str, bytes]] = []
    for event, action, score in zip(events, actions, scores, strict=True):
        if not math.isfinite(score) or not math.isfinite(threshold):
            decision = request_decision(event, action, score, threshold, now)
            out.append((decision.key, decision.model_dump_json().encode()))
            continue
        value = {
            "event_id": event.event_id,
            "request_id": event.request_id,
            "source": event.source,
            "model_id": event.model_id,
            "model_version": event.model_version,
            "action": action.value,
            "scope": "request",
            "reasons": [{"detector": DETECTOR_NAME, "score": score, "threshold": threshold}],
            "expires_at": None,
            "decided_at": decided_at,
        }
        out.append((event.request_id or event.event_id, orjson.dumps(value)))
    return out


def source_decision(
    flag: SourceFlag, count: int, limit: int, expires: datetime, now: datetime
) -> Decision:
    """The decision for a source whose ``count`` flagged events reached ``limit``."""
    return Decision(
        event_id=flag.event_id,
        source=flag.source,
        model_id=flag.model_id,
        model_version=flag.model_version,
        action=source_action(flag.enforce),
        scope=Scope.SOURCE,
        reasons=[Reason(detector=SOURCE_LIMIT_NAME, score=count, threshold=limit)],
        expires_at=expires,
        decided_at=now,
    )


def adversarial_detection(
    event: InferenceEvent,
    message: InputMessage,
    score: float,
    threshold: float,
    prediction: int,
    detector_sha256: str,
    distances: Mapping[str, float],
    now: datetime,
) -> Detection:
    """The detection of one flagged event, pointing at the message it came in."""
    return Detection(
        event_id=event.event_id,
        model_id=event.model_id,
        model_version=event.model_version,
        request_id=event.request_id,
        source=event.source,
        kind=DetectionKind.ADVERSARIAL,
        score=score,
        threshold=threshold,
        prediction=prediction,
        detector_sha256=detector_sha256,
        event_ts=event.ts,
        detected_at=now,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        details=dict(distances),
    )


def source_flag(
    event: InferenceEvent, source: str, score: float, threshold: float, enforce: bool, now: datetime
) -> SourceFlag:
    """A flagged event of ``source``, for the quarantine stage's count."""
    return SourceFlag(
        source=source,
        event_id=event.event_id,
        model_id=event.model_id,
        model_version=event.model_version,
        score=score,
        threshold=threshold,
        enforce=enforce,
        flagged_at=now,
    )


def quarantine_detection(
    flag: SourceFlag, count: int, limit: int, expires: datetime, now: datetime
) -> Detection:
    """The detection of a source quarantined (or, when not enforced, flagged) until
    ``expires``."""
    return Detection(
        event_id=flag.event_id,
        model_id=flag.model_id,
        model_version=flag.model_version,
        source=flag.source,
        kind=DetectionKind.QUARANTINE,
        score=count,
        threshold=limit,
        expires_at=expires,
        detected_at=now,
        details={"enforced": 1.0 if flag.enforce else 0.0},
    )


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def query_attack_decision(
    prints: QueryPrints,
    row: int,
    seen: QueryObservation,
    min_linked: int,
    expires: datetime,
    now: datetime,
) -> Decision:
    """The decision for a source whose query ``row`` of ``prints`` linked to ``seen.linked``
    of its held queries: quarantine when enforced, else flag, until ``expires``."""
    return Decision(
        event_id=prints.event_ids[row],
        source=prints.source,
        model_id=prints.model_id,
        model_version=prints.model_version,
        action=source_action(prints.enforce),
        scope=Scope.SOURCE,
        reasons=[Reason(detector=QUERY_ATTACK_NAME, score=seen.linked, threshold=min_linked)],
        expires_at=expires,
        decided_at=now,
    )


def query_attack_detection(
    prints: QueryPrints,
    row: int,
    seen: QueryObservation,
    min_linked: int,
    expires: datetime,
    now: datetime,
) -> Detection:
    """The detection of a query attack by ``prints.source``, at its query ``row``."""
    when = prints.times[row]
    first = seen.first_linked_time if seen.first_linked_time is not None else when
    return Detection(
        event_id=prints.event_ids[row],
        model_id=prints.model_id,
        model_version=prints.model_version,
        source=prints.source,
        kind=DetectionKind.QUERY_ATTACK,
        score=seen.linked,
        threshold=min_linked,
        expires_at=expires,
        event_ts=_when(when),
        detected_at=now,
        topic=prints.topics[row],
        partition=prints.partitions[row],
        offset=prints.offsets[row],
        related_event_ids=list(seen.matched_event_ids),
        details={
            "matches": float(seen.matches),
            "held": float(seen.held),
            "span_seconds": max(0.0, when - first),
            "first_linked_ts": first,
            "enforced": 1.0 if prints.enforce else 0.0,
            "min_linked": float(min_linked),
        },
    )
