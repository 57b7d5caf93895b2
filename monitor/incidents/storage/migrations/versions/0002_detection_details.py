"""Detections keep their drift signal, drift detector and details.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("detections") as batch:
        batch.add_column(sa.Column("signal", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("detector", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("details", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("detections") as batch:
        batch.drop_column("details")
        batch.drop_column("detector")
        batch.drop_column("signal")
