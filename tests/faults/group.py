"""Workers of one consumer group under fault: who holds what, and detections in the database."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine, func, select

from monitor.incidents.storage.models import DetectionRow, Incident
from tests.integration.kafka_io import read_topic
from tests.integration.workers import WorkerProcess

__all__ = [
    "StoredDetections",
    "emitted_detections",
    "group_holds",
    "stored_detections",
    "wait_stored",
]


async def group_holds(
    workers: list[WorkerProcess], topic: str, partitions: int, *, timeout_s: float
) -> bool:
    """Wait until every worker answers ``/healthz`` 200 and together they hold every
    partition of ``topic``, each some; False after ``timeout_s``."""
    wanted = set(range(partitions))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shares = []
        for worker in workers:
            page = await worker.healthz() if worker.running else None
            if page is None or page.status != 200:
                break
            shares.append(page.assigned(topic))
        else:
            if all(shares) and set().union(*shares) == wanted:
                return True
        await asyncio.sleep(0.2)
    return False


async def emitted_detections(bootstrap: str, topic: str) -> tuple[int, set[str]]:
    """Records on a detections topic, and the distinct event ids they name."""
    records = await read_topic(bootstrap, topic)
    return len(records), {orjson.loads(r.value)["event_id"] for r in records}


@dataclass(frozen=True)
class StoredDetections:
    """What the database holds for one model."""

    rows: int
    event_ids: set[str]
    duplicate_rows: int
    """Rows beyond the first for one (kind, event id)."""
    incidents: int
    incident_groups: int
    """Distinct (kind, source) of those incidents: one incident each when none is doubled."""
    counted: int
    """The incidents' detection counts, summed."""


def stored_detections(engine: Engine, model: str) -> StoredDetections:
    """Read the detections and incidents stored for ``model``."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(DetectionRow.kind, DetectionRow.event_id).where(DetectionRow.model_id == model)
        ).all()
        incidents = connection.execute(
            select(Incident.kind, Incident.source, Incident.detection_count).where(
                Incident.model_id == model
            )
        ).all()
        groups = connection.scalar(
            select(func.count()).select_from(
                select(Incident.kind, Incident.source)
                .where(Incident.model_id == model)
                .group_by(Incident.kind, Incident.source)
                .subquery()
            )
        )
    keys = [(row.kind, row.event_id) for row in rows]
    return StoredDetections(
        rows=len(rows),
        event_ids={row.event_id for row in rows},
        duplicate_rows=len(keys) - len(set(keys)),
        incidents=len(incidents),
        incident_groups=int(groups or 0),
        counted=sum(i.detection_count for i in incidents),
    )


async def wait_stored(
    engine: Engine, model: str, wanted: set[str], *, timeout_s: float
) -> StoredDetections:
    """Poll the database until every event id in ``wanted`` has a stored detection."""
    deadline = time.monotonic() + timeout_s
    while True:
        stored = await asyncio.to_thread(stored_detections, engine, model)
        if wanted <= stored.event_ids or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(1.0)
