"""Postmortem exports of incidents, in three formats.

``json``
    ``{"generated_at", "filters", "incidents": [...]}``, each incident in full detail.
``csv``
    One row per incident; list columns hold JSON. Text that a spreadsheet would run as a
    formula (``=``, ``+``, ``-``, ``@`` first) is prefixed with ``'``: sources and event
    ids come from the traffic being monitored, i.e. possibly from an attacker.
``markdown``
    A postmortem-ready summary per incident: what, when, impact, what linked the queries
    of a query attack, decisions, timeline, detections over time, sample events.

Each reads an incident through :mod:`monitor.incidents.views`, as ``advmon incidents
show`` and the HTTP API do.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from monitor.incidents.storage.incidents import IncidentFilter
from monitor.incidents.storage.models import Incident, IncidentKind, IncidentStatus
from monitor.incidents.views import (
    DecisionTaken,
    QueryAttack,
    decision_reason,
    decisions_taken,
    detection_timeline,
    duration_text,
    filter_dict,
    incident_dict,
    query_attacks,
    sample_events,
    score_summary,
    source_counts,
    source_decision,
    sources_summary,
    timeline_width,
    utc_time,
)

__all__ = [
    "EXPORT_FORMATS",
    "ExportFormat",
    "render_csv",
    "render_export",
    "render_json",
    "render_markdown",
]

ExportFormat = Literal["json", "csv", "markdown"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("json", "csv", "markdown")


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
        "generated_at": generated_at.astimezone(UTC).isoformat(),
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
    IncidentKind.QUERY_ATTACK: (
        "A black-box query attack: one source's queries linked by fingerprint matches"
    ),
}


def _md(value: object) -> str:
    """``value`` as markdown text: special characters escaped, on one line."""
    text = " ".join(str(value).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _when(moment: datetime | None) -> str:
    return f"{utc_time(moment)} UTC" if moment else "—"


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
    reason = decision_reason(decision)
    if reason is not None:
        text += f" after {reason}"
    return text


def _query_attack_paragraph(attack: QueryAttack) -> str:
    """What linked one query attack's queries, and what was decided, in a few sentences."""
    source = f"source {_md(attack.source)}" if attack.source else "a source without a name"
    when = (
        f"sent {_when(attack.query_at)}"
        if attack.query_at is not None
        else f"detected {_when(attack.detected_at)}"
    )
    text = (
        f"Query {_md(attack.event_id)} from {source}, {when}, was linked by chains of "
        f"fingerprint matches to {attack.linked_queries:g} of the source's held queries "
        f"(threshold {attack.min_linked:g})"
    )
    if attack.span is not None and attack.first_linked_at is not None:
        text += (
            f", the oldest sent {duration_text(attack.span)} before it "
            f"({_when(attack.first_linked_at)})"
        )
    text += "."
    matched = ", ".join(_md(event_id) for event_id in attack.related_event_ids)
    if attack.matched_directly is not None:
        held = (
            f" of the {attack.held_queries:g} queries held for the source"
            if attack.held_queries is not None
            else ""
        )
        text += f" It matched {attack.matched_directly:g}{held} directly"
        text += f", among them {matched} (newest first)." if matched else "."
    elif matched:
        text += f" It matched {matched} (newest first)."
    until = _when(attack.expires_at) if attack.expires_at is not None else None
    return text + f" Decision: {source_decision(attack.action, until)}."


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
        f"({duration_text(incident.last_seen - incident.first_seen)} after the first)",
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
    attacks = query_attacks(incident)
    if attacks:
        lines += ["", "### Query attack", ""]
        for number, attack in enumerate(attacks):
            lines += [*([""] if number else []), _query_attack_paragraph(attack)]
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
        f"### Detections over time (per {duration_text(width)})",
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
