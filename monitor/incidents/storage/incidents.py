"""Group detections into incidents in the database, idempotently, and query them.

Every write is keyed: a detection is stored once per ``(kind, model_id, event_id)``, so
a replayed batch changes no count and adds no row. Grouping: a detection joins the newest
unresolved incident of the same kind and model (and source, for the per-source kinds:
quarantine and query attack) whose last detection is at most ``gap`` earlier; otherwise it
opens a new incident. A source decision (a quarantine, or the decision on a query attack)
is also recorded among the decisions of every unresolved incident of the model.

A detection's ``details`` are stored in its row's ``details`` JSON, together with its
``related_event_ids`` (the earlier queries a query attack matched) and ``expires_at`` (when
a source decision lapses) when it carries them, under those two names, which no numeric
detail uses.

A detection with a value the database cannot hold (text with a NUL character, text
longer than its column, an integer outside its column's range) is refused before any
write, with the reason (:func:`unstorable`), and the rest of the batch is stored: the
strings come from clients, and one of them must not keep every other detection out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Engine, Integer, Select, String, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from monitor.errors import IncidentNotFoundError, InvalidTransitionError
from monitor.incidents.storage.models import (
    DetectionRow,
    Incident,
    IncidentKind,
    IncidentStatus,
    StatusChange,
)
from schemas import Detection, DetectionKind

__all__ = [
    "EXPIRES_AT_KEY",
    "RELATED_EVENT_IDS_KEY",
    "SYSTEM_ACTOR",
    "GroupingPolicy",
    "IncidentFilter",
    "IncidentStore",
    "RecordResult",
    "RefusedDetection",
    "unstorable",
]

SYSTEM_ACTOR = "advmon"
RELATED_EVENT_IDS_KEY = "related_event_ids"
"""Key of a stored detection's ``details`` that holds its ``related_event_ids`` (a list)."""
EXPIRES_AT_KEY = "expires_at"
"""Key of a stored detection's ``details`` that holds its ``expires_at`` (ISO 8601)."""
#: Kinds whose incidents are per source: each is about what one source did.
_PER_SOURCE = {IncidentKind.QUARANTINE, IncidentKind.QUERY_ATTACK}
#: Kinds whose detections carry a decision on their source.
_SOURCE_DECISIONS = {IncidentKind.QUARANTINE, IncidentKind.QUERY_ATTACK}


@dataclass(frozen=True)
class GroupingPolicy:
    """How detections group into incidents, and when quiet incidents resolve themselves."""

    gap: timedelta = timedelta(minutes=10)
    quiet_period: timedelta = timedelta(minutes=30)
    sample_size: int = 20


@dataclass(frozen=True)
class RefusedDetection:
    """A detection the store refused to write, and why."""

    position: int
    """Its position in the batch given to :meth:`IncidentStore.record`."""
    reason: str
    """``nul_character``, ``too_long`` or ``out_of_range`` (the incident stage adds
    ``malformed`` and ``database``: not a detection, refused by the database)."""
    problem: str
    """What was wrong, in words."""


@dataclass(frozen=True)
class RecordResult:
    """What storing a batch of detections did."""

    stored: int
    duplicates: int
    opened: list[int]
    touched: list[int]
    refused: list[RefusedDetection] = field(default_factory=list)
    """Detections not stored because the database cannot hold one of their values."""


# Where each stored field of a detection goes; the columns bound what is accepted.
_STORED_FIELDS: dict[str, ColumnElement[Any]] = {
    **{
        name: DetectionRow.__table__.c[name]
        for name in ("event_id", "model_id", "source", "topic", "signal", "detector")
    },
    "partition": DetectionRow.__table__.c.partition,
    "offset": DetectionRow.__table__.c.offset,
    "model_version": Incident.__table__.c.model_version,
}


def unstorable(detection: Detection) -> tuple[str, str] | None:
    """Why the database cannot hold ``detection`` (reason, problem), or ``None`` if it can.

    Only the values stored in bounded columns are checked: ``related_event_ids`` are kept
    in JSON, which holds any text, so one odd earlier event never keeps a query attack out.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> ok = Detection(event_id="e1", model_id="m", kind="adversarial", score=1.0,
    ...                threshold=0.5, detected_at=datetime(2026, 1, 1, tzinfo=UTC))
    >>> unstorable(ok) is None
    True
    >>> unstorable(ok.model_copy(update={"event_id": "e" * 501}))
    ('too_long', 'event_id is 501 characters long; the database keeps at most 500')
    >>> unstorable(ok.model_copy(update={"source": "a\\x00b"}))
    ('nul_character', 'source contains a NUL character, which the database cannot store')
    """
    for name, column in _STORED_FIELDS.items():
        value = getattr(detection, name)
        if value is None:
            continue
        if isinstance(column.type, String):
            if "\x00" in value:
                return (
                    "nul_character",
                    f"{name} contains a NUL character, which the database cannot store",
                )
            length = column.type.length
            if length is not None and len(value) > length:
                return (
                    "too_long",
                    f"{name} is {len(value)} characters long; the database keeps at most {length}",
                )
        elif isinstance(column.type, Integer):
            bound = 2**63 if isinstance(column.type, BigInteger) else 2**31
            if not -bound <= value < bound:
                return "out_of_range", f"{name} {value} is outside the database's range"
    return None


