r"""Rich tables of incidents for ``advmon incidents``: the list, and one incident's history.

What an incident shows comes from :mod:`monitor.incidents.views`, as for the markdown
export; this module only lays it out. Ids, sources and notes come from the traffic or from
people, so no cell is ever read as rich markup, and control characters in them (line
breaks, terminal escape sequences, direction overrides) are shown escaped (``\x1b``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from monitor.incidents.storage.models import Incident, IncidentStatus
from monitor.incidents.views import (
    DriftChange,
    QueryAttack,
    decision_reason,
    decisions_taken,
    detection_timeline,
    drift_changes,
    duration_text,
    query_attacks,
    sample_events,
    score_summary,
    source_counts,
    source_decision,
    sources_summary,
    timeline_width,
    utc_time,
)

__all__ = ["incident_history", "incident_list"]

_STATUS_STYLE = {
    IncidentStatus.OPEN: "bold red",
    IncidentStatus.ACKNOWLEDGED: "yellow",
    IncidentStatus.RESOLVED: "green",
}
#: The detections-over-time bar of the busiest bucket.
_BAR_WIDTH = 20
#: Characters a terminal would act on rather than show: C0 and C1 controls, DEL, and the
#: marks and overrides that reorder text on screen.
_UNSHOWN = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(text: str) -> str:
    r"""``text`` with the characters a terminal would act on written as escapes.

    >>> print(_visible("key\x1b[2J\nnext"))
    key\x1b[2J\nnext
    """
    return _UNSHOWN.sub(lambda match: ascii(match.group())[1:-1], text)


def _add_row(table: Table, *cells: str | Text) -> None:
    """Add a row whose text is shown as is, never read as markup."""
    table.add_row(*(Text(_visible(cell)) if isinstance(cell, str) else cell for cell in cells))


def _status_text(status: IncidentStatus) -> Text:
    return Text(status.value, style=_STATUS_STYLE[status])


def incident_list(incidents: Sequence[Incident]) -> Table:
    """One row per incident: what, where, its status, when and how much."""
    table = Table(title="incidents", title_justify="left")
    for header in (
        "id",
        "kind",
        "model",
        "source",
        "status",
        "first seen (UTC)",
        "last seen (UTC)",
    ):
        table.add_column(header, no_wrap=True)
    table.add_column("detections", justify="right")
    table.add_column("peak score", justify="right")
    for incident in incidents:
        _add_row(
            table,
            str(incident.id),
            incident.kind.value,
            incident.model_id,
            incident.source or "—",
            _status_text(incident.status),
            utc_time(incident.first_seen),
            utc_time(incident.last_seen),
            str(incident.detection_count),
            f"{incident.peak_score:.4g}",
        )
    return table


def incident_history(incident: Incident) -> list[Table]:
    """An incident read in detail: a summary, what linked a query attack's queries, its
    status changes, detections over time, the decisions taken, what drifted, and sample
    events."""
    tables = [_summary(incident)]
    attacks = query_attacks(incident)
    for attack in attacks:
        tables.append(_query_attack(attack))
    if attacks and incident.detection_count > len(attacks):
        tables[-1].caption = (
            f"the newest {len(attacks)} of {incident.detection_count} query-attack detections; "
            "the API lists them all"
        )
    tables += [_status_changes(incident), _detections_over_time(incident)]
    if incident.decisions:
        tables.append(_decisions(incident))
    drifts = drift_changes(incident)
    if drifts:
        tables.append(_what_drifted(drifts))
    tables.append(_sample_events(incident))
    return tables


def _summary(incident: Incident) -> Table:
    summary = Table(
        show_header=False, box=None, title=f"incident {incident.id}", title_justify="left"
    )
    summary.add_column(style="bold")
    summary.add_column()
    version = f" (version {incident.model_version})" if incident.model_version else ""
    _add_row(summary, "kind", incident.kind.value)
    _add_row(summary, "model", incident.model_id + version)
    if incident.source:
        _add_row(summary, "source", incident.source)
    _add_row(summary, "status", _status_text(incident.status))
    _add_row(summary, "first seen", utc_time(incident.first_seen) + " UTC")
    _add_row(summary, "last seen", utc_time(incident.last_seen) + " UTC")
    if incident.resolved_at:
        _add_row(summary, "resolved", utc_time(incident.resolved_at) + " UTC")
    _add_row(summary, "detections", str(incident.detection_count))
    _add_row(summary, "score", score_summary(incident))
    sources = source_counts(incident.detections)
    if any(source is not None for source, _ in sources):
        named = [(source or "(none)", count) for source, count in sources]
        _add_row(summary, "sources", sources_summary(named, most=5))
    if incident.detector_sha256:
        _add_row(summary, "detector", f"sha256 {incident.detector_sha256}")
    return summary


def _query_attack(attack: QueryAttack) -> Table:
    """What linked the queries of one query-attack detection, and the decision taken."""
    table = Table(
        show_header=False,
        box=None,
        title=f"query attack detected {utc_time(attack.detected_at)} UTC",
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column()
    _add_row(table, "source", attack.source or "—")
    _add_row(table, "triggering query", attack.event_id)
    _add_row(
        table,
        "linked queries",
        f"{attack.linked_queries:g} of the source's held queries, by chains of fingerprint "
        f"matches (threshold {attack.min_linked:g})",
    )
    if attack.matched_directly is not None:
        held = (
            f" of the {attack.held_queries:g} queries held for the source"
            if attack.held_queries is not None
            else ""
        )
        _add_row(table, "matched directly", f"{attack.matched_directly:g}{held}")
    if attack.span is not None and attack.first_linked_at is not None:
        until = (
            f" → triggering query {utc_time(attack.query_at)}"
            if attack.query_at is not None
            else ""
        )
        _add_row(
            table,
            "over",
            f"{duration_text(attack.span)}: oldest linked query "
            f"{utc_time(attack.first_linked_at)}{until} (UTC)",
        )
    _add_row(table, "matched events", ", ".join(attack.related_event_ids) or "—")
    lapses = f"{utc_time(attack.expires_at)} UTC" if attack.expires_at is not None else None
    _add_row(table, "decision", source_decision(attack.action, lapses))
    return table


def _status_changes(incident: Incident) -> Table:
    changes = Table(title="status changes", title_justify="left")
    for header in ("at (UTC)", "status", "by", "note"):
        changes.add_column(header)
    for change in incident.changes:
        _add_row(
            changes,
            utc_time(change.at),
            _status_text(change.status),
            change.by,
            change.note or "",
        )
    return changes


def _detections_over_time(incident: Incident) -> Table:
    width = timeline_width(incident)
    buckets = detection_timeline(incident.detections, width)
    minutes = width.total_seconds() / 60
    timeline = Table(
        title=f"detections over time ({minutes:g}-minute buckets)", title_justify="left"
    )
    timeline.add_column("from (UTC)", no_wrap=True)
    timeline.add_column("detections", justify="right")
    timeline.add_column("peak score", justify="right")
    timeline.add_column("")
    most = max((bucket.count for bucket in buckets), default=1)
    for bucket in buckets:
        bar = "█" * max(1, round(_BAR_WIDTH * bucket.count / most))
        _add_row(
            timeline,
            utc_time(bucket.start),
            str(bucket.count),
            f"{bucket.peak_score:.4g}",
            Text(bar, "red"),
        )
    return timeline


def _decisions(incident: Incident) -> Table:
    decisions = Table(title="decisions taken", title_justify="left")
    for header in ("decided at (UTC)", "action", "scope", "source", "expires at (UTC)", "after"):
        decisions.add_column(header)
    for decision in decisions_taken(incident):
        _add_row(
            decisions,
            utc_time(decision.decided_at),
            decision.action or "—",
            decision.scope or "—",
            decision.source or "—",
            utc_time(decision.expires_at),
            decision_reason(decision) or "—",
        )
    return decisions


def _what_drifted(drifts: Sequence[DriftChange]) -> Table:
    changes = Table(title="drift: what changed", title_justify="left")
    for header in ("signal", "detector", "mean before", "recent mean", "at event", "after"):
        changes.add_column(header, justify="left" if header in ("signal", "detector") else "right")
    for drift in drifts:
        _add_row(
            changes,
            drift.signal or "—",
            drift.detector or "—",
            f"{drift.mean_before:.4g}",
            f"{drift.mean_recent:.4g}",
            drift.at_event,
            f"{drift.events_seen:,} events",
        )
    return changes


def _sample_events(incident: Incident) -> Table:
    samples = Table(title="sample events", title_justify="left")
    for header in ("event id", "score", "source", "detected at (UTC)"):
        samples.add_column(header, justify="right" if header == "score" else "left")
    for sample in sample_events(incident):
        _add_row(
            samples,
            sample.event_id,
            f"{sample.score:.4g}",
            sample.source or "—",
            utc_time(sample.detected_at),
        )
    return samples
