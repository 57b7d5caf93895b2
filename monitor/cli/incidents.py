"""``advmon incidents``, ``advmon db`` and ``advmon api``: the incident history by hand.

Every command reads ``ADVMON_DATABASE__URL``. The incident commands and the API refuse
to run on a schema older than this advmon (``advmon db upgrade`` fixes that), and an
unreachable database is one line naming the server, never its password.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from alembic.util.exc import CommandError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from monitor.incidents.postmortem import (
    EXPORT_FORMATS,
    ExportFormat,
    detection_timeline,
    incident_dict,
    parse_time,
    render_export,
    source_counts,
    timeline_width,
)
from monitor.incidents.storage.engine import DatabaseUrlError, incident_store, open_engine
from monitor.incidents.storage.incidents import (
    IncidentFilter,
    IncidentNotFoundError,
    IncidentStore,
    InvalidTransitionError,
)
from monitor.incidents.storage.models import Incident, IncidentKind, IncidentStatus
from monitor.incidents.storage.schema import (
    SchemaBehindError,
    current_revision,
    ensure_current,
    head_revision,
    upgrade,
)
from monitor.settings import Settings

__all__ = ["api", "db", "incidents"]

#: Results go to stdout, so that ``--json`` output can be piped; notes go to stderr.
out = Console(highlight=False, soft_wrap=True)
notes = Console(stderr=True, highlight=False, soft_wrap=True)

_STATUS_STYLE = {
    IncidentStatus.OPEN: "bold red",
    IncidentStatus.ACKNOWLEDGED: "yellow",
    IncidentStatus.RESOLVED: "green",
}
_MAX_LIMIT = 1000
#: Tables written to a file or a pipe are not cut to 80 columns.
_PIPE_WIDTH = 250

F = TypeVar("F", bound=Callable[..., Any])


# --- the database -------------------------------------------------------------------


def _safe_url(settings: Settings) -> URL | None:
    if settings.database.url is None:
        return None
    try:
        return make_url(settings.database.url.get_secret_value())
    except ArgumentError:
        return None


def _where(url: URL | None) -> str:
    """Where the database is, for a message: host, port and name; never the password."""
    if url is None:
        return "the database in ADVMON_DATABASE__URL"
    if url.host:
        name = f" {url.database}" if url.database else ""
        port = f":{url.port}" if url.port else ""
        return f"the database{name} on {url.host}{port}"
    return f"the database {url.render_as_string(hide_password=True)}"


@contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    """Turn a bad URL, an unreachable server or an old schema into one clear line."""
    try:
        yield
    except (DatabaseUrlError, SchemaBehindError) as exc:
        raise click.ClickException(str(exc)) from None
    except OperationalError as exc:
        url = _safe_url(settings)
        reason = next((line.strip() for line in str(exc.orig).splitlines() if line.strip()), "")
        if url is not None and url.password:
            reason = reason.replace(str(url.password), "***")
        raise click.ClickException(
            f"cannot connect to {_where(url)}: {reason or type(exc.orig).__name__}; "
            "check ADVMON_DATABASE__URL and that the server is up"
        ) from None


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    engine = open_engine(settings.database)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _store(settings: Settings) -> Iterator[IncidentStore]:
    """The incident store, once the database is reachable and its schema current."""
    with _database_errors(settings):
        store = incident_store(settings.database, settings.incidents)
        try:
            ensure_current(store.engine)
            yield store
        finally:
            store.engine.dispose()


# --- ``advmon db`` ------------------------------------------------------------------


@click.group()
def db() -> None:
    """Create or upgrade the incident database's schema.

    The schema's migrations (Alembic) ship with advmon; the worker, the incident commands
    and the API refuse to run until `advmon db upgrade` has applied them.
    """


@db.command("upgrade")
@click.pass_obj
def db_upgrade(settings: Settings) -> None:
    """Apply advmon's migrations to ADVMON_DATABASE__URL (creates the tables on first run)."""
    with _database_errors(settings), _engine(settings) as engine:
        head = head_revision()
        before = current_revision(engine)
        where = _where(engine.url)
        if before == head:
            click.echo(f"{where} is already at revision {head} (the newest); nothing to do")
            return
        try:
            upgrade(engine)
        except CommandError as exc:
            raise click.ClickException(
                f"{where} is at revision {before}, which this advmon does not know "
                f"(its newest is {head}); was it upgraded by a newer advmon? ({exc})"
            ) from None
        after = current_revision(engine)
    click.echo(f"upgraded {where} from revision {before or '(empty)'} to {after}")


