"""The incident database for ``advmon db``, ``advmon incidents`` and ``advmon api``.

Each reads ``ADVMON_DATABASE__URL``. A bad URL, an unreachable server or a schema older
than this advmon ends the command with one line that names the server, never its password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from monitor.errors import DatabaseUrlError, SchemaBehindError
from monitor.incidents.storage.engine import incident_store, open_engine
from monitor.incidents.storage.incidents import IncidentStore
from monitor.incidents.storage.schema import ensure_current
from monitor.settings import Settings

__all__ = ["database_errors", "describe_database", "engine_for", "store_for"]


def _safe_url(settings: Settings) -> URL | None:
    if settings.database.url is None:
        return None
    try:
        return make_url(settings.database.url.get_secret_value())
    except ArgumentError:
        return None


def describe_database(url: URL | None) -> str:
    """Where the database is, for a message: host, port and name; never the password."""
    if url is None:
        return "the database in ADVMON_DATABASE__URL"
    if url.host:
        name = f" {url.database}" if url.database else ""
        port = f":{url.port}" if url.port else ""
        return f"the database{name} on {url.host}{port}"
    return f"the database {url.render_as_string(hide_password=True)}"


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
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
            f"cannot connect to {describe_database(url)}: {reason or type(exc.orig).__name__}; "
            "check ADVMON_DATABASE__URL and that the server is up"
        ) from None


@contextmanager
def engine_for(settings: Settings) -> Iterator[Engine]:
    """An engine on ``ADVMON_DATABASE__URL``, disposed of when the command is done."""
    engine = open_engine(settings.database)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def store_for(settings: Settings) -> Iterator[IncidentStore]:
    """The incident store, once the database is reachable and its schema current."""
    with database_errors(settings):
        store = incident_store(settings.database, settings.incidents)
        try:
            ensure_current(store.engine)
            yield store
        finally:
            store.engine.dispose()
