"""What an incident shows people: one JSON shape, detections over time, its story.

``advmon incidents``, the HTTP API and the exports (:mod:`monitor.incidents.exports`) all
describe an incident with :func:`incident_dict`, so the three never disagree.
``advmon incidents show`` and the markdown export read what they show of an incident
(scores, sources, decisions, drift, sample events, detections over time) from the
functions under "what an incident shows"; each only lays it out. :func:`parse_time` reads
the times the CLI and the API accept in their filters.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.incidents.storage.incidents import IncidentFilter
from monitor.incidents.storage.models import (
    DetectionRow,
    Incident,
    StatusChange,
)

__all__ = [
    "DecisionTaken",
    "DetectionBucket",
    "DriftChange",
    "SampleEvent",
    "decisions_taken",
    "detection_dict",
    "detection_timeline",
    "drift_changes",
    "filter_dict",
    "incident_dict",
    "parse_time",
    "sample_events",
    "score_summary",
    "source_counts",
    "sources_summary",
    "timeline_width",
    "utc_time",
]

_SPAN = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: Bucket widths offered when a timeline must fit a screen or a page.
_WIDTHS = tuple(timedelta(minutes=m) for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440, 10080))


# --- input --------------------------------------------------------------------------


def parse_time(value: str, now: datetime) -> datetime:
    """An aware UTC time from ISO 8601, or from a span before ``now`` (``30m``, ``2h``, ``7d``).

    ISO times without an offset are taken as UTC. Raises ``ValueError`` with a message
    meant for the user.

    >>> now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    >>> parse_time("2h", now).isoformat()
    '2026-05-01T10:00:00+00:00'
    >>> parse_time("2026-05-01T14:00:00+02:00", now).isoformat()
    '2026-05-01T12:00:00+00:00'
    >>> parse_time("2026-04-30", now).isoformat()
    '2026-04-30T00:00:00+00:00'
    """
    text = value.strip()
    span = _SPAN.match(text)
    if span:
        amount = float(span["amount"])
        return now.astimezone(UTC) - timedelta(**{_UNITS[span["unit"]]: amount})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither an ISO 8601 time (2026-05-01T12:00:00Z) nor a span "
            "before now (45s, 30m, 2h, 7d, 2w)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# --- JSON shape ---------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def incident_dict(incident: Incident, *, detail: bool = False) -> dict[str, Any]:
    """An incident as JSON-ready data: the one shape the CLI, the API and exports share.

    ``detail`` adds ``status_changes``, ``sources`` (detections per source, most first)
    and ``timeline`` (detections per minute); it needs an incident read with
    :meth:`IncidentStore.get`, which loads its status changes and detections.
    """
    data: dict[str, Any] = {
        "id": incident.id,
        "kind": incident.kind.value,
        "model_id": incident.model_id,
        "model_version": incident.model_version,
        "source": incident.source,
        "status": incident.status.value,
        "first_seen": _iso(incident.first_seen),
        "last_seen": _iso(incident.last_seen),
        "resolved_at": _iso(incident.resolved_at),
        "detection_count": incident.detection_count,
        "peak_score": incident.peak_score,
        "mean_score": incident.mean_score,
        "threshold": incident.threshold,
        "detector_sha256": incident.detector_sha256,
        "alert_sent_at": _iso(incident.alert_sent_at),
        "sample_events": list(incident.sample_events),
        "decisions": list(incident.decisions),
    }
    if detail:
        data["status_changes"] = [_change_dict(change) for change in incident.changes]
        data["sources"] = [
            {"source": source, "detections": count}
            for source, count in source_counts(incident.detections)
        ]
        data["timeline"] = [bucket.as_dict() for bucket in detection_timeline(incident.detections)]
    return data


def _change_dict(change: StatusChange) -> dict[str, Any]:
    return {
        "status": change.status.value,
        "at": _iso(change.at),
        "by": change.by,
        "note": change.note,
    }


def detection_dict(detection: DetectionRow) -> dict[str, Any]:
    """One stored detection as JSON-ready data."""
    return {
        "event_id": detection.event_id,
        "kind": detection.kind.value,
        "model_id": detection.model_id,
        "source": detection.source,
        "score": detection.score,
        "threshold": detection.threshold,
        "detected_at": _iso(detection.detected_at),
        "topic": detection.topic,
        "partition": detection.partition,
        "offset": detection.offset,
        "signal": detection.signal,
        "detector": detection.detector,
        "details": detection.details,
    }


def filter_dict(filters: IncidentFilter) -> dict[str, Any]:
    """The filters that are set, JSON-ready."""
    values = {
        "model_id": filters.model_id,
        "kind": filters.kind.value if filters.kind else None,
        "status": filters.status.value if filters.status else None,
        "source": filters.source,
        "since": _iso(filters.since),
        "until": _iso(filters.until),
    }
    return {name: value for name, value in values.items() if value is not None}


# --- detections over time -----------------------------------------------------------


@dataclass(frozen=True)
class DetectionBucket:
    """The detections of one time bucket: how many, and the highest score."""

    start: datetime
    width: timedelta
    count: int
    peak_score: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"start": _iso(self.start), "count": self.count, "peak_score": self.peak_score}


def detection_timeline(
    detections: Iterable[DetectionRow], width: timedelta = timedelta(minutes=1)
) -> list[DetectionBucket]:
    """Detections counted per ``width`` bucket (aligned to the epoch), oldest first.

    Only buckets with detections are listed.
    """
    step = width.total_seconds()
    counts: Counter[float] = Counter()
    peaks: dict[float, float] = {}
    for detection in detections:
        start = math.floor(detection.detected_at.timestamp() / step) * step
        counts[start] += 1
        peaks[start] = max(peaks.get(start, -math.inf), detection.score)
    return [
        DetectionBucket(datetime.fromtimestamp(start, UTC), width, counts[start], peaks[start])
        for start in sorted(counts)
    ]


def timeline_width(incident: Incident, max_buckets: int = 30) -> timedelta:
    """The narrowest usual bucket width that covers the incident in ``max_buckets``.

    >>> from datetime import datetime
    >>> start = datetime(2026, 5, 1, tzinfo=UTC)
    >>> timeline_width(Incident(first_seen=start, last_seen=start + timedelta(hours=2)))
    datetime.timedelta(seconds=300)
    """
    span = incident.last_seen - incident.first_seen
    for width in _WIDTHS:
        if span / width < max_buckets:
            return width
    return _WIDTHS[-1]


def source_counts(detections: Iterable[DetectionRow]) -> list[tuple[str | None, int]]:
    """Detections per source, most first (ties by source name)."""
    counts = Counter(detection.source for detection in detections)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0] or ""))


# --- what an incident shows ---------------------------------------------------------


def utc_time(moment: datetime | None) -> str:
    """``moment`` in UTC to the second, as every view of an incident shows times.

    >>> utc_time(datetime(2026, 5, 1, 14, 0, 5, 999, tzinfo=UTC))
    '2026-05-01 14:00:05'
    >>> utc_time(None)
    '—'
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def _stored_time(value: object) -> datetime | None:
    """A time that an incident's JSON columns (samples, decisions) hold as ISO text."""
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def score_summary(incident: Incident) -> str:
    """The incident's scores: ``peak 1, mean 0.75, threshold 0.25``."""
    return (
        f"peak {incident.peak_score:.4g}, mean {incident.mean_score:.4g}, "
        f"threshold {incident.threshold:.4g}"
    )


