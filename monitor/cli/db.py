"""``advmon db``: create or upgrade the incident database's schema."""

from __future__ import annotations

import click
from alembic.util.exc import CommandError

from monitor.cli._database import database_errors, describe_database, engine_for
from monitor.incidents.storage.schema import current_revision, head_revision, upgrade
from monitor.settings import Settings

__all__ = ["db"]


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
    with database_errors(settings), engine_for(settings) as engine:
        head = head_revision()
        before = current_revision(engine)
        where = describe_database(engine.url)
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
    with database_errors(settings), engine_for(settings) as engine:
        current, head = current_revision(engine), head_revision()
    if current == head:
        click.echo(f"revision {current} (the newest)")
    elif current is None:
        click.echo(f"empty: no revision (this advmon needs {head}; run `advmon db upgrade`)")
    else:
        click.echo(f"revision {current} (this advmon needs {head}; run `advmon db upgrade`)")