@db.command("current")
@click.pass_obj
def db_current(settings: Settings) -> None:
    """Print the schema revision of ADVMON_DATABASE__URL and whether it is the newest."""
    with _database_errors(settings), _engine(settings) as engine:
        current, head = current_revision(engine), head_revision()
    if current == head:
        click.echo(f"revision {current} (the newest)")
    elif current is None:
        click.echo(f"empty: no revision (this advmon needs {head}; run `advmon db upgrade`)")
    else:
        click.echo(f"revision {current} (this advmon needs {head}; run `advmon db upgrade`)")


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
            help="Only incidents of this source (quarantine incidents are per source).",
        ),
        _time_option(
            "--since",
            "Only incidents with a detection at or after TIME: ISO 8601 "
            "(2026-05-01T12:00Z; no offset means UTC) or a span before now (30m, 2h, 7d).",
        ),
        _time_option("--until", "Only incidents that began at or before TIME (as --since)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _filters(
    model_id: str | None,
    kind: str | None,
    status: str | None,
    source: str | None,
    since: datetime | None,
    until: datetime | None,
) -> IncidentFilter:
    if since is not None and until is not None and since > until:
        raise click.BadParameter(
            f"--since ({since.isoformat(timespec='seconds')}) is after "
            f"--until ({until.isoformat(timespec='seconds')})",
            param_hint="'--since'",
        )
    return IncidentFilter(
        model_id=model_id,
        kind=IncidentKind(kind) if kind else None,
        status=IncidentStatus(status) if status else None,
        source=source,
        since=since,
        until=until,
    )


def _print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def _add_row(table: Table, *cells: str | Text) -> None:
    """Add a row whose text is shown as is: ids and sources may come from an attacker, so
    they are never read as rich markup."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _print_table(table: Table) -> None:
    if out.is_terminal:
        out.print(table)
    else:
        Console(file=out.file, width=_PIPE_WIDTH, highlight=False).print(table)


def _when_iso(value: object) -> str:
    """An ISO time stored in JSON (samples, decisions), shown like the other times."""
    return _when(datetime.fromisoformat(value)) if isinstance(value, str) else "—"


def _status_text(status: IncidentStatus) -> Text:
    return Text(status.value, style=_STATUS_STYLE[status])


# --- ``advmon incidents`` -----------------------------------------------------------


@click.group()
def incidents() -> None:
    """List, show, acknowledge, resolve and export incidents."""


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
    model_id: str | None,
    kind: str | None,
    status: str | None,
    source: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List incidents, the most recently active first."""
    filters = _filters(model_id, kind, status, source, since, until)
    with _store(settings) as store:
        rows, total = store.find(filters, limit=limit, offset=offset)
    if as_json:
        items = [incident_dict(incident) for incident in rows]
        _print_json({"items": items, "total": total, "limit": limit, "offset": offset})
        return
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
    for incident in rows:
        _add_row(
            table,
            str(incident.id),
            incident.kind.value,
            incident.model_id,
            incident.source or "—",
            _status_text(incident.status),
            _when(incident.first_seen),
            _when(incident.last_seen),
            str(incident.detection_count),
            f"{incident.peak_score:.4g}",
        )
    if rows:
        _print_table(table)
    shown = f"{offset + 1}–{offset + len(rows)} of {total}" if rows else f"none of {total}"
    more = f"; --offset {offset + len(rows)} shows more" if offset + len(rows) < total else ""
    notes.print(f"{shown} matching incident(s){more}", markup=False)


