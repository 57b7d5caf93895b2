"""Incidents, their status changes, and detections.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 22:59:14.667372
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.incidents.storage.models

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "adversarial",
                "drift",
                "quarantine",
                name="incident_kind",
                native_enum=False,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=500), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "open",
                "acknowledged",
                "resolved",
                name="incident_status",
                native_enum=False,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column(
            "first_seen",
            monitor.incidents.storage.models.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column(
            "last_seen", monitor.incidents.storage.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("detection_count", sa.Integer(), nullable=False),
        sa.Column("peak_score", sa.Float(), nullable=False),
        sa.Column("score_sum", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("detector_sha256", sa.String(length=64), nullable=True),
        sa.Column("sample_events", sa.JSON(), nullable=False),
        sa.Column("decisions", sa.JSON(), nullable=False),
        sa.Column(
            "resolved_at",
            monitor.incidents.storage.models.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.Column(
            "alert_sent_at",
            monitor.incidents.storage.models.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.Column("alert_resolved_sent", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.create_index(
            "ix_incidents_group", ["kind", "model_id", "source", "status"], unique=False
        )
        batch_op.create_index("ix_incidents_last_seen", ["last_seen"], unique=False)

    op.create_table(
        "detections",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "adversarial",
                "drift",
                "quarantine",
                name="incident_kind",
                native_enum=False,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=500), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=500), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column(
            "detected_at",
            monitor.incidents.storage.models.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column("topic", sa.String(length=249), nullable=True),
        sa.Column("partition", sa.Integer(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "event_id", name="uq_detection"),
    )
    with op.batch_alter_table("detections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_detections_incident_id"), ["incident_id"], unique=False
        )

    op.create_table(
        "incident_status_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "open",
                "acknowledged",
                "resolved",
                name="incident_status",
                native_enum=False,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column(
            "at", monitor.incidents.storage.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("by", sa.String(length=200), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("incident_status_changes")
    with op.batch_alter_table("detections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_detections_incident_id"))

    op.drop_table("detections")
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_index("ix_incidents_last_seen")
        batch_op.drop_index("ix_incidents_group")

    op.drop_table("incidents")
