"""What a fault scenario runs against, and the worker config it starts from.

:class:`Rig` bundles the session's broker and database, the demo detector, the worker
launcher, the figure log and the test's folder (the ``rig`` fixture builds it);
:func:`configure_scenario` creates one model's inference and output topics and writes a
worker config that scores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from tests.faults.figures import FigureLog
from tests.integration.kafka_io import OutputTopics, create_topics, unique_name
from tests.integration.traffic import DemoDetector
from tests.integration.workers import ModelEntry, WorkerLauncher, write_worker_config

__all__ = ["Rig", "ScenarioConfig", "configure_scenario"]


@dataclass(frozen=True)
class Rig:
    """The session's services and the test's fixtures a scenario uses."""

    bootstrap: str
    detector: DemoDetector
    launcher: WorkerLauncher
    database: Engine
    database_url: str
    figures: FigureLog
    folder: Path


@dataclass(frozen=True)
class ScenarioConfig:
    """A model, its inference topic, the output topics, and a worker config for them."""

    model: str
    inference: str
    topics: OutputTopics
    config: Path
    app_id: str


async def configure_scenario(
    bootstrap: str, detector: DemoDetector, folder: Path, name: str, partitions: int
) -> ScenarioConfig:
    """Create ``name``'s topics (``partitions`` inference partitions) on ``bootstrap`` and
    write ``folder/worker.yaml``: the demo detector on one model, quarantine out of the way.
    """
    model = unique_name(name)
    inference = unique_name(f"{name}-inference")
    await create_topics(bootstrap, {inference: partitions})
    topics = await OutputTopics.create(bootstrap, name)
    config = write_worker_config(
        folder / "worker.yaml",
        detector=detector.path,
        models=[ModelEntry(model, [inference])],
        topics=topics,
        quarantine={"limit": 10_000_000},
    )
    return ScenarioConfig(model, inference, topics, config, unique_name(name))
