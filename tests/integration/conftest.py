"""Fixtures for end-to-end tests of ``advmon worker`` against the session's real broker.

- ``demo_detector``: the demo digit classifier and its detector, calibrated once.
- ``worker_launcher``: starts ``advmon worker`` subprocesses with a config, an app id
  and a web port, and stops every one of them when the test ends.

When a test fails, the log of every worker that was running during it, or that it
started, is added to the failure report.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.integration.traffic import DemoDetector, calibrate_demo_detector
from tests.integration.workers import STARTED_WORKERS, WorkerLauncher

_LOG_LINES_SHOWN = 250

_TEST_STARTED = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note when the test began, to find the workers it started."""
    item.stash[_TEST_STARTED] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the logs of the workers involved in a failed test to its report."""
    report: pytest.TestReport = yield
    if report.failed:
        since = item.stash.get(_TEST_STARTED, 0.0)
        for worker in STARTED_WORKERS:
            if worker.running or worker.started_at >= since:
                lines = worker.log().splitlines()
                shown = "\n".join(lines[-_LOG_LINES_SHOWN:])
                cut = (
                    f" (last {_LOG_LINES_SHOWN} of {len(lines)} lines)"
                    if len(lines) > _LOG_LINES_SHOWN
                    else ""
                )
                report.sections.append(
                    (f"advmon worker {worker.name}: {worker.log_path}{cut}", shown)
                )
    return report


@pytest.fixture(scope="session")
def demo_detector(tmp_path_factory: pytest.TempPathFactory) -> DemoDetector:
    """The demo digit MLP and its feature-squeezing detector, calibrated on CPU once."""
    return calibrate_demo_detector(tmp_path_factory.mktemp("demo-detector"))


@pytest.fixture
def worker_launcher(kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerLauncher]:
    """Start workers for one test; all are stopped when it ends."""
    launcher = WorkerLauncher(kafka_bootstrap, tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()
