"""The incident stage on real servers: Kafka broker, PostgreSQL and Alertmanager.

Detections are produced to the worker's detections topic; the worker groups them into
incidents in PostgreSQL and posts one alert per incident to a real Alertmanager, whose
webhook receiver stands in for PagerDuty or Slack.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select

from monitor.incidents.storage.models import DetectionRow, Incident, IncidentKind
from monitor.incidents.storage.schema import upgrade
from schemas import Detection, DetectionKind
from tests.integration.alertmanager import (
    Alertmanager,
    installed_alertmanager,
    running_alertmanager,
)
from tests.integration.kafka_io import (
    OutputTopics,
    committed_offsets,
    create_topics,
    produce,
    unique_name,
)
from tests.integration.traffic import DemoDetector
from tests.integration.workers import ModelEntry, WorkerLauncher, write_worker_config

pytestmark = pytest.mark.integration

WAIT_S = 90.0
SHA = "ab" * 32


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    binary = installed_alertmanager()
    with running_alertmanager(binary, tmp_path_factory.mktemp("alertmanager")) as running:
        yield running


@pytest.fixture(scope="module")
def database(pg_url: str) -> Engine:
    engine = create_engine(pg_url)
    upgrade(engine)
    return engine


def detection(
    event_id: str,
    model: str,
    at: datetime,
    score: float = 0.8,
    *,
    source: str | None = None,
    kind: DetectionKind = DetectionKind.ADVERSARIAL,
) -> bytes:
    record = Detection(
        event_id=event_id,
        model_id=model,
        source=source,
        kind=kind,
        score=score,
        threshold=0.3,
        detector_sha256=SHA,
        detected_at=at,
    )
    return record.model_dump_json().encode()


async def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.5)


def incidents_of(engine: Engine, model: str) -> list[Incident]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                Incident.id,
                Incident.kind,
                Incident.source,
                Incident.detection_count,
                Incident.peak_score,
            )
            .where(Incident.model_id == model)
            .order_by(Incident.id)
        ).all()
    return rows  # type: ignore[return-value]


def detection_rows(engine: Engine, model: str) -> int:
    with engine.connect() as connection:
        count = connection.scalar(
            select(func.count()).select_from(DetectionRow).where(DetectionRow.model_id == model)
        )
    return int(count or 0)


async def start_incident_worker(
    launcher: WorkerLauncher,
    bootstrap: str,
    detector: DemoDetector,
    folder: Path,
    database_url: str,
    *,
    alertmanager_url: str = "",
    app_id: str | None = None,
    topics: OutputTopics | None = None,
) -> tuple[OutputTopics, str]:
    topics = topics or await OutputTopics.create(bootstrap, "incidents")
    inference = unique_name("incidents-inference")
    await create_topics(bootstrap, {inference: 1})
    config = write_worker_config(
        folder / f"advmon-{unique_name('cfg')}.yaml",
        detector=detector.path,
        models=[ModelEntry("digits", [inference])],
        topics=topics,
    )
    app_id = app_id or unique_name("incidents")
    worker = launcher.start(
        "incidents",
        config,
        app_id=app_id,
        database__url=database_url,
        alerting__alertmanager_urls=alertmanager_url,
        alerting__resend_seconds="2",
        incidents__gap_seconds="600",
        incidents__quiet_period_seconds="86400",
    )
    await worker.wait_consuming(topics.detections, timeout_s=WAIT_S)
    return topics, app_id


async def test_detections_group_into_incidents_with_one_alert_each_and_replays_change_nothing(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    database: Engine,
    pg_url: str,
    alertmanager: Alertmanager,
    tmp_path: Path,
) -> None:
    model, other = unique_name("model-a"), unique_name("model-b")
    now = datetime.now(UTC)
    early, late = now - timedelta(minutes=40), now - timedelta(minutes=5)
    values = (
        # Five detections of one model within a minute: one incident ...
        [
            detection(f"{model}-e{i}", model, early + timedelta(seconds=10 * i), 0.5 + i / 10)
            for i in range(5)
        ]
        # ... and, 35 minutes later (beyond the 10-minute gap), a second one.
        + [detection(f"{model}-l{i}", model, late + timedelta(seconds=i)) for i in range(3)]
        # Another model's detections: their own incident.
        + [detection(f"{other}-e{i}", other, late) for i in range(2)]
        # Two sources quarantined: one incident per source.
        + [
            detection(
                f"{model}-q{i}", model, late, 20.0, source=f"src-{i}", kind=DetectionKind.QUARANTINE
            )
            for i in range(2)
        ]
    )
    topics, _ = await start_incident_worker(
        worker_launcher,
        kafka_bootstrap,
        demo_detector,
        tmp_path,
        pg_url,
        alertmanager_url=alertmanager.url,
    )
    await produce(kafka_bootstrap, topics.detections, values)

    await wait_until(
        lambda: detection_rows(database, model) == 10 and detection_rows(database, other) == 2,
        "all detections stored",
    )
    incidents = incidents_of(database, model)
    by_kind = {(row.kind, row.source): row for row in incidents}
    assert sorted(
        row.detection_count for row in incidents if row.kind is IncidentKind.ADVERSARIAL
    ) == [3, 5]
    assert max(
        row.peak_score for row in incidents if row.kind is IncidentKind.ADVERSARIAL
    ) == pytest.approx(0.9)
    assert set(by_kind) == {
        (IncidentKind.ADVERSARIAL, None),
        (IncidentKind.QUARANTINE, "src-0"),
        (IncidentKind.QUARANTINE, "src-1"),
    }
    assert [row.detection_count for row in incidents_of(database, other)] == [2]

    # One alert per incident reaches Alertmanager and, through its routing, the webhook.
    ids = {str(row.id) for row in incidents} | {
        str(row.id) for row in incidents_of(database, other)
    }

    def notified() -> set[str]:
        return {a["labels"]["incident_id"] for a in alertmanager.receiver.alerts()}

    await wait_until(lambda: ids <= notified(), "a webhook notification per incident")
    held = [a for a in alertmanager.active_alerts() if a["labels"]["incident_id"] in ids]
    assert sorted(a["labels"]["incident_id"] for a in held) == sorted(ids)
    quarantine_alert = next(a for a in held if a["labels"].get("source") == "src-0")
    assert quarantine_alert["labels"]["alertname"] == "AdvmonSourceQuarantined"
    assert quarantine_alert["labels"]["model"] == model
    assert quarantine_alert["labels"]["kind"] == "quarantine"
    adversarial = [
        a for a in held if a["labels"]["kind"] == "adversarial" and a["labels"]["model"] == model
    ]
    assert len(adversarial) == 2
    assert all(a["labels"]["severity"] == "critical" for a in adversarial)
    assert "detections" in adversarial[0]["annotations"]["summary"]

    # A second consumer group reads the same detections from the start: nothing changes.
    before = (incidents_of(database, model), detection_rows(database, model))
    _, replay_group = await start_incident_worker(
        worker_launcher,
        kafka_bootstrap,
        demo_detector,
        tmp_path,
        pg_url,
        topics=topics,
    )

    async def replayed() -> bool:
        offsets = await committed_offsets(kafka_bootstrap, replay_group, topics.detections)
        return sum(offsets.values()) >= len(values)

    deadline = time.monotonic() + WAIT_S
    while not await replayed():
        assert time.monotonic() < deadline, "the replaying worker did not catch up"
        await asyncio.sleep(0.5)
    assert (incidents_of(database, model), detection_rows(database, model)) == before


class TcpGate:
    """A loopback TCP proxy to PostgreSQL that the test can close and open."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def url_for(self, database_url: str) -> str:
        """``database_url``, which names PostgreSQL on loopback, through this gate."""
        return database_url.replace(f"127.0.0.1:{self.target_port}", f"127.0.0.1:{self.port}")

    async def open(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", port or self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for pipe in list(self._pipes):
            pipe.cancel()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        tasks = {
            asyncio.create_task(pipe(reader, upstream_writer)),
            asyncio.create_task(pipe(upstream_reader, writer)),
        }
        self._pipes |= tasks
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pipes -= tasks


async def closed_gate() -> TcpGate:
    """A gate to PostgreSQL, given a port and closed: the database is "down" until
    :meth:`TcpGate.open` opens it again on that port."""
    gate = TcpGate()
    await gate.open()
    await gate.close()
    return gate


async def test_no_detection_is_lost_while_the_database_is_unreachable(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    database: Engine,
    pg_url: str,
    tmp_path: Path,
) -> None:
    gate = await closed_gate()  # the database is "down" when the worker starts
    model = unique_name("model-outage")
    topics, group = await start_incident_worker(
        worker_launcher,
        kafka_bootstrap,
        demo_detector,
        tmp_path,
        gate.url_for(pg_url),
    )
    now = datetime.now(UTC)
    first = [detection(f"{model}-{i}", model, now + timedelta(seconds=i)) for i in range(30)]
    await produce(kafka_bootstrap, topics.detections, first)
    await asyncio.sleep(5)
    assert detection_rows(database, model) == 0
    committed = await committed_offsets(kafka_bootstrap, group, topics.detections)
    assert sum(committed.values()) == 0, "offsets were committed before the rows existed"

    await gate.open(gate.port)  # the database is back
    try:
        second = [
            detection(f"{model}-b{i}", model, now + timedelta(seconds=40 + i)) for i in range(20)
        ]
        await produce(kafka_bootstrap, topics.detections, second)
        await wait_until(
            lambda: detection_rows(database, model) == 50,
            "every detection stored once the database is back",
        )
        (incident,) = incidents_of(database, model)
        assert incident.detection_count == 50
    finally:
        await gate.close()
