"""What an incident shows people: one JSON shape, detections over time, its story.

``advmon incidents``, the HTTP API and the exports (:mod:`monitor.incidents.exports`) all
describe an incident with :func:`incident_dict`, so the three never disagree.
``advmon incidents show`` and the markdown export read what they show of an incident
(scores, sources, decisions, drift, query attacks, sample events, detections over time)
from the functions under "what an incident shows"; each only lays it out.
:func:`parse_time` reads the times the CLI and the API accept in their filters.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.incidents.storage.incidents import (
    EXPIRES_AT_KEY,
    RELATED_EVENT_IDS_KEY,
    IncidentFilter,
)
from monitor.incidents.storage.models import (
    DetectionRow,
    Incident,
    IncidentKind,
    StatusChange,
)

__all__ = [
    "DecisionTaken",
    "DetectionBucket",
    "DriftChange",
    "QueryAttack",
    "SampleEvent",
    "decision_reason",
    "decisions_taken",
    "detection_details",
    "detection_dict",
    "detection_expires_at",
    "detection_timeline",
    "drift_changes",
    "duration_text",
    "filter_dict",
    "incident_dict",
    "parse_time",
    "query_attack_dict",
    "query_attacks",
    "related_event_ids",
    "sample_events",
    "score_summary",
    "source_counts",
    "source_decision",
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

    ``detail`` adds ``status_changes``, ``sources`` (detections per source, most first),
    ``timeline`` (detections per minute) and ``query_attacks`` (what linked the queries
    of each query-attack detection, :func:`query_attack_dict`; empty for other kinds); it
    needs an incident read with :meth:`IncidentStore.get`, which loads its status changes
    and detections.
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
        data["query_attacks"] = [query_attack_dict(attack) for attack in query_attacks(incident)]
    return data


def _change_dict(change: StatusChange) -> dict[str, Any]:
    return {
        "status": change.status.value,
        "at": _iso(change.at),
        "by": change.by,
        "note": change.note,
    }


def detection_dict(detection: DetectionRow) -> dict[str, Any]:
    """One stored detection as JSON-ready data, shaped as the detection it stores:
    ``details`` holds its numeric details; ``related_event_ids`` and ``expires_at`` are
    beside them."""
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
        "details": detection_details(detection) or None,
        "related_event_ids": related_event_ids(detection),
        "expires_at": _iso(detection_expires_at(detection)),
    }


def detection_details(detection: DetectionRow) -> dict[str, float]:
    """The numeric details of a stored detection (its ``details`` JSON holds more)."""
    return {
        name: float(value)
        for name, value in (detection.details or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def related_event_ids(detection: DetectionRow) -> list[str]:
    """The earlier events a stored query-attack detection matched, newest first."""
    ids = (detection.details or {}).get(RELATED_EVENT_IDS_KEY)
    return [str(event_id) for event_id in ids] if isinstance(ids, list) else []


def detection_expires_at(detection: DetectionRow) -> datetime | None:
    """When the source decision of a stored detection lapses, if it carries one."""
    return _stored_time((detection.details or {}).get(EXPIRES_AT_KEY))


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
    #: Why, when not the source's flagged events: ``query_attack``.
    reason: str | None = None
    #: For a query attack: the source's queries linked to the one that crossed the threshold.
    linked_queries: float | None = None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def decisions_taken(incident: Incident) -> list[DecisionTaken]:
    """The decisions recorded on the incident, in the order they were recorded."""
    decisions = []
    for decision in incident.decisions:
        reason = decision.get("reason")
        decisions.append(
            DecisionTaken(
                action=decision.get("action"),
                scope=decision.get("scope"),
                source=decision.get("source"),
                decided_at=_stored_time(decision.get("decided_at")),
                expires_at=_stored_time(decision.get("expires_at")),
                flagged_events=_number(decision.get("flagged_events")),
                reason=str(reason) if reason is not None else None,
                linked_queries=_number(decision.get("linked_queries")),
            )
        )
    return decisions


def decision_reason(decision: DecisionTaken) -> str | None:
    """What the decision followed, in words, or ``None`` if it does not say.

    >>> decision_reason(DecisionTaken("quarantine", "source", "k", None, None, 10.0))
    '10 flagged events'
    >>> decision_reason(DecisionTaken("flag", "source", "k", None, None, None,
    ...                               reason="query_attack", linked_queries=12.0))
    '12 linked queries (query attack)'
    """
    if decision.reason == IncidentKind.QUERY_ATTACK.value:
        linked = decision.linked_queries
        return f"{linked:g} linked queries (query attack)" if linked is not None else "query attack"
    if decision.flagged_events is not None:
        return f"{decision.flagged_events:g} flagged events"
    return None


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


def duration_text(span: timedelta) -> str:
    """``span`` as ``1d 2h 3m 4s``, leaving out zero parts, to the second.

    >>> duration_text(timedelta(seconds=3690))
    '1h 1m 30s'
    >>> duration_text(timedelta(seconds=0.4))
    '0s'
    """
    seconds = round(span.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return " ".join(parts) or "0s"


@dataclass(frozen=True)
class QueryAttack:
    """What one query-attack detection found: the query at which a source's queries
    crossed the threshold, the source's held queries linked to it by chains of
    fingerprint matches, and the decision taken on the source."""

    #: The query at which the source crossed the threshold.
    event_id: str
    source: str | None
    detected_at: datetime
    #: The source's held queries linked to the query (the detection's score).
    linked_queries: float
    #: How many linked queries make a query attack (the detection's threshold).
    min_linked: float
    #: The held queries the query matched directly.
    matched_directly: float | None
    #: The queries held for the source when it was detected.
    held_queries: float | None
    #: When the oldest linked query was sent.
    first_linked_at: datetime | None
    #: When the query was sent: the end of the span of the linked queries.
    query_at: datetime | None
    #: From the oldest linked query to the query.
    span: timedelta | None
    #: A few of the earlier queries the query matched, newest first.
    related_event_ids: tuple[str, ...]
    #: ``quarantine`` when the policy enforced it, else ``flag``.
    action: str
    #: When the decision on the source lapses.
    expires_at: datetime | None


def _moment(epoch_seconds: float | None) -> datetime | None:
    if epoch_seconds is None or not math.isfinite(epoch_seconds):
        return None
    try:
        return datetime.fromtimestamp(epoch_seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _span(seconds: float | None) -> timedelta | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        return None


def _query_attack(detection: DetectionRow) -> QueryAttack:
    details = detection_details(detection)
    first = _moment(details.get("first_linked_ts"))
    span = _span(details.get("span_seconds"))
    query_at = None
    if first is not None and span is not None:
        try:
            query_at = first + span
        except OverflowError:
            query_at = None
    return QueryAttack(
        event_id=detection.event_id,
        source=detection.source,
        detected_at=detection.detected_at,
        linked_queries=detection.score,
        min_linked=detection.threshold,
        matched_directly=details.get("matches"),
        held_queries=details.get("held"),
        first_linked_at=first,
        query_at=query_at,
        span=span,
        related_event_ids=tuple(related_event_ids(detection)),
        # As the store records the decision: quarantine unless the detection says not.
        action="quarantine" if details.get("enforced", 1.0) > 0 else "flag",
        expires_at=detection_expires_at(detection),
    )


def query_attacks(incident: Incident, most: int = 20) -> list[QueryAttack]:
    """The newest ``most`` query-attack detections of the incident, oldest first."""
    attacks = [d for d in incident.detections if d.kind is IncidentKind.QUERY_ATTACK]
    return [_query_attack(detection) for detection in attacks[max(len(attacks) - most, 0) :]]


def source_decision(action: str, until: str | None) -> str:
    """The decision on a query attack's source, in words; ``until`` is when it lapses,
    written as the caller writes times.

    >>> source_decision("quarantine", "2026-05-01 13:00:00 UTC")
    'source quarantined until 2026-05-01 13:00:00 UTC'
    >>> source_decision("flag", None)
    'source flagged, not quarantined (the policy does not enforce)'
    """
    if action == "quarantine":
        return "source quarantined" + (f" until {until}" if until else "")
    text = "source flagged, not quarantined (the policy does not enforce)"
    return text + (f", until {until}" if until else "")


def _count(value: float | None) -> float | int | None:
    """A count as JSON: an integer when it is whole."""
    if value is None:
        return None
    return int(value) if value.is_integer() else value


def query_attack_dict(attack: QueryAttack) -> dict[str, Any]:
    """One query-attack detection's explanation as JSON-ready data."""
    return {
        "event_id": attack.event_id,
        "source": attack.source,
        "detected_at": _iso(attack.detected_at),
        "linked_queries": _count(attack.linked_queries),
        "min_linked": _count(attack.min_linked),
        "matched_directly": _count(attack.matched_directly),
        "held_queries": _count(attack.held_queries),
        "first_linked_at": _iso(attack.first_linked_at),
        "query_at": _iso(attack.query_at),
        "span_seconds": attack.span.total_seconds() if attack.span is not None else None,
        "related_event_ids": list(attack.related_event_ids),
        "action": attack.action,
        "expires_at": _iso(attack.expires_at),
    }


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