@dataclass(frozen=True)
class IncidentFilter:
    """Filters of incident queries; ``None`` means any."""

    model_id: str | None = None
    kind: IncidentKind | None = None
    status: IncidentStatus | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select[Incident]) -> Select[Incident]:
        """Add these filters to ``query``."""
        if self.model_id is not None:
            query = query.where(Incident.model_id == self.model_id)
        if self.kind is not None:
            query = query.where(Incident.kind == self.kind)
        if self.status is not None:
            query = query.where(Incident.status == self.status)
        if self.source is not None:
            # Adversarial and drift incidents span sources: match their detections too.
            has_source = (
                select(DetectionRow.id)
                .where(DetectionRow.incident_id == Incident.id, DetectionRow.source == self.source)
                .exists()
            )
            query = query.where((Incident.source == self.source) | has_source)
        if self.since is not None:
            query = query.where(Incident.last_seen >= self.since)
        if self.until is not None:
            query = query.where(Incident.first_seen <= self.until)
        return query


def _incident_kind(kind: DetectionKind) -> IncidentKind:
    return IncidentKind(kind.value)


class IncidentStore:
    """Incidents in a SQL database (PostgreSQL in production, SQLite for the demo)."""

    def __init__(self, engine: Engine, policy: GroupingPolicy | None = None) -> None:
        self.engine = engine
        self.policy = policy or GroupingPolicy()

    # --- writing ------------------------------------------------------------------------

    def record(self, detections: Sequence[Detection]) -> RecordResult:
        """Store detections and group them into incidents, in one transaction.

        Each detection is written in a savepoint together with its incident's update, so
        a detection another writer stored concurrently is skipped whole: no count grows
        without its row. A detection the database cannot hold (:func:`unstorable`) is
        not written and is listed in the result's ``refused``.
        """
        stored = duplicates = 0
        opened: list[int] = []
        touched: list[int] = []
        refused: list[RefusedDetection] = []
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            for position, detection in enumerate(detections):
                problem = unstorable(detection)
                if problem is not None:
                    refused.append(RefusedDetection(position, *problem))
                    continue
                kind = _incident_kind(detection.kind)
                if self._stored(session, kind, detection):
                    duplicates += 1
                    continue
                try:
                    with session.begin_nested():
                        incident, is_new = self._group(session, kind, detection)
                        session.add(self._row(incident, kind, detection))
                        if kind in _SOURCE_DECISIONS:
                            self._note_decision(session, kind, detection)
                        session.flush()
                except IntegrityError:
                    if not self._stored(session, kind, detection):
                        raise  # not a duplicate: the database refused the detection
                    # Another writer stored the same detection a moment ago.
                    duplicates += 1
                    continue
                stored += 1
                if is_new:
                    opened.append(incident.id)
                if incident.id not in touched:
                    touched.append(incident.id)
        return RecordResult(stored, duplicates, opened, touched, refused)

    @staticmethod
    def _stored(session: Session, kind: IncidentKind, detection: Detection) -> bool:
        """Whether ``detection`` is stored already (it is keyed by kind, model and event)."""
        stored = session.scalar(
            select(DetectionRow.id).where(
                DetectionRow.kind == kind,
                DetectionRow.model_id == detection.model_id,
                DetectionRow.event_id == detection.event_id,
            )
        )
        return stored is not None

    def _group(
        self, session: Session, kind: IncidentKind, detection: Detection
    ) -> tuple[Incident, bool]:
        """The incident ``detection`` joins (extended), or a new one; and whether it is new."""
        if session.get_bind().dialect.name == "postgresql":
            # Two writers must not both open an incident for the same group.
            key = f"{kind.value}|{detection.model_id}|{detection.source or ''}"
            session.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))
        incident = self._open_incident_for(session, kind, detection)
        if incident is None:
            return self._new_incident(session, kind, detection), True
        self._extend(incident, detection)
        return incident, False

    @staticmethod
    def _row(incident: Incident, kind: IncidentKind, detection: Detection) -> DetectionRow:
        return DetectionRow(
            incident_id=incident.id,
            kind=kind,
            event_id=detection.event_id,
            model_id=detection.model_id,
            source=detection.source,
            score=detection.score,
            threshold=detection.threshold,
            detected_at=detection.detected_at,
            topic=detection.topic,
            partition=detection.partition,
            offset=detection.offset,
            signal=detection.signal,
            detector=detection.detector,
            details=IncidentStore._details(detection),
        )

    @staticmethod
    def _details(detection: Detection) -> dict[str, Any] | None:
        """What the row's ``details`` JSON keeps of ``detection`` (``None`` if nothing)."""
        details: dict[str, Any] = dict(detection.details)
        if detection.related_event_ids:
            details[RELATED_EVENT_IDS_KEY] = list(detection.related_event_ids)
        if detection.expires_at is not None:
            details[EXPIRES_AT_KEY] = detection.expires_at.isoformat()
        return details or None

    def _open_incident_for(
        self, session: Session, kind: IncidentKind, detection: Detection
    ) -> Incident | None:
        query = (
            select(Incident)
            .where(
                Incident.kind == kind,
                Incident.model_id == detection.model_id,
                Incident.status != IncidentStatus.RESOLVED,
                Incident.last_seen >= detection.detected_at - self.policy.gap,
                Incident.first_seen <= detection.detected_at + self.policy.gap,
            )
            .order_by(Incident.last_seen.desc())
            .limit(1)
            .with_for_update()
        )
        if kind in _PER_SOURCE:
            query = query.where(Incident.source == detection.source)
        return session.scalar(query)

    def _new_incident(self, session: Session, kind: IncidentKind, detection: Detection) -> Incident:
        incident = Incident(
            kind=kind,
            model_id=detection.model_id,
            model_version=detection.model_version,
            source=detection.source if kind in _PER_SOURCE else None,
            status=IncidentStatus.OPEN,
            first_seen=detection.detected_at,
            last_seen=detection.detected_at,
            detection_count=1,
            peak_score=detection.score,
            score_sum=detection.score,
            threshold=detection.threshold,
            detector_sha256=detection.detector_sha256,
            sample_events=[self._sample(detection)],
            decisions=[],
        )
        incident.changes.append(
            StatusChange(
                status=IncidentStatus.OPEN,
                at=detection.detected_at,
                by=SYSTEM_ACTOR,
                note=f"opened by {kind.value} detection of event {detection.event_id}",
            )
        )
        session.add(incident)
        session.flush()
        return incident

    def _extend(self, incident: Incident, detection: Detection) -> None:
        incident.detection_count += 1
        incident.score_sum += detection.score
        incident.peak_score = max(incident.peak_score, detection.score)
        incident.last_seen = max(incident.last_seen, detection.detected_at)
        incident.first_seen = min(incident.first_seen, detection.detected_at)
        if len(incident.sample_events) < self.policy.sample_size:
            incident.sample_events = [*incident.sample_events, self._sample(detection)]
        if incident.model_version is None:
            incident.model_version = detection.model_version

    @staticmethod
    def _sample(detection: Detection) -> dict[str, object]:
        sample: dict[str, object] = {
            "event_id": detection.event_id,
            "score": detection.score,
            "source": detection.source,
            "detected_at": detection.detected_at.isoformat(),
        }
        if detection.signal is not None:
            sample["signal"] = detection.signal
        return sample

    def _note_decision(self, session: Session, kind: IncidentKind, detection: Detection) -> None:
        """Record a source decision (a quarantine, or the decision on a query attack) among
        the decisions of the model's open incidents."""
        enforced = detection.details.get("enforced", 1.0) > 0
        decision: dict[str, Any] = {
            "action": "quarantine" if enforced else "flag",
            "scope": "source",
            "source": detection.source,
            "decided_at": detection.detected_at.isoformat(),
            "expires_at": detection.expires_at.isoformat() if detection.expires_at else None,
        }
        if kind is IncidentKind.QUERY_ATTACK:
            decision["reason"] = kind.value
            decision["event_id"] = detection.event_id
            decision["linked_queries"] = detection.score
        else:
            decision["flagged_events"] = detection.score
        for incident in session.scalars(
            select(Incident).where(
                Incident.model_id == detection.model_id,
                Incident.status != IncidentStatus.RESOLVED,
            )
        ):
            if decision not in incident.decisions:
                incident.decisions = [*incident.decisions, decision]

    def set_status(
        self,
        incident_id: int,
        status: IncidentStatus,
        by: str,
        note: str | None = None,
        now: datetime | None = None,
    ) -> Incident:
        """Acknowledge or resolve an incident, recording who, when and why."""
        now = now or datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            incident = session.get(Incident, incident_id, with_for_update=True)
            if incident is None:
                raise IncidentNotFoundError(f"no incident {incident_id}")
            allowed = {
                IncidentStatus.OPEN: {IncidentStatus.ACKNOWLEDGED, IncidentStatus.RESOLVED},
                IncidentStatus.ACKNOWLEDGED: {IncidentStatus.RESOLVED},
                IncidentStatus.RESOLVED: set(),
            }
            if status not in allowed[incident.status]:
                raise InvalidTransitionError(
                    f"incident {incident_id} is {incident.status.value}; "
                    f"it cannot become {status.value}"
                )
            self._transition(incident, status, by, note, now)
        return self.get(incident_id)

    @staticmethod
    def _transition(
        incident: Incident, status: IncidentStatus, by: str, note: str | None, now: datetime
    ) -> None:
        incident.status = status
        if status is IncidentStatus.RESOLVED:
            incident.resolved_at = now
        incident.changes.append(StatusChange(status=status, at=now, by=by, note=note))

    def auto_resolve(self, now: datetime | None = None) -> list[int]:
        """Resolve unresolved incidents without detections for the quiet period."""
        now = now or datetime.now(UTC)
        cutoff = now - self.policy.quiet_period
        with Session(self.engine) as session, session.begin():
            quiet = session.scalars(
                select(Incident)
                .where(Incident.status != IncidentStatus.RESOLVED, Incident.last_seen < cutoff)
                .with_for_update()
            ).all()
            for incident in quiet:
                minutes = self.policy.quiet_period.total_seconds() / 60
                self._transition(
                    incident,
                    IncidentStatus.RESOLVED,
                    SYSTEM_ACTOR,
                    f"auto-resolved: no detection for {minutes:g} minutes",
                    now,
                )
            return [incident.id for incident in quiet]

    def mark_alerted(self, incident_ids: Sequence[int], at: datetime) -> None:
        """Remember that these incidents' alerts reached Alertmanager at ``at``."""
        with Session(self.engine) as session, session.begin():
            for incident in session.scalars(select(Incident).where(Incident.id.in_(incident_ids))):
                incident.alert_sent_at = at
                if incident.status is IncidentStatus.RESOLVED:
                    incident.alert_resolved_sent = True

    # --- reading ------------------------------------------------------------------------

    def get(self, incident_id: int) -> Incident:
        """One incident with its status changes and detections."""
        with Session(self.engine, expire_on_commit=False) as session:
            incident = session.scalar(
                select(Incident)
                .where(Incident.id == incident_id)
                .options(selectinload(Incident.changes), selectinload(Incident.detections))
            )
            if incident is None:
                raise IncidentNotFoundError(f"no incident {incident_id}")
            return incident

    def find(
        self, filters: IncidentFilter | None = None, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[Incident], int]:
        """Incidents matching ``filters``, newest first, and how many match in all."""
        filters = filters or IncidentFilter()
        with Session(self.engine, expire_on_commit=False) as session:
            query = filters.apply(select(Incident))
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(Incident.last_seen.desc(), Incident.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return list(rows), int(total)

    def detections(
        self, incident_id: int, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[DetectionRow], int]:
        """One page of an incident's detections, oldest first, and how many it has."""
        with Session(self.engine, expire_on_commit=False) as session:
            if session.get(Incident, incident_id) is None:
                raise IncidentNotFoundError(f"no incident {incident_id}")
            of_incident = DetectionRow.incident_id == incident_id
            total = session.scalar(
                select(func.count()).select_from(DetectionRow).where(of_incident)
            )
            rows = session.scalars(
                select(DetectionRow)
                .where(of_incident)
                .order_by(DetectionRow.detected_at, DetectionRow.id)
                .limit(limit)
                .offset(offset)
            ).all()
            return list(rows), int(total or 0)

    def open_counts(self) -> dict[IncidentKind, int]:
        """How many incidents of each kind are unresolved (0 for a kind without any).

        One ``GROUP BY`` over the incidents' kind and status columns (both in the index
        ``ix_incidents_group``); no incident is loaded.
        """
        counts = dict.fromkeys(IncidentKind, 0)
        with Session(self.engine) as session:
            rows = session.execute(
                select(Incident.kind, func.count())
                .where(Incident.status != IncidentStatus.RESOLVED)
                .group_by(Incident.kind)
            ).all()
        for kind, count in rows:
            counts[IncidentKind(kind)] = int(count)
        return counts

    def alertable(self) -> list[Incident]:
        """Unresolved incidents, and resolved ones whose resolution was not yet alerted."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(
                session.scalars(
                    select(Incident).where(
                        (Incident.status != IncidentStatus.RESOLVED)
                        | (Incident.alert_resolved_sent.is_(False))
                    )
                ).all()
            )
