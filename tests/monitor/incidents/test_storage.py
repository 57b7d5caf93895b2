"""The incident store and the schema, on PostgreSQL.

Each test gets its own PostgreSQL schema in the session's database (through the
connection's ``search_path``), so tests never see each other's incidents.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.cli import main
from monitor.errors import IncidentNotFoundError, InvalidTransitionError, SchemaBehindError
from monitor.incidents.storage.incidents import (
    SYSTEM_ACTOR,
    GroupingPolicy,
    IncidentFilter,
    IncidentStore,
    RecordResult,
    RefusedDetection,
)
from monitor.incidents.storage.models import (
    Base,
    DetectionRow,
    Incident,
    IncidentKind,
    IncidentStatus,
    StatusChange,
)
from monitor.incidents.storage.schema import (
    alembic_config,
    current_revision,
    ensure_current,
    head_revision,
    upgrade,
)
from monitor.incidents.views import detection_dict
from schemas import Detection
from tests.monitor.incidents.query_attacks import query_attack

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POLICY = GroupingPolicy(
    gap=timedelta(minutes=10), quiet_period=timedelta(minutes=30), sample_size=3
)


@pytest.fixture
def engine(pg_url: str, schema: str) -> Iterator[Engine]:
    """An engine on the fresh schema, not yet migrated."""
    engine = create_engine(pg_url, connect_args={"options": f"-csearch_path={schema}"})
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> IncidentStore:
    """An incident store on the migrated schema; gap 10 min, quiet 30 min, 3 samples."""
    upgrade(engine)
    return IncidentStore(engine, POLICY)


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.integration), "sqlite"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IncidentStore]:
    """The incident store on a migrated database: a PostgreSQL schema, then a SQLite file
    (the demo's)."""
    if request.param == "postgresql":
        pg_url, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("schema")
        engine = create_engine(pg_url, connect_args={"options": f"-csearch_path={schema}"})
    else:
        engine = create_engine(f"sqlite:///{tmp_path / 'incidents.db'}")
    try:
        upgrade(engine)
        yield IncidentStore(engine, POLICY)
    finally:
        engine.dispose()


def detection(
    event_id: str,
    minutes: float,
    *,
    kind: str = "adversarial",
    model_id: str = "digits",
    source: str | None = "key-a",
    score: float = 0.5,
    **extra: Any,
) -> Detection:
    """A detection ``minutes`` after T0."""
    return Detection(
        event_id=event_id,
        model_id=model_id,
        source=source,
        kind=kind,
        score=score,
        threshold=0.25,
        detected_at=T0 + timedelta(minutes=minutes),
        **extra,
    )


def _rows(engine: Engine, model: type[Any]) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


# --- grouping -----------------------------------------------------------------------


def test_detections_within_the_gap_group_into_one_incident(store: IncidentStore) -> None:
    result = store.record(
        [
            detection("e1", 0, score=0.5),
            detection("e2", 5, score=0.9, source="key-b"),
            detection("e3", 14, score=0.25),
            detection("e4", 15, score=0.75),
        ]
    )
    assert result.stored == 4
    assert result.duplicates == 0
    assert len(result.opened) == 1
    assert result.touched == result.opened

    incident = store.get(result.opened[0])
    assert incident.kind is IncidentKind.ADVERSARIAL
    assert incident.model_id == "digits"
    assert incident.source is None  # adversarial incidents span sources
    assert incident.status is IncidentStatus.OPEN
    assert incident.first_seen == T0
    assert incident.last_seen == T0 + timedelta(minutes=15)
    assert incident.detection_count == 4
    assert incident.peak_score == 0.9
    assert incident.mean_score == pytest.approx(2.4 / 4)
    assert [sample["event_id"] for sample in incident.sample_events] == ["e1", "e2", "e3"]
    assert [d.event_id for d in incident.detections] == ["e1", "e2", "e3", "e4"]
    assert [(c.status, c.at, c.by) for c in incident.changes] == [
        (IncidentStatus.OPEN, T0, SYSTEM_ACTOR)
    ]


def test_a_detection_after_the_gap_opens_a_new_incident(store: IncidentStore) -> None:
    first = store.record([detection("e1", 0), detection("e2", 10)])
    later = store.record([detection("e3", 20.5)])
    assert len(first.opened) == 1
    assert len(later.opened) == 1
    assert later.opened != first.opened
    assert store.get(first.opened[0]).detection_count == 2
    assert store.get(later.opened[0]).first_seen == T0 + timedelta(minutes=20.5)


def test_each_kind_and_model_has_its_own_incident(store: IncidentStore) -> None:
    result = store.record(
        [
            detection("e1", 0),
            detection("e1", 1, kind="drift"),  # the same event may be flagged for drift too
            detection("e2", 2, model_id="other"),
        ]
    )
    assert result.stored == 3
    assert len(result.opened) == 3
    found = {(i.kind, i.model_id) for i in store.find()[0]}
    assert found == {
        (IncidentKind.ADVERSARIAL, "digits"),
        (IncidentKind.DRIFT, "digits"),
        (IncidentKind.ADVERSARIAL, "other"),
    }


def test_quarantine_incidents_are_per_source(store: IncidentStore) -> None:
    expires = T0 + timedelta(hours=1)
    store.record([detection("e1", 0, source="key-a"), detection("e2", 1, source="key-b")])
    result = store.record(
        [
            detection("q1", 2, kind="quarantine", source="key-a", score=10, expires_at=expires),
            detection("q2", 3, kind="quarantine", source="key-b", score=12, expires_at=expires),
            detection("q3", 4, kind="quarantine", source="key-a", score=11, expires_at=expires),
        ]
    )
    assert len(result.opened) == 2
    quarantines, total = store.find(IncidentFilter(kind=IncidentKind.QUARANTINE))
    assert total == 2
    by_source = {incident.source: incident for incident in quarantines}
    assert by_source["key-a"].detection_count == 2
    assert by_source["key-b"].detection_count == 1
    (adversarial,), _ = store.find(IncidentFilter(kind=IncidentKind.ADVERSARIAL))
    # The source filter finds the source's own quarantine and the incidents it took part in.
    matching, _ = store.find(IncidentFilter(source="key-b"))
    assert sorted(incident.id for incident in matching) == sorted(
        [by_source["key-b"].id, adversarial.id]
    )
    matching, _ = store.find(IncidentFilter(source="key-c"))
    assert matching == []

    # Every open incident of the model records the quarantines decided while it was open.
    assert [(d["action"], d["source"], d["expires_at"]) for d in adversarial.decisions] == [
        ("quarantine", "key-a", expires.isoformat()),
        ("quarantine", "key-b", expires.isoformat()),
        ("quarantine", "key-a", expires.isoformat()),
    ]


def _minutes(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_query_attack_incidents_are_per_model_and_source(any_store: IncidentStore) -> None:
    store = any_store
    (adversarial,) = store.record([detection("e1", 0, source="key-a")]).opened
    result = store.record(
        [
            query_attack("q1", _minutes(1), source="key-a", linked=9),
            query_attack("q2", _minutes(2), source="key-b", linked=14, enforced=False),
            query_attack("q3", _minutes(4), source="key-a", linked=11),
            query_attack("q4", _minutes(5), source="key-a", model_id="other"),
            query_attack("q5", _minutes(30), source="key-a"),  # after the gap
            query_attack("q6", _minutes(31), source=None),
        ]
    )
    assert (result.stored, result.duplicates, len(result.opened)) == (6, 0, 5)

    attacks, total = store.find(IncidentFilter(kind=IncidentKind.QUERY_ATTACK))
    assert total == 5
    grouped = {
        (i.model_id, i.source, i.first_seen): [d.event_id for d in store.get(i.id).detections]
        for i in attacks
    }
    assert grouped == {
        ("digits", "key-a", _minutes(1)): ["q1", "q3"],
        ("digits", "key-b", _minutes(2)): ["q2"],
        ("other", "key-a", _minutes(5)): ["q4"],
        ("digits", "key-a", _minutes(30)): ["q5"],
        ("digits", None, _minutes(31)): ["q6"],
    }
    key_a = store.get(
        next(
            i.id
            for i in attacks
            if (i.model_id, i.source, i.first_seen) == ("digits", "key-a", _minutes(1))
        )
    )
    assert (key_a.detection_count, key_a.peak_score, key_a.threshold) == (2, 11, 8)
    assert key_a.mean_score == 10
    assert key_a.model_version == "v3"
    assert [(c.status, c.by, c.note) for c in key_a.changes] == [
        (IncidentStatus.OPEN, SYSTEM_ACTOR, "opened by query_attack detection of event q1")
    ]

    # Every open incident of the model records the decisions taken on its sources, as for
    # a quarantine; the other model's attack is not among them.
    def decision(event_id: str, source: str | None, minutes: float, linked: int) -> Any:
        return {
            "action": "flag" if event_id == "q2" else "quarantine",
            "scope": "source",
            "source": source,
            "decided_at": _minutes(minutes).isoformat(),
            "expires_at": (_minutes(minutes) + timedelta(hours=1)).isoformat(),
            "reason": "query_attack",
            "event_id": event_id,
            "linked_queries": linked,
        }

    assert store.get(adversarial).decisions == [
        decision("q1", "key-a", 1, 9),
        decision("q2", "key-b", 2, 14),
        decision("q3", "key-a", 4, 11),
        decision("q5", "key-a", 30, 12),
        decision("q6", None, 31, 12),
    ]
    (other,), _ = store.find(IncidentFilter(model_id="other"))
    assert other.decisions == [decision("q4", "key-a", 5, 12)]


def test_a_replayed_query_attack_is_stored_once(any_store: IncidentStore) -> None:
    store = any_store
    batch = [query_attack("q1", _minutes(1)), query_attack("q2", _minutes(2))]
    first = store.record([*batch, batch[0]])
    assert (first.stored, first.duplicates, len(first.opened)) == (2, 1, 1)
    before = {i.id: incident_state(i) for i in store.find()[0]}
    assert store.record(batch) == RecordResult(stored=0, duplicates=2, opened=[], touched=[])
    assert {i.id: incident_state(i) for i in store.find()[0]} == before
    (incident,) = store.find()[0]
    assert incident.detection_count == len(store.get(incident.id).detections) == 2
    assert [d["event_id"] for d in incident.decisions] == ["q1", "q2"]


def test_the_events_a_query_attack_matched_survive_storage(any_store: IncidentStore) -> None:
    # Event ids come from the attacker: markup, a NUL character, the longest id an event
    # may have. None of them keeps the detection out.
    related = ["[/]", "[red]q-9[/red]", "q\x00nul", "é" * 500, *(f"q-{n}" for n in range(12))]
    attack = query_attack("q-17", _minutes(1), source="[bold]key[/]", related=related)
    result = store_one(any_store, attack)
    (row,) = any_store.get(result).detections
    assert row.details == {
        "matches": 5.0,
        "held": 40.0,
        "span_seconds": 90.0,
        "first_linked_ts": attack.details["first_linked_ts"],
        "enforced": 1.0,
        "min_linked": 8.0,
        "related_event_ids": related,
        "expires_at": "2026-05-01T13:01:00+00:00",
    }
    data = detection_dict(row)
    assert data["related_event_ids"] == related
    assert data["expires_at"] == "2026-05-01T13:01:00+00:00"
    assert data["details"] == {
        "matches": 5.0,
        "held": 40.0,
        "span_seconds": 90.0,
        "first_linked_ts": attack.details["first_linked_ts"],
        "enforced": 1.0,
        "min_linked": 8.0,
    }
    assert (data["kind"], data["source"], data["score"], data["threshold"]) == (
        "query_attack",
        "[bold]key[/]",
        12.0,
        8.0,
    )


def store_one(store: IncidentStore, one: Detection) -> int:
    """Store one detection that opens an incident; the incident's id."""
    result = store.record([one])
    assert (result.stored, result.refused) == (1, [])
    (incident_id,) = result.opened
    return incident_id


def test_a_detection_without_extras_keeps_its_details_as_they_were(
    any_store: IncidentStore,
) -> None:
    drift = detection("d1", 0, kind="drift", source=None, details={"mean_before": 0.5})
    (row,) = any_store.get(store_one(any_store, drift)).detections
    assert row.details == {"mean_before": 0.5}
    data = detection_dict(row)
    assert (data["details"], data["related_event_ids"], data["expires_at"]) == (
        {"mean_before": 0.5},
        [],
        None,
    )
    (row,) = any_store.get(store_one(any_store, detection("e1", 1))).detections
    assert row.details is None
    assert detection_dict(row)["details"] is None


def test_the_migrations_build_the_models_tables_and_hold_every_kind(
    any_store: IncidentStore,
) -> None:
    # The kind columns are VARCHAR(20) without a CHECK constraint: a new kind needs no
    # migration, as long as its name fits.
    engine = any_store.engine
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        for table in ("incidents", "detections"):
            assert inspect(connection).get_check_constraints(table) == []
    for number, kind in enumerate(IncidentKind):
        assert len(kind.value) <= 20
        store_one(any_store, detection(f"k{number}", number * 30, kind=kind.value))
    assert {i.kind for i in any_store.find()[0]} == set(IncidentKind)


# --- idempotence --------------------------------------------------------------------


def test_replayed_detections_change_no_counts_and_add_no_rows(
    store: IncidentStore, engine: Engine
) -> None:
    batch = [
        detection("e1", 0),
        detection("e2", 1, score=0.9),
        detection("q1", 2, kind="quarantine", score=10),
    ]
    first = store.record(batch)
    before = {i.id: incident_state(i) for i in store.find()[0]}
    rows_before = (_rows(engine, DetectionRow), _rows(engine, StatusChange))

    replay = store.record(batch)
    assert replay == RecordResult(stored=0, duplicates=3, opened=[], touched=[])
    assert {i.id: incident_state(i) for i in store.find()[0]} == before
    assert (_rows(engine, DetectionRow), _rows(engine, StatusChange)) == rows_before
    assert rows_before == (3, 2)
    assert first.stored == 3


def test_a_detection_repeated_within_one_batch_is_stored_once(
    store: IncidentStore, engine: Engine
) -> None:
    result = store.record([detection("e1", 0), detection("e1", 0)])
    assert (result.stored, result.duplicates) == (1, 1)
    assert store.get(result.opened[0]).detection_count == 1
    assert _rows(engine, DetectionRow) == 1


def test_two_models_may_share_an_event_id(store: IncidentStore, engine: Engine) -> None:
    batch = [detection("e1", 0), detection("e1", 0, model_id="other")]
    result = store.record(batch)
    assert (result.stored, result.duplicates, len(result.opened)) == (2, 0, 2)
    assert store.record(batch) == RecordResult(stored=0, duplicates=2, opened=[], touched=[])
    assert _rows(engine, DetectionRow) == 2


def incident_state(incident: Incident) -> tuple[Any, ...]:
    """What a replay must not change."""
    return (
        incident.detection_count,
        incident.score_sum,
        incident.peak_score,
        incident.first_seen,
        incident.last_seen,
        incident.sample_events,
        incident.decisions,
        incident.status,
    )


def test_a_detection_stored_concurrently_is_counted_once(
    store: IncidentStore, engine: Engine
) -> None:
    (incident_id,) = store.record([detection("e1", 0)]).opened
    results: list[RecordResult] = []
    racing = threading.Thread(target=lambda: results.append(store.record([detection("e2", 1)])))
    with Session(engine) as other, other.begin():
        # Another worker (two own a partition for a moment during a rebalance) stores e2
        # and has not committed yet.
        incident = other.get(Incident, incident_id, with_for_update=True)
        assert incident is not None
        incident.detection_count += 1
        other.add(
            DetectionRow(
                incident_id=incident_id,
                kind=IncidentKind.ADVERSARIAL,
                event_id="e2",
                model_id="digits",
                source="key-a",
                score=0.5,
                threshold=0.25,
                detected_at=T0 + timedelta(minutes=1),
            )
        )
        other.flush()
        racing.start()
        time.sleep(1)  # the store has looked for e2, not seen it, and waits for the lock
    racing.join(timeout=10)
    assert results == [RecordResult(stored=0, duplicates=1, opened=[], touched=[])]
    incident = store.get(incident_id)
    assert incident.detection_count == len(incident.detections) == 2


# --- values the database cannot hold -------------------------------------------------


def test_values_the_database_cannot_hold_are_refused_and_the_rest_stored(
    store: IncidentStore, engine: Engine
) -> None:
    result = store.record(
        [
            detection("e1", 0),
            detection("x" * 501, 1),
            detection("e2", 2, source="key\x00a"),
            detection("e3", 3, partition=2**31),
            detection("y" * 500, 4),
            detection("e4", 5, model_version="v\x00"),
        ]
    )
    assert result.refused == [
        RefusedDetection(
            1, "too_long", "event_id is 501 characters long; the database keeps at most 500"
        ),
        RefusedDetection(
            2, "nul_character", "source contains a NUL character, which the database cannot store"
        ),
        RefusedDetection(3, "out_of_range", "partition 2147483648 is outside the database's range"),
        RefusedDetection(
            5,
            "nul_character",
            "model_version contains a NUL character, which the database cannot store",
        ),
    ]
    assert (result.stored, result.duplicates) == (2, 0)
    (incident_id,) = result.opened
    assert [d.event_id for d in store.get(incident_id).detections] == ["e1", "y" * 500]
    assert _rows(engine, DetectionRow) == 2


def test_a_refusal_that_is_not_a_duplicate_is_raised(store: IncidentStore, engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("ALTER TABLE detections ADD CONSTRAINT test_score CHECK (score < 100)")
        )
    with pytest.raises(IntegrityError, match="test_score"):
        store.record([detection("e1", 0), detection("e2", 1, score=1000.0)])
    assert _rows(engine, DetectionRow) == _rows(engine, Incident) == 0


# --- status ---------------------------------------------------------------------------


def test_status_changes_record_who_when_and_why(store: IncidentStore) -> None:
    (incident_id,) = store.record([detection("e1", 0)]).opened
    acked = store.set_status(
        incident_id, IncidentStatus.ACKNOWLEDGED, "alice", "looking", now=T0 + timedelta(minutes=3)
    )
    assert acked.status is IncidentStatus.ACKNOWLEDGED
    assert acked.resolved_at is None
    resolved = store.set_status(
        incident_id, IncidentStatus.RESOLVED, "bob", "key revoked", now=T0 + timedelta(minutes=9)
    )
    assert resolved.status is IncidentStatus.RESOLVED
    assert resolved.resolved_at == T0 + timedelta(minutes=9)
    assert [(c.status, c.at, c.by, c.note) for c in store.get(incident_id).changes] == [
        (IncidentStatus.OPEN, T0, SYSTEM_ACTOR, "opened by adversarial detection of event e1"),
        (IncidentStatus.ACKNOWLEDGED, T0 + timedelta(minutes=3), "alice", "looking"),
        (IncidentStatus.RESOLVED, T0 + timedelta(minutes=9), "bob", "key revoked"),
    ]


def test_an_open_incident_may_be_resolved_directly(store: IncidentStore) -> None:
    (incident_id,) = store.record([detection("e1", 0)]).opened
    resolved = store.set_status(incident_id, IncidentStatus.RESOLVED, "carol", "false alarm")
    assert resolved.status is IncidentStatus.RESOLVED


@pytest.mark.parametrize(
    ("path", "refused", "message"),
    [
        (
            [IncidentStatus.ACKNOWLEDGED],
            IncidentStatus.ACKNOWLEDGED,
            "is acknowledged; it cannot become acknowledged",
        ),
        (
            [IncidentStatus.RESOLVED],
            IncidentStatus.ACKNOWLEDGED,
            "is resolved; it cannot become acknowledged",
        ),
        (
            [IncidentStatus.RESOLVED],
            IncidentStatus.RESOLVED,
            "is resolved; it cannot become resolved",
        ),
        ([], IncidentStatus.OPEN, "is open; it cannot become open"),
    ],
)
def test_invalid_transitions_are_refused_and_leave_no_trace(
    store: IncidentStore,
    path: list[IncidentStatus],
    refused: IncidentStatus,
    message: str,
) -> None:
    (incident_id,) = store.record([detection("e1", 0)]).opened
    for status in path:
        store.set_status(incident_id, status, "alice", None)
    with pytest.raises(InvalidTransitionError, match=f"^incident {incident_id} {message}$"):
        store.set_status(incident_id, refused, "mallory", "again")
    incident = store.get(incident_id)
    assert len(incident.changes) == 1 + len(path)
    assert incident.status is (path[-1] if path else IncidentStatus.OPEN)


def test_unknown_incidents_are_not_found(store: IncidentStore) -> None:
    with pytest.raises(IncidentNotFoundError, match="no incident 4242"):
        store.get(4242)
    with pytest.raises(IncidentNotFoundError, match="no incident 4242"):
        store.set_status(4242, IncidentStatus.RESOLVED, "alice", None)


def test_a_resolved_incident_is_never_extended(store: IncidentStore) -> None:
    (first,) = store.record([detection("e1", 0)]).opened
    store.set_status(first, IncidentStatus.RESOLVED, "alice", "done")
    result = store.record([detection("e2", 1)])
    assert result.opened != [first]
    assert store.get(first).detection_count == 1


def test_auto_resolve_resolves_only_quiet_incidents(store: IncidentStore) -> None:
    (quiet,) = store.record([detection("e1", 0)]).opened
    chain = [detection(f"b{m}", m, model_id="busy") for m in (0, 9, 18, 25)]
    (busy,) = store.record(chain).opened
    now = T0 + timedelta(minutes=31)
    assert store.auto_resolve(now) == [quiet]
    assert store.auto_resolve(now) == []  # resolved once
    resolved = store.get(quiet)
    assert resolved.status is IncidentStatus.RESOLVED
    assert resolved.resolved_at == now
    assert [(c.by, c.note) for c in resolved.changes[1:]] == [
        (SYSTEM_ACTOR, "auto-resolved: no detection for 30 minutes")
    ]
    assert store.get(busy).status is IncidentStatus.OPEN


# --- queries ------------------------------------------------------------------------


def test_find_filters_pages_and_orders_newest_first(store: IncidentStore) -> None:
    a = store.record([detection("a1", 0), detection("a2", 5)]).opened[0]
    b = store.record([detection("b1", 60, model_id="other")]).opened[0]
    c = store.record([detection("c1", 120, kind="quarantine", source="key-z", score=9)]).opened[0]
    store.set_status(b, IncidentStatus.ACKNOWLEDGED, "alice", None)

    def ids(filters: IncidentFilter | None = None, **page: int) -> tuple[list[int], int]:
        rows, total = store.find(filters, **page)
        return [incident.id for incident in rows], total

    assert ids() == ([c, b, a], 3)
    assert ids(IncidentFilter(model_id="digits")) == ([c, a], 2)
    assert ids(IncidentFilter(kind=IncidentKind.QUARANTINE)) == ([c], 1)
    assert ids(IncidentFilter(status=IncidentStatus.ACKNOWLEDGED)) == ([b], 1)
    assert ids(IncidentFilter(status=IncidentStatus.OPEN)) == ([c, a], 2)
    assert ids(IncidentFilter(source="key-z")) == ([c], 1)
    # since: still active then (last seen at or after); until: begun by then.
    assert ids(IncidentFilter(since=T0 + timedelta(minutes=5))) == ([c, b, a], 3)
    assert ids(IncidentFilter(since=T0 + timedelta(minutes=6))) == ([c, b], 2)
    assert ids(IncidentFilter(until=T0 + timedelta(minutes=60))) == ([b, a], 2)
    assert ids(
        IncidentFilter(since=T0 + timedelta(minutes=30), until=T0 + timedelta(minutes=90))
    ) == ([b], 1)
    assert ids(limit=1, offset=1) == ([b], 3)
    assert ids(limit=2, offset=2) == ([a], 3)
    assert ids(IncidentFilter(model_id="nobody")) == ([], 0)


# --- schema -------------------------------------------------------------------------


def test_ensure_current_raises_on_an_empty_database(engine: Engine) -> None:
    assert current_revision(engine) is None
    with pytest.raises(SchemaBehindError, match=r"is empty, this advmon needs revision") as error:
        ensure_current(engine)
    assert "run `advmon db upgrade`" in str(error.value)


def test_db_upgrade_then_ensure_current(
    engine: Engine, pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADVMON_DATABASE__URL", pg_url)
    monkeypatch.setenv("PGOPTIONS", f"-csearch_path={schema}")
    runner = CliRunner()
    where = f"the database {make_url(pg_url).database} on 127.0.0.1:5432"

    result = runner.invoke(main, ["db", "current"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"empty: no revision (this advmon needs {head_revision()}; run `advmon db upgrade`)\n"
    )

    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"upgraded {where} from revision (empty) to {head_revision()}\n"
    ensure_current(engine)
    assert current_revision(engine) == head_revision()

    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{where} is already at revision {head_revision()} (the newest); nothing to do\n"
    )
    result = runner.invoke(main, ["db", "current"])
    assert result.stdout == f"revision {head_revision()} (the newest)\n"


def test_upgrade_with_a_percent_encoded_password(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trust authentication ignores the password; the URL must still survive Alembic.
    url = make_url(pg_url).set(password="p@ss")
    assert "p%40ss" in url.render_as_string(hide_password=False)
    engine = create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def _downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _stored_detections(engine: Engine) -> list[tuple[str, str, str, int]]:
    with Session(engine) as session:
        rows = session.execute(
            select(
                DetectionRow.kind, DetectionRow.model_id, DetectionRow.event_id, DetectionRow.id
            ).order_by(DetectionRow.id)
        )
        return [(kind.value, model_id, event_id, id_) for kind, model_id, event_id, id_ in rows]


def test_upgrade_to_0003_keeps_detections_and_lets_models_share_event_ids(
    engine: Engine,
) -> None:
    upgrade(engine, "0002")
    store = IncidentStore(engine, POLICY)
    store.record([detection("e1", 0), detection("e1", 1, kind="drift"), detection("e2", 2)])
    before = _stored_detections(engine)
    with pytest.raises(IntegrityError, match="uq_detection"):
        store.record([detection("e1", 3, model_id="other")])  # the collision 0003 ends

    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert _stored_detections(engine) == before
    result = store.record([detection("e1", 3, model_id="other"), detection("e2", 2)])
    assert (result.stored, result.duplicates) == (1, 1)
    assert len(_stored_detections(engine)) == 4


def test_downgrade_from_0003_refuses_while_models_share_an_event_id(engine: Engine) -> None:
    upgrade(engine)
    store = IncidentStore(engine, POLICY)
    store.record([detection("e1", 0), detection("e1", 0, model_id="other")])
    with pytest.raises(RuntimeError, match="1 event id"):
        _downgrade(engine, "0002")
    assert current_revision(engine) == head_revision()

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM detections WHERE model_id = 'other'"))
    _downgrade(engine, "0002")
    assert current_revision(engine) == "0002"
    with pytest.raises(IntegrityError, match="uq_detection"):
        store.record([detection("e1", 1, model_id="other")])


def test_migration_0003_on_sqlite(tmp_path: Path) -> None:
    # The demo keeps its incidents in SQLite; batch mode rebuilds the table there.
    engine = create_engine(f"sqlite:///{tmp_path / 'incidents.db'}")
    try:
        upgrade(engine, "0002")
        store = IncidentStore(engine, POLICY)
        store.record([detection("e1", 0)])
        upgrade(engine)
        assert store.record([detection("e1", 1, model_id="other")]).stored == 1
        with pytest.raises(RuntimeError, match="1 event id"):
            _downgrade(engine, "0002")
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM detections WHERE model_id = 'other'"))
        _downgrade(engine, "0002")
        assert [row[:3] for row in _stored_detections(engine)] == [("adversarial", "digits", "e1")]
    finally:
        engine.dispose()


def test_open_counts_are_by_kind_and_leave_resolved_incidents_out(
    any_store: IncidentStore,
) -> None:
    assert any_store.open_counts() == dict.fromkeys(IncidentKind, 0)
    any_store.record(
        [
            detection("e1", 0, model_id="digits"),
            detection("e2", 0, model_id="letters"),
            detection("d1", 0, kind="drift", source=None),
        ]
    )
    counts = any_store.open_counts()
    assert counts[IncidentKind.ADVERSARIAL] == 2
    assert counts[IncidentKind.DRIFT] == 1
    assert counts[IncidentKind.QUERY_ATTACK] == 0
    incidents, _ = any_store.find(IncidentFilter(kind=IncidentKind.ADVERSARIAL))
    any_store.set_status(incidents[0].id, IncidentStatus.ACKNOWLEDGED, "alice")
    assert any_store.open_counts()[IncidentKind.ADVERSARIAL] == 2
    any_store.set_status(incidents[0].id, IncidentStatus.RESOLVED, "alice")
    assert any_store.open_counts()[IncidentKind.ADVERSARIAL] == 1
