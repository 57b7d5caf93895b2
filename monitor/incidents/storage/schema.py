"""The database schema's version: apply advmon's Alembic migrations, check they are applied."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from monitor.errors import SchemaBehindError

__all__ = ["alembic_config", "current_revision", "ensure_current", "head_revision", "upgrade"]


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config for the migrations shipped in the package."""
    config = Config()
    config.set_main_option(
        "script_location", str(files("monitor.incidents.storage") / "migrations")
    )
    if engine is not None:
        # ConfigParser interpolates "%": a percent-encoded password must be escaped.
        url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
        config.set_main_option("sqlalchemy.url", url)
    return config


def head_revision() -> str:
    """The newest migration shipped with this advmon."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def ensure_current(engine: Engine) -> None:
    """Raise :class:`SchemaBehindError` unless the database is at the newest migration."""
    current, head = current_revision(engine), head_revision()
    if current is not None and current != head:
        known = ScriptDirectory.from_config(alembic_config()).get_revision(current)
        if known is None:
            raise SchemaBehindError(
                f"the database {engine.url.render_as_string(hide_password=True)} is at "
                f"revision {current}, which this advmon does not know (a newer advmon "
                f"migrated it); upgrade advmon"
            )
    if current != head:
        where = "empty" if current is None else f"at revision {current}"
        raise SchemaBehindError(
            f"the database {engine.url.render_as_string(hide_password=True)} is {where}, "
            f"this advmon needs revision {head}: run `advmon db upgrade`"
        )
