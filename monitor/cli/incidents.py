"""``advmon incidents``: list, show, acknowledge, resolve and export incidents.

Every command reads ``ADVMON_DATABASE__URL`` and refuses to run on a schema older than
this advmon (``advmon db upgrade`` fixes that). Results go to stdout, so that ``--json``
and exports can be piped; notes go to stderr.
"""

from __future__ import annotations

import functools
import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from monitor.cli._console import console, file_option, print_table
from monitor.cli._database import store_for
from monitor.cli._incident_tables import incident_history, incident_list
from monitor.errors import IncidentNotFoundError, InvalidTransitionError
from monitor.incidents.exports import (
    EXPORT_FORMATS,
    ExportFormat,
    render_export,
)
from monitor.incidents.storage.incidents import IncidentFilter, IncidentStore
from monitor.incidents.storage.models import Incident, IncidentKind, IncidentStatus
from monitor.incidents.views import (
    incident_dict,
    parse_time,
)
from monitor.settings import Settings

__all__ = ["incidents"]

_MAX_LIMIT = 1000

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def incidents() -> None:
    """List, show, acknowledge, resolve and export incidents."""


# --- filters ------------------------------------------------------------------------


def _time_option(name: str, help_text: str) -> Callable[[F], F]:
    def parse(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
        if value is None:
            return None
        try:
            return parse_time(value, datetime.now(UTC))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option(name, callback=parse, metavar="TIME", help=help_text)


def _filter_options(command: F) -> F:
    """The filter options, given to ``command`` as one ``filters`` argument."""
    options = [
        click.option("--model", "model_id", metavar="MODEL_ID", help="Only this model."),
        click.option(
            "--kind", type=click.Choice([k.value for k in IncidentKind]), help="Only this kind."
        ),
        click.option(
            "--status",
            type=click.Choice([s.value for s in IncidentStatus]),
            help="Only incidents in this status.",
        ),
        click.option(
            "--source",
            metavar="SOURCE",
            help=(
                "Only incidents of this source (quarantine and query-attack incidents are "
                "per source)."
            ),
        ),
        _time_option(
            "--since",
            "Only incidents with a detection at or after TIME: ISO 8601 "
            "(2026-05-01T12:00Z; no offset means UTC) or a span before now (30m, 2h, 7d).",
        ),
        _time_option("--until", "Only incidents that began at or before TIME (as --since)."),
    ]

    @functools.wraps(command)
    def with_filters(
        *args: Any,
        model_id: str | None,
        kind: str | None,
        status: str | None,
        source: str | None,
        since: datetime | None,
        until: datetime | None,
        **kwargs: Any,
    ) -> Any:
        if since is not None and until is not None and since > until:
            raise click.BadParameter(
                f"--since ({since.isoformat(timespec='seconds')}) is after "
                f"--until ({until.isoformat(timespec='seconds')})",
                param_hint="'--since'",
            )
        filters = IncidentFilter(
            model_id=model_id,
            kind=IncidentKind(kind) if kind else None,
            status=IncidentStatus(status) if status else None,
            source=source,
            since=since,
            until=until,
        )
        return command(*args, filters=filters, **kwargs)

    wrapped: Any = with_filters
    for option in reversed(options):
        wrapped = option(wrapped)
    return cast(F, wrapped)


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


# --- list and show ------------------------------------------------------------------


@incidents.command("list")
@_filter_options
@click.option(
    "--limit",
    type=click.IntRange(1, _MAX_LIMIT),
    default=50,
    show_default=True,
    help="At most this many incidents, newest first.",
)
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Skip this many."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {items, total, limit, offset}.")
@click.pass_obj
def list_incidents(
    settings: Settings,
    filters: IncidentFilter,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List incidents, the most recently active first."""
    with store_for(settings) as store:
        rows, total = store.find(filters, limit=limit, offset=offset)
    if as_json:
        items = [incident_dict(incident) for incident in rows]
        _print_json({"items": items, "total": total, "limit": limit, "offset": offset})
        return
    if rows:
        print_table(incident_list(rows))
    shown = f"{offset + 1}–{offset + len(rows)} of {total}" if rows else f"none of {total}"
    more = f"; --offset {offset + len(rows)} shows more" if offset + len(rows) < total else ""
    console.print(f"{shown} matching incident(s){more}", markup=False)


def _no_incident(incident_id: int) -> click.ClickException:
    return click.ClickException(f"no incident {incident_id}; `advmon incidents list` shows the ids")


def _get(store: IncidentStore, incident_id: int) -> Incident:
    try:
        return store.get(incident_id)
    except IncidentNotFoundError:
        raise _no_incident(incident_id) from None


@incidents.command("show")
@click.argument("incident_id", metavar="ID", type=int)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help=(
        "Print the incident as JSON, with status changes, sources, detections per minute "
        "and what linked a query attack's queries."
    ),
)
@click.pass_obj
def show_incident(settings: Settings, incident_id: int, as_json: bool) -> None:
    """Show one incident and its history.

    What, when and how much; for a query attack, which source, how many of its queries
    were linked and over what time, the events matched and the decision; its status
    changes; detections over time; the decisions taken; sample events.
    """
    with store_for(settings) as store:
        incident = _get(store, incident_id)
    if as_json:
        _print_json(incident_dict(incident, detail=True))
        return
    for table in incident_history(incident):
        print_table(table)


# --- ack and resolve ----------------------------------------------------------------


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise click.UsageError("cannot tell who you are from the OS: give --by NAME") from None


def _set_status(
    settings: Settings, incident_id: int, status: IncidentStatus, by: str | None, note: str
) -> None:
    who = _who(by)
    with store_for(settings) as store:
        try:
            incident = store.set_status(incident_id, status, who, note)
        except IncidentNotFoundError:
            raise _no_incident(incident_id) from None
        except InvalidTransitionError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"incident {incident.id} {incident.status.value} by {who}")


_note_option = click.option(
    "--note", required=True, help="Why: what was done, or what was found (kept in the history)."
)
_by_option = click.option(
    "--by", metavar="NAME", default=None, help="Who did it.  [default: your OS user name]"
)


def _status_command(name: str, status: IncidentStatus, summary: str) -> None:
    """Add ``advmon incidents NAME ID --note … [--by …]``, which sets ``status``."""

    @incidents.command(name, help=summary)
    @click.argument("incident_id", metavar="ID", type=int)
    @_note_option
    @_by_option
    @click.pass_obj
    def set_status(settings: Settings, incident_id: int, note: str, by: str | None) -> None:
        _set_status(settings, incident_id, status, by, note)


_status_command(
    "ack", IncidentStatus.ACKNOWLEDGED, "Acknowledge an open incident: someone is on it."
)
_status_command("resolve", IncidentStatus.RESOLVED, "Resolve an open or acknowledged incident.")


# --- export -------------------------------------------------------------------------


@incidents.command("export")
@_filter_options
@click.option(
    "--format",
    "export_format",
    type=click.Choice(EXPORT_FORMATS),
    default="markdown",
    show_default=True,
    help="markdown: a postmortem-ready summary per incident; json: every detail; "
    "csv: one row per incident.",
)
@file_option("--out", "out_path", "Write to this file instead of stdout.")
@click.option(
    "--limit",
    type=click.IntRange(1, _MAX_LIMIT),
    default=_MAX_LIMIT,
    show_default=True,
    help="At most this many incidents, newest first.",
)
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Skip this many."
)
@click.pass_obj
def export_incidents(
    settings: Settings,
    filters: IncidentFilter,
    export_format: ExportFormat,
    out_path: Path | None,
    limit: int,
    offset: int,
) -> None:
    """Export incidents for a postmortem: markdown, json or csv.

    The most recently active incidents come first; the filters are those of `list`.
    """
    with store_for(settings) as store:
        rows, total = store.find(filters, limit=limit, offset=offset)
        if export_format != "csv":
            # In detail: status changes and detections.
            rows = [store.get(incident.id) for incident in rows]
    text = render_export(rows, export_format, filters=filters, generated_at=datetime.now(UTC))
    if out_path is None:
        click.echo(text, nl=False)
    else:
        try:
            with out_path.open("w", encoding="utf-8", newline="") as file:
                file.write(text)
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {out_path}") from None
        console.print(f"exported {len(rows)} incident(s) to {out_path}", markup=False)
    if offset + len(rows) < total:
        console.print(
            f"[yellow]{total} incidents match; exported {len(rows)} "
            f"(--offset {offset} --limit {limit}): narrow the filters or page with --offset[/]"
        )
