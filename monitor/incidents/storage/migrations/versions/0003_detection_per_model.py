"""Detections are unique per kind, model and event: two models may share an event id.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 20:40:00.000000

Existing rows are kept: every set of rows unique per ``(kind, event_id)`` is also unique
per ``(kind, model_id, event_id)``. The downgrade refuses, changing nothing, while two
models' detections share a kind and an event id (the old constraint cannot hold them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("detections") as batch:
        batch.drop_constraint("uq_detection", type_="unique")
        batch.create_unique_constraint("uq_detection", ["kind", "model_id", "event_id"])


def downgrade() -> None:
    detections = sa.table(
        "detections", sa.column("kind"), sa.column("event_id"), sa.column("model_id")
    )
    shared = (
        sa.select(detections.c.kind, detections.c.event_id)
        .group_by(detections.c.kind, detections.c.event_id)
        .having(sa.func.count() > 1)
        .subquery()
    )
    colliding = op.get_bind().scalar(sa.select(sa.func.count()).select_from(shared))
    if colliding:
        raise RuntimeError(
            f"cannot downgrade below revision 0003: {colliding} event id(s) have detections "
            "of more than one model (same kind), which revision 0002 cannot hold; delete "
            "those detections first, or stay at revision 0003"
        )
    with op.batch_alter_table("detections") as batch:
        batch.drop_constraint("uq_detection", type_="unique")
        batch.create_unique_constraint("uq_detection", ["kind", "event_id"])
