"""The incident tables (SQLAlchemy 2.0 typed ORM). Change them only through Alembic.

``incidents``
    One row per incident: kind, model, source, status, first/last seen, counts, scores,
    a bounded sample of event ids, the decisions taken, the detector's identity.
``incident_status_changes``
    Every status change of an incident: to which status, when, by whom, and why.
``detections``
    Every detection stored, unique by ``(kind, model_id, event_id)`` so that a replayed
    detection never adds a row or a count, while two models may share an event id.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "DetectionRow",
    "Incident",
    "IncidentKind",
    "IncidentStatus",
    "StatusChange",
]


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp, stored in UTC, read back aware on every database.

    SQLite has no timezone type; without this it would hand back naive datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC timestamp column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class IncidentKind(enum.StrEnum):
    """What an incident is about."""

    ADVERSARIAL = "adversarial"
    DRIFT = "drift"
    QUARANTINE = "quarantine"
    QUERY_ATTACK = "query_attack"


class IncidentStatus(enum.StrEnum):
    """Where an incident is in its life: open → acknowledged → resolved."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


Timestamp = Annotated[datetime, mapped_column(UTCDateTime())]
ModelId = Annotated[str, mapped_column(String(200))]
_kind = Enum(
    IncidentKind,
    name="incident_kind",
    native_enum=False,
    length=20,
    values_callable=lambda e: [m.value for m in e],
)
_status = Enum(
    IncidentStatus,
    name="incident_status",
    native_enum=False,
    length=20,
    values_callable=lambda e: [m.value for m in e],
)


class Base(DeclarativeBase):
    """Base of advmon's tables."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Incident(Base):
    """A group of detections of one model (and source, for per-source kinds)."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[IncidentKind] = mapped_column(_kind)
    model_id: Mapped[ModelId]
    model_version: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[IncidentStatus] = mapped_column(_status, default=IncidentStatus.OPEN)
    first_seen: Mapped[Timestamp]
    last_seen: Mapped[Timestamp]
    detection_count: Mapped[int] = mapped_column(Integer, default=0)
    peak_score: Mapped[float] = mapped_column(Float)
    score_sum: Mapped[float] = mapped_column(Float, default=0.0)
    threshold: Mapped[float] = mapped_column(Float)
    detector_sha256: Mapped[str | None] = mapped_column(String(64))
    sample_events: Mapped[list[Any]] = mapped_column(default=list)
    decisions: Mapped[list[Any]] = mapped_column(default=list)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    alert_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    alert_resolved_sent: Mapped[bool] = mapped_column(default=False)

    changes: Mapped[list[StatusChange]] = relationship(
        back_populates="incident", order_by="StatusChange.id", cascade="all, delete-orphan"
    )
    detections: Mapped[list[DetectionRow]] = relationship(
        back_populates="incident", order_by="DetectionRow.detected_at"
    )

    __table_args__ = (
        Index("ix_incidents_group", "kind", "model_id", "source", "status"),
        Index("ix_incidents_last_seen", "last_seen"),
    )

    @property
    def mean_score(self) -> float:
        """Mean score of the incident's detections."""
        return self.score_sum / self.detection_count if self.detection_count else 0.0


class StatusChange(Base):
    """One status change of an incident."""

    __tablename__ = "incident_status_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    status: Mapped[IncidentStatus] = mapped_column(_status)
    at: Mapped[Timestamp]
    by: Mapped[str] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)

    incident: Mapped[Incident] = relationship(back_populates="changes")


class DetectionRow(Base):
    """One stored detection; unique per kind, model and event."""

    __tablename__ = "detections"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[IncidentKind] = mapped_column(_kind)
    event_id: Mapped[str] = mapped_column(String(500))
    model_id: Mapped[ModelId]
    source: Mapped[str | None] = mapped_column(String(500))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    detected_at: Mapped[Timestamp]
    topic: Mapped[str | None] = mapped_column(String(249))
    partition: Mapped[int | None] = mapped_column(Integer)
    offset: Mapped[int | None] = mapped_column(BigInteger)
    signal: Mapped[str | None] = mapped_column(String(200))
    """For drift: the signal stream that changed."""
    detector: Mapped[str | None] = mapped_column(String(100))
    """For drift: the drift detector that signalled."""
    details: Mapped[dict[str, Any] | None] = mapped_column()
    """The detection's details: distances per squeezer, a drift's window statistics, or
    what linked a query attack's queries; with ``related_event_ids`` (the earlier events
    a query attack matched, newest first) and ``expires_at`` (when a source decision
    lapses, ISO 8601) when the detection carries them."""

    incident: Mapped[Incident] = relationship(back_populates="detections")

    __table_args__ = (UniqueConstraint("kind", "model_id", "event_id", name="uq_detection"),)