def sources_summary(sources: Sequence[tuple[str, int]], most: int) -> str:
    """The first ``most`` of ``(name, detections)``, then how many more there are.

    >>> sources_summary([("key-a", 3), ("key-b", 2), ("(none)", 1)], most=2)
    'key-a (3), key-b (2), and 1 more'
    """
    shown = ", ".join(f"{name} ({count})" for name, count in sources[:most])
    more = f", and {len(sources) - most} more" if len(sources) > most else ""
    return shown + more


@dataclass(frozen=True)
class DecisionTaken:
    """A decision recorded on an incident (a source quarantined or flagged)."""

    action: str | None
    scope: str | None
    source: str | None
    decided_at: datetime | None
    expires_at: datetime | None
    flagged_events: float | None


def decisions_taken(incident: Incident) -> list[DecisionTaken]:
    """The decisions recorded on the incident, in the order they were recorded."""
    decisions = []
    for decision in incident.decisions:
        flagged = decision.get("flagged_events")
        decisions.append(
            DecisionTaken(
                action=decision.get("action"),
                scope=decision.get("scope"),
                source=decision.get("source"),
                decided_at=_stored_time(decision.get("decided_at")),
                expires_at=_stored_time(decision.get("expires_at")),
                flagged_events=float(flagged) if flagged is not None else None,
            )
        )
    return decisions


@dataclass(frozen=True)
class DriftChange:
    """What one drift detection saw change: a signal's mean before and after."""

    signal: str | None
    detector: str | None
    mean_before: float
    mean_recent: float
    #: The request that tipped the detector (the event id without its ``drift:`` prefix).
    at_event: str
    events_seen: int


def drift_changes(incident: Incident, most: int = 20) -> list[DriftChange]:
    """The first ``most`` drift detections of the incident, oldest first."""
    drifts = [d for d in incident.detections if d.signal is not None]
    changes = []
    for drift in drifts[:most]:
        details = drift.details or {}
        changes.append(
            DriftChange(
                signal=drift.signal,
                detector=drift.detector,
                mean_before=details.get("mean_before", math.nan),
                mean_recent=details.get("mean_recent", math.nan),
                at_event=drift.event_id.removeprefix(f"drift:{drift.signal}:"),
                events_seen=int(details.get("events_seen", 0)),
            )
        )
    return changes


@dataclass(frozen=True)
class SampleEvent:
    """One of the incident's sample events: the first few detections it kept."""

    event_id: str
    score: float
    source: str | None
    detected_at: datetime | None


def sample_events(incident: Incident) -> list[SampleEvent]:
    """The incident's sample events, in the order they were kept."""
    return [
        SampleEvent(
            event_id=str(sample.get("event_id")),
            score=float(sample.get("score", math.nan)),
            source=str(sample["source"]) if sample.get("source") else None,
            detected_at=_stored_time(sample.get("detected_at")),
        )
        for sample in incident.sample_events
    ]
