"""Incident history for people: filters from user input, one JSON shape, postmortem exports.

``advmon incidents``, the HTTP API and the exports all describe an incident with
:func:`incident_dict`, so the three never disagree. ``advmon incidents show`` and the
markdown export read what they show of an incident (scores, sources, decisions, drift,
sample events, detections over time) from the functions under "what an incident shows";
each only lays it out. Exports come in three formats:

``json``
    ``{"generated_at", "filters", "incidents": [...]}``, each incident in full detail.
``csv``
    One row per incident; list columns hold JSON. Text that a spreadsheet would run as a
    formula (``=``, ``+``, ``-``, ``@`` first) is prefixed with ``'``: sources and event
    ids come from the traffic being monitored, i.e. possibly from an attacker.
``markdown``
    A postmortem-ready summary per incident: what, when, impact, decisions, timeline,
    detections over time, sample events.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from monitor.incidents.storage.incidents import IncidentFilter
from monitor.incidents.storage.models import (
    DetectionRow,
    Incident,
    IncidentKind,
    IncidentStatus,
    StatusChange,
)

__all__ = [
    "EXPORT_FORMATS",
    "DecisionTaken",
    "DetectionBucket",
    "DriftChange",
    "ExportFormat",
    "SampleEvent",
    "decisions_taken",
    "detection_dict",
    "detection_timeline",
    "drift_changes",
    "filter_dict",
    "incident_dict",
    "parse_time",
    "render_csv",
    "render_export",
    "render_json",
    "render_markdown",
    "sample_events",
    "score_summary",
    "source_counts",
    "sources_summary",
    "timeline_width",
    "utc_time",
]

ExportFormat = Literal["json", "csv", "markdown"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("json", "csv", "markdown")

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


# --- exports ------------------------------------------------------------------------


def render_export(
    incidents: Sequence[Incident],
    export_format: ExportFormat,
    *,
    filters: IncidentFilter,
    generated_at: datetime,
) -> str:
    """``incidents`` in ``export_format``; json and markdown need them read in detail."""
    if export_format == "json":
        return render_json(incidents, filters=filters, generated_at=generated_at)
    if export_format == "csv":
        return render_csv(incidents)
    return render_markdown(incidents, filters=filters, generated_at=generated_at)


def render_json(
    incidents: Sequence[Incident], *, filters: IncidentFilter, generated_at: datetime
) -> str:
    """The incidents in full detail, with the filters that chose them."""
    document = {
        "generated_at": _iso(generated_at),
        "filters": filter_dict(filters),
        "incidents": [incident_dict(incident, detail=True) for incident in incidents],
    }
    return json.dumps(document, indent=2) + "\n"


_CSV_COLUMNS = (
    "id",
    "kind",
    "model_id",
    "model_version",
    "source",
    "status",
    "first_seen",
    "last_seen",
    "resolved_at",
    "detection_count",
    "peak_score",
    "mean_score",
    "threshold",
    "detector_sha256",
    "alert_sent_at",
    "sample_events",
    "decisions",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def render_csv(incidents: Sequence[Incident]) -> str:
    """One row per incident; ``sample_events`` and ``decisions`` as JSON text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_CSV_COLUMNS)
    for incident in incidents:
        data = incident_dict(incident)
        writer.writerow([_csv_cell(data[column]) for column in _CSV_COLUMNS])
    return buffer.getvalue()


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")
_WHAT = {
    IncidentKind.ADVERSARIAL: "Adversarial inputs flagged by feature squeezing",
    IncidentKind.DRIFT: "Drift in the model's traffic",
    IncidentKind.QUARANTINE: "A source quarantined for repeated flagged events",
}


