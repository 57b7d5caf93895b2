"""Database engine and incident store built from advmon's settings."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import ArgumentError

from monitor.errors import DatabaseUrlError
from monitor.incidents.storage.incidents import GroupingPolicy, IncidentStore
from monitor.settings import DatabaseSettings, IncidentSettings

__all__ = ["grouping_policy", "incident_store", "open_engine"]


def open_engine(database: DatabaseSettings) -> Engine:
    """An engine for the configured database; connections are checked before use."""
    if database.url is None:
        raise DatabaseUrlError(
            "no incident database configured: set ADVMON_DATABASE__URL, e.g. "
            "postgresql+psycopg://advmon@db:5432/advmon"
        )
    url = database.url.get_secret_value()
    connect_args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, ImportError) as exc:
        raise DatabaseUrlError(
            f"ADVMON_DATABASE__URL is not a usable database URL ({exc}); "
            "e.g. postgresql+psycopg://advmon@db:5432/advmon"
        ) from None


def grouping_policy(incidents: IncidentSettings) -> GroupingPolicy:
    """The grouping policy the settings describe."""
    return GroupingPolicy(
        gap=timedelta(seconds=incidents.gap_seconds),
        quiet_period=timedelta(seconds=incidents.quiet_period_seconds),
        sample_size=incidents.sample_size,
    )


def incident_store(database: DatabaseSettings, incidents: IncidentSettings) -> IncidentStore:
    """The incident store for these settings."""
    return IncidentStore(open_engine(database), grouping_policy(incidents))