def _get(store: IncidentStore, incident_id: int) -> Incident:
    try:
        return store.get(incident_id)
    except IncidentNotFoundError:
        raise click.ClickException(
            f"no incident {incident_id}; `advmon incidents list` shows the ids"
        ) from None


@incidents.command("show")
@click.argument("incident_id", metavar="ID", type=int)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the incident as JSON, with status changes, sources and detections per minute.",
)
@click.pass_obj
def show_incident(settings: Settings, incident_id: int, as_json: bool) -> None:
    """Show one incident and its history.

    What, when and how much; its status changes; detections over time; the decisions
    taken; sample events.
    """
    with _store(settings) as store:
        incident = _get(store, incident_id)
    if as_json:
        _print_json(incident_dict(incident, detail=True))
        return
    _print_incident(incident)


def _print_incident(incident: Incident) -> None:
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
    _add_row(summary, "first seen", _when(incident.first_seen) + " UTC")
    _add_row(summary, "last seen", _when(incident.last_seen) + " UTC")
    if incident.resolved_at:
        _add_row(summary, "resolved", _when(incident.resolved_at) + " UTC")
    _add_row(summary, "detections", str(incident.detection_count))
    _add_row(
        summary,
        "score",
        f"peak {incident.peak_score:.4g}, mean {incident.mean_score:.4g}, "
        f"threshold {incident.threshold:.4g}",
    )
    sources = source_counts(incident.detections)
    if any(source is not None for source, _ in sources):
        shown = ", ".join(f"{source or '(none)'} ({count})" for source, count in sources[:5])
        more = f", and {len(sources) - 5} more" if len(sources) > 5 else ""
        _add_row(summary, "sources", shown + more)
    if incident.detector_sha256:
        _add_row(summary, "detector", f"sha256 {incident.detector_sha256}")
    _print_table(summary)

    changes = Table(title="status changes", title_justify="left")
    for header in ("at (UTC)", "status", "by", "note"):
        changes.add_column(header)
    for change in incident.changes:
        _add_row(
            changes, _when(change.at), _status_text(change.status), change.by, change.note or ""
        )
    _print_table(changes)

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
        bar = "█" * max(1, round(20 * bucket.count / most))
        _add_row(
            timeline,
            _when(bucket.start),
            str(bucket.count),
            f"{bucket.peak_score:.4g}",
            Text(bar, "red"),
        )
    _print_table(timeline)

    if incident.decisions:
        decisions = Table(title="decisions taken", title_justify="left")
        for header in ("decided at (UTC)", "action", "scope", "source", "expires at (UTC)"):
            decisions.add_column(header)
        for decision in incident.decisions:
            _add_row(
                decisions,
                _when_iso(decision.get("decided_at")),
                *(str(decision.get(key) or "—") for key in ("action", "scope", "source")),
                _when_iso(decision.get("expires_at")),
            )
        _print_table(decisions)

    drifts = [d for d in incident.detections if d.signal is not None]
    if drifts:
        changes = Table(title="drift: what changed", title_justify="left")
        for header in ("signal", "detector", "mean before", "recent mean", "at event", "after"):
            changes.add_column(
                header, justify="left" if header in ("signal", "detector") else "right"
            )
        for drift in drifts[:20]:
            details = drift.details or {}
            _add_row(
                changes,
                drift.signal or "—",
                drift.detector or "—",
                f"{details.get('mean_before', float('nan')):.4g}",
                f"{details.get('mean_recent', float('nan')):.4g}",
                drift.event_id.removeprefix(f"drift:{drift.signal}:"),
                f"{int(details.get('events_seen', 0)):,} events",
            )
        _print_table(changes)

    samples = Table(title="sample events", title_justify="left")
    for header in ("event id", "score", "source", "detected at (UTC)"):
        samples.add_column(header, justify="right" if header == "score" else "left")
    for sample in incident.sample_events:
        _add_row(
            samples,
            str(sample.get("event_id")),
            f"{float(sample.get('score', 0.0)):.4g}",
            str(sample.get("source") or "—"),
            _when_iso(sample.get("detected_at")),
        )
    _print_table(samples)


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
    with _store(settings) as store:
        try:
            incident = store.set_status(incident_id, status, who, note)
        except IncidentNotFoundError:
            raise click.ClickException(
                f"no incident {incident_id}; `advmon incidents list` shows the ids"
            ) from None
        except InvalidTransitionError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"incident {incident.id} {incident.status.value} by {who}")


