"""A normal stop (SIGTERM) commits only finished work: nothing in flight is lost."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from monitor.incidents.storage.schema import upgrade
from tests.integration.kafka_io import committed_offsets, produce, unique_name
from tests.integration.test_incidents import (
    closed_gate,
    detection,
    detection_rows,
    start_incident_worker,
    wait_until,
)
from tests.integration.traffic import DemoDetector
from tests.integration.workers import WorkerLauncher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database(pg_url: str) -> Engine:
    engine = create_engine(pg_url)
    upgrade(engine)
    return engine


async def test_a_stop_while_the_database_is_down_loses_no_detection(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    database: Engine,
    pg_url: str,
    tmp_path: Path,
) -> None:
    gate = await closed_gate()  # the database is "down"
    gated_url = gate.url_for(pg_url)
    model = unique_name("model-sigterm")
    topics, group = await start_incident_worker(
        worker_launcher, kafka_bootstrap, demo_detector, tmp_path, gated_url
    )
    worker = worker_launcher.workers[-1]
    now = datetime.now(UTC)
    waiting = [detection(f"{model}-{i}", model, now + timedelta(seconds=i)) for i in range(30)]
    await produce(kafka_bootstrap, topics.detections, waiting)
    await asyncio.sleep(5)  # the incident stage holds them, retrying
    assert detection_rows(database, model) == 0

    await asyncio.to_thread(worker.stop)  # SIGTERM mid-batch
    committed = await committed_offsets(kafka_bootstrap, group, topics.detections)
    assert sum(committed.values()) == 0, f"the stop committed unstored detections: {committed}"

    await gate.open(gate.port)  # the database is back; a new worker of the group takes over
    try:
        await start_incident_worker(
            worker_launcher,
            kafka_bootstrap,
            demo_detector,
            tmp_path,
            gated_url,
            app_id=group,
            topics=topics,
        )
        await wait_until(
            lambda: detection_rows(database, model) == 30,
            "every detection stored after the restart",
        )
    finally:
        await gate.close()