def _md(value: object) -> str:
    """``value`` as markdown text: special characters escaped, on one line."""
    text = " ".join(str(value).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _when(moment: datetime | None) -> str:
    return f"{utc_time(moment)} UTC" if moment else "—"


def _duration(span: timedelta) -> str:
    """``span`` as ``1d 2h 3m 4s``, leaving out zero parts.

    >>> _duration(timedelta(seconds=3690))
    '1h 1m 30s'
    """
    seconds = round(span.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return " ".join(parts) or "0s"


def _score_line(incident: Incident) -> str:
    line = score_summary(incident)
    if incident.threshold > 0:
        line += f" (peak {incident.peak_score / incident.threshold:.2f}× the threshold)"
    return line


def _decision_text(decision: DecisionTaken) -> str:
    text = decision.action or "decision"
    if decision.scope == "source":
        text += f" of source {_md(decision.source)}"
    elif decision.scope:
        text += f" ({_md(decision.scope)})"
    if decision.expires_at is not None:
        text += f" until {_when(decision.expires_at)}"
    if decision.flagged_events is not None:
        text += f" after {decision.flagged_events:g} flagged events"
    return text


def _timeline_rows(incident: Incident) -> list[tuple[datetime, str]]:
    rows = [
        (incident.first_seen, "first detection"),
        (incident.last_seen, "last detection"),
    ]
    for change in incident.changes:
        note = f": {_md(change.note)}" if change.note else ""
        verb = "opened" if change.status is IncidentStatus.OPEN else change.status.value
        rows.append((change.at, f"{verb} by {_md(change.by)}{note}"))
    for decision in decisions_taken(incident):
        if decision.decided_at is not None:
            rows.append((decision.decided_at, "decision: " + _decision_text(decision)))
    # Stable sort: at equal times, detections come before the status change they caused.
    return sorted(rows, key=lambda row: row[0])


def _incident_markdown(incident: Incident) -> list[str]:
    version = f" (version {_md(incident.model_version)})" if incident.model_version else ""
    title = f"## Incident {incident.id}: {incident.kind.value} on model {_md(incident.model_id)}"
    if incident.source:
        title += f", source {_md(incident.source)}"
    sources = source_counts(incident.detections)
    lines = [
        title,
        "",
        f"**What:** {_WHAT[incident.kind]} against model {_md(incident.model_id)}{version}.",
        "",
        f"- Status: {incident.status.value}",
        f"- First seen: {_when(incident.first_seen)}",
        f"- Last seen: {_when(incident.last_seen)} "
        f"({_duration(incident.last_seen - incident.first_seen)} after the first)",
    ]
    if incident.resolved_at:
        lines.append(f"- Resolved: {_when(incident.resolved_at)}")
    if incident.detector_sha256:
        lines.append(f"- Detector: sha256 {_md(incident.detector_sha256)}")
    lines += [
        "",
        "### Impact",
        "",
        f"- Detections: {incident.detection_count} from {len(sources)} source(s)",
        f"- Score: {_score_line(incident)}",
    ]
    if sources:
        named = [(_md(source) if source else "(no source)", count) for source, count in sources]
        lines.append(f"- Sources: {sources_summary(named, most=10)}")
    lines += ["", "### Decisions taken", ""]
    decisions = decisions_taken(incident)
    if decisions:
        lines += [f"- {_when(d.decided_at)}: {_decision_text(d)}" for d in decisions]
    else:
        lines.append("None recorded.")
    lines += ["", "### Timeline", "", "| time | what |", "|---|---|"]
    lines += [f"| {_when(at)} | {what} |" for at, what in _timeline_rows(incident)]
    width = timeline_width(incident)
    lines += [
        "",
        f"### Detections over time (per {_duration(width)})",
        "",
        "| from | detections | peak score |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {_when(bucket.start)} | {bucket.count} | {bucket.peak_score:.4g} |"
        for bucket in detection_timeline(incident.detections, width)
    ]
    lines += [
        "",
        "### Sample events",
        "",
        "| event id | score | source | detected at |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {_md(sample.event_id)} | {sample.score:.4g} | {_md(sample.source or '—')} "
        f"| {_when(sample.detected_at)} |"
        for sample in sample_events(incident)
    ]
    return lines


def render_markdown(
    incidents: Sequence[Incident], *, filters: IncidentFilter, generated_at: datetime
) -> str:
    """A postmortem-ready summary of each incident, read in detail."""
    chosen = ", ".join(f"{name} {_md(value)}" for name, value in filter_dict(filters).items())
    lines = [
        "# advmon incident report",
        "",
        f"Generated {_when(generated_at)}; {len(incidents)} incident(s)"
        + (f" matching {chosen}." if chosen else "."),
    ]
    for incident in incidents:
        lines += ["", *_incident_markdown(incident)]
    return "\n".join(lines) + "\n"