_note_option = click.option(
    "--note", required=True, help="Why: what was done, or what was found (kept in the history)."
)
_by_option = click.option(
    "--by", metavar="NAME", default=None, help="Who did it.  [default: your OS user name]"
)


@incidents.command("ack")
@click.argument("incident_id", metavar="ID", type=int)
@_note_option
@_by_option
@click.pass_obj
def ack_incident(settings: Settings, incident_id: int, note: str, by: str | None) -> None:
    """Acknowledge an open incident: someone is on it."""
    _set_status(settings, incident_id, IncidentStatus.ACKNOWLEDGED, by, note)


@incidents.command("resolve")
@click.argument("incident_id", metavar="ID", type=int)
@_note_option
@_by_option
@click.pass_obj
def resolve_incident(settings: Settings, incident_id: int, note: str, by: str | None) -> None:
    """Resolve an open or acknowledged incident."""
    _set_status(settings, incident_id, IncidentStatus.RESOLVED, by, note)


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
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout.",
)
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
    model_id: str | None,
    kind: str | None,
    status: str | None,
    source: str | None,
    since: datetime | None,
    until: datetime | None,
    export_format: ExportFormat,
    out_path: Path | None,
    limit: int,
    offset: int,
) -> None:
    """Export incidents for a postmortem: markdown, json or csv.

    The most recently active incidents come first; the filters are those of `list`.
    """
    filters = _filters(model_id, kind, status, source, since, until)
    with _store(settings) as store:
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
        notes.print(f"exported {len(rows)} incident(s) to {out_path}", markup=False)
    if offset + len(rows) < total:
        notes.print(
            f"[yellow]{total} incidents match; exported {len(rows)} "
            f"(--offset {offset} --limit {limit}): narrow the filters or page with --offset[/]"
        )


# --- ``advmon api`` -----------------------------------------------------------------


@click.command("api")
@click.option("--host", default=None, help="Address to listen on.  [default: ADVMON_API__HOST]")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on.  [default: ADVMON_API__PORT]",
)
@click.pass_obj
def api(settings: Settings, host: str | None, port: int | None) -> None:
    """Serve the incident history as JSON over HTTP (read only).

    GET /api/incidents (filters as query parameters: model, kind, status, source, since,
    until, limit, offset), /api/incidents/ID, /api/incidents/ID/detections, /healthz.
    When ADVMON_API__TOKEN is set, /api requests need `Authorization: Bearer TOKEN`.
    """
    from aiohttp import web

    from monitor.incidents.api import create_api

    host = host or settings.api.host
    port = port or settings.api.port
    token = settings.api.token.get_secret_value() if settings.api.token else None
    with _store(settings) as store:
        app = create_api(store, token)
        if token is None and host not in ("127.0.0.1", "localhost", "::1"):
            notes.print(
                f"[yellow]warning: no ADVMON_API__TOKEN: anyone who reaches {escape(host)}:{port} "
                "can read the incident history[/]"
            )
        serving = (
            f"serving the incident API on http://{host}:{port}/api/incidents "
            f"({'bearer token required' if token else 'no token'}); Ctrl-C stops it"
        )
        try:
            # run_app "prints" once it listens: say so then, in our words.
            web.run_app(
                app,
                host=host,
                port=port,
                print=lambda _started: notes.print(serving, markup=False),
            )
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
