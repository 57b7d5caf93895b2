"""Fixtures of the fault-injection suite.

The workers, the demo detector and the worker-log reports are the integration suite's
(:mod:`tests.integration.conftest`); ``figures`` records what a scenario measured
(:mod:`tests.faults.figures`); ``rig`` bundles what a scenario runs against
(:class:`tests.faults.scenario.Rig`).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from monitor.incidents.storage.schema import upgrade
from tests.faults.figures import EVENTS_VARIABLE, REPORT_VARIABLE, FigureLog
from tests.faults.scenario import Rig
from tests.integration.conftest import (  # noqa: F401  (fixtures and hooks, re-used here)
    demo_detector,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    worker_launcher,
)
from tests.integration.traffic import DemoDetector
from tests.integration.workers import WorkerLauncher


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path: Path) -> FigureLog:
    """Where the test writes its figures: ``faults.jsonl`` here, and ``$ADVMON_FAULTS_REPORT``."""
    shared = os.environ.get(REPORT_VARIABLE)
    events = os.environ.get(EVENTS_VARIABLE)
    variables = [f"{EVENTS_VARIABLE}={events}"] if events else []
    command = shlex.join(["pytest", *request.config.invocation_params.args])
    return FigureLog(
        tmp_path / "faults.jsonl",
        Path(shared) if shared else None,
        request.node.nodeid,
        " ".join([*variables, command]),
    )


@pytest.fixture(scope="module")
def database(pg_url: str) -> Engine:
    """The session's database, migrated to the newest schema."""
    engine = create_engine(pg_url)
    upgrade(engine)
    return engine


@pytest.fixture
def rig(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,  # noqa: F811  (the fixtures imported above)
    worker_launcher: WorkerLauncher,  # noqa: F811
    database: Engine,
    pg_url: str,
    figures: FigureLog,
    tmp_path: Path,
) -> Rig:
    """The session's broker and database, the demo detector, a worker launcher, the
    figure log and the test's folder."""
    return Rig(kafka_bootstrap, demo_detector, worker_launcher, database, pg_url, figures, tmp_path)
