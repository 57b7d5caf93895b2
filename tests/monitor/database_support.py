"""A fresh PostgreSQL schema per test (or module) inside the session's database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, text

from schemas import Detection


@contextmanager
def fresh_schema(pg_url: str) -> Iterator[str]:
    """Create an empty schema, yield its name, drop it afterwards.

    Connections choose it with ``options=-csearch_path=SCHEMA`` (libpq's ``PGOPTIONS``
    for the CLI), so tests sharing the session database never see each other's rows.
    """
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
        yield name
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    finally:
        admin.dispose()


def detection(event_id: str, at: datetime, **fields: Any) -> Detection:
    """An adversarial detection of model ``digits`` from source ``key-a``, unless overridden."""
    values: dict[str, Any] = {
        "model_id": "digits",
        "source": "key-a",
        "kind": "adversarial",
        "score": 0.5,
        "threshold": 0.25,
    }
    values.update(fields)
    return Detection(event_id=event_id, detected_at=at, **values)
