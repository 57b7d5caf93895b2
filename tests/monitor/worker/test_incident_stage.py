"""The incident stage without a broker: a refused detection is set aside, never retried.

The store is the real one on PostgreSQL (a fresh schema per test); dead letters are
collected from the stage's ``publish``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError

from monitor.incidents.storage import faults
from monitor.incidents.storage.faults import database_unreachable
from monitor.incidents.storage.incidents import IncidentStore, RecordResult
from monitor.incidents.storage.schema import upgrade
from monitor.worker.metrics import Metrics
from monitor.worker.records import InputMessage, OutputRecord
from monitor.worker.stages import incidents
from monitor.worker.stages.incidents import IncidentStage
from schemas import DeadLetter, Detection
from tests.monitor.database_support import detection

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DETECTIONS = "advmon-detections"
DEAD_LETTERS = "advmon-dead-letters"


@pytest.fixture
def engine(pg_url: str, schema: str) -> Iterator[Engine]:
    """An engine on a fresh, migrated schema."""
    engine = create_engine(pg_url, connect_args={"options": f"-csearch_path={schema}"})
    upgrade(engine)
    yield engine
    engine.dispose()


class Harness:
    """An incident stage on ``store``, its dead letters and its metrics."""

    def __init__(self, store: IncidentStore) -> None:
        self.published: list[OutputRecord] = []
        self.registry = CollectorRegistry()
        self.stage = IncidentStage(
            store,
            Metrics.create(self.registry),
            self.publish,
            dead_letter_topic=DEAD_LETTERS,
            retry_max_seconds=0.05,
            on_new_incident=asyncio.Event(),
        )

    async def publish(self, records: Sequence[OutputRecord]) -> None:
        self.published.extend(records)

    def process(self, values: Sequence[Detection | bytes]) -> RecordResult:
        messages = [
            InputMessage(
                DETECTIONS,
                0,
                offset,
                b"digits",
                value.model_dump_json().encode() if isinstance(value, Detection) else value,
            )
            for offset, value in enumerate(values)
        ]
        return asyncio.run(self.stage.process(messages))

    def dead_letters(self) -> list[DeadLetter]:
        assert all(record.topic == DEAD_LETTERS for record in self.published)
        return [DeadLetter.model_validate_json(record.value) for record in self.published]

    def refused(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "advmon_detections_refused_total", {"reason": reason}
        )
        return value or 0.0


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(incidents, "_FIRST_RETRY_S", 0.01)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_bad_detections_are_set_aside_and_the_good_ones_stored(engine: Engine) -> None:
    store = IncidentStore(engine)
    harness = Harness(store)
    long_id = detection("x" * 501, at(1))
    nul_source = detection("e2", at(2), source="key\x00a")
    result = harness.process(
        [
            detection("e1", at(0)),
            long_id,
            nul_source,
            b'{"event_id": "half a detection"',
            detection("e3", at(3)),
        ]
    )

    assert (result.stored, result.duplicates) == (2, 0)
    assert [(r.position, r.reason) for r in result.refused] == [
        (1, "too_long"),
        (2, "nul_character"),
        (3, "malformed"),
    ]
    (incident_id,) = result.opened
    assert [d.event_id for d in store.get(incident_id).detections] == ["e1", "e3"]
    assert harness.stage.on_new_incident.is_set()

    letters = harness.dead_letters()
    assert [(d.reason, d.topic, d.partition, d.offset) for d in letters] == [
        ("detection_refused", DETECTIONS, 0, 1),
        ("detection_refused", DETECTIONS, 0, 2),
        ("invalid_detection", DETECTIONS, 0, 3),
    ]
    assert letters[0].error == "event_id is 501 characters long; the database keeps at most 500"
    assert letters[1].error == "source contains a NUL character, which the database cannot store"
    assert letters[2].error.startswith("not a detection: ")
    assert (letters[0].event_id, letters[0].model_id) == ("x" * 501, "digits")
    assert base64.b64decode(letters[1].value_b64) == nul_source.model_dump_json().encode()
    assert (harness.refused("too_long"), harness.refused("nul_character")) == (1, 1)
    assert harness.refused("malformed") == 1

    # Replayed (a restart before the commit): nothing stored twice, set aside again.
    harness.published.clear()
    replay = harness.process([detection("e1", at(0)), long_id])
    assert (replay.stored, replay.duplicates, len(replay.refused)) == (0, 1, 1)
    assert len(harness.dead_letters()) == 1


def test_a_detection_the_database_refuses_is_set_aside_after_storing_one_at_a_time(
    engine: Engine,
) -> None:
    # A column narrower than the model says: the store's own check lets the value
    # through, the database refuses it, and only that detection is set aside.
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE detections ALTER COLUMN signal TYPE varchar(5)"))
    store = IncidentStore(engine)
    calls: list[int] = []
    record = store.record

    def counting(detections: Sequence[Detection]) -> RecordResult:
        calls.append(len(detections))
        return record(detections)

    store.record = counting  # type: ignore[method-assign]
    harness = Harness(store)
    result = harness.process(
        [
            detection("e1", at(0)),
            detection("e2", at(1), signal="far-too-long"),
            detection("e3", at(2)),
        ]
    )

    assert calls == [3, 1, 1, 1]  # the batch once, then each detection once: no retries
    assert (result.stored, result.duplicates) == (2, 0)
    assert [(r.position, r.reason) for r in result.refused] == [(1, "database")]
    (letter,) = harness.dead_letters()
    assert (letter.reason, letter.offset, letter.event_id) == ("detection_refused", 1, "e2")
    assert letter.error == ("the database refused it: value too long for type character varying(5)")
    assert harness.refused("database") == 1
    assert harness.stage.database_up


def test_an_unreachable_database_is_retried_until_it_answers(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    store = IncidentStore(engine)
    record = store.record
    failures = [
        OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused")),
        InterfaceError("SELECT 1", {}, psycopg.InterfaceError("the connection is closed")),
    ]

    def flaky(detections: Sequence[Detection]) -> RecordResult:
        if failures:
            raise failures.pop(0)
        return record(detections)

    store.record = flaky  # type: ignore[method-assign]
    harness = Harness(store)
    result = harness.process([detection("e1", at(0))])
    assert not failures
    assert (result.stored, result.refused, harness.published) == (1, [], [])
    assert harness.stage.database_up
    assert [r.getMessage() for r in caplog.records] == [
        "database unreachable, 1 detections wait in Kafka; retrying: connection refused",
        "database reachable again; storing detections",
    ]


def test_database_errors_are_told_apart() -> None:
    def wrapped(kind: type[Exception], orig: Exception) -> Exception:
        return kind("INSERT", {}, orig)

    away = [
        wrapped(OperationalError, psycopg.OperationalError("server closed the connection")),
        wrapped(OperationalError, psycopg.errors.AdminShutdown("terminating connection")),
        wrapped(OperationalError, psycopg.errors.SerializationFailure("could not serialize")),
        wrapped(OperationalError, psycopg.errors.TooManyConnections("too many clients")),
        wrapped(InterfaceError, psycopg.InterfaceError("the connection is closed")),
    ]
    refused = [
        wrapped(DataError, psycopg.DataError("PostgreSQL text fields cannot contain NUL")),
        wrapped(DataError, psycopg.errors.StringDataRightTruncation("value too long")),
        wrapped(IntegrityError, psycopg.errors.CheckViolation("violates check constraint")),
        wrapped(OperationalError, psycopg.errors.ProgramLimitExceeded("index row too big")),
        ValueError("not a database error"),
    ]
    assert [database_unreachable(error) for error in away] == [True] * len(away)
    assert [database_unreachable(error) for error in refused] == [False] * len(refused)
    lost = DataError("INSERT", {}, psycopg.DataError("?"), connection_invalidated=True)
    assert faults.database_unreachable(lost)
