"""Query-attack detections as the worker publishes them, for the incident tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from schemas import Detection, DetectionKind

#: How long before its detection the triggering query was served.
SERVED_BEFORE = timedelta(seconds=1)


def query_attack(
    event_id: str,
    at: datetime,
    *,
    source: str | None = "key-z",
    model_id: str = "digits",
    linked: int = 12,
    min_linked: int = 8,
    matches: int = 5,
    held: int = 40,
    span_seconds: float = 90.0,
    related: Sequence[str] = ("q-16", "q-15", "q-11"),
    enforced: bool = True,
    lasts: timedelta = timedelta(hours=1),
    **fields: Any,
) -> Detection:
    """A query-attack detection at ``at``: query ``event_id`` of ``source``, served
    :data:`SERVED_BEFORE` earlier, linked to ``linked`` held queries over ``span_seconds``;
    the source quarantined (or only flagged) for ``lasts``."""
    served = at - SERVED_BEFORE
    values: dict[str, Any] = {
        "event_id": event_id,
        "model_id": model_id,
        "model_version": "v3",
        "request_id": f"req-{event_id}",
        "source": source,
        "kind": DetectionKind.QUERY_ATTACK,
        "score": linked,
        "threshold": min_linked,
        "related_event_ids": list(related),
        "expires_at": at + lasts,
        "event_ts": served,
        "detected_at": at,
        "topic": "inference",
        "partition": 0,
        "offset": 17,
        "details": {
            "matches": matches,
            "held": held,
            "span_seconds": span_seconds,
            "first_linked_ts": served.timestamp() - span_seconds,
            "enforced": 1.0 if enforced else 0.0,
            "min_linked": min_linked,
        },
    }
    values.update(fields)
    return Detection(**values)
