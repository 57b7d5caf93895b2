"""Starting a worker: ``/healthz`` once it consumes, and clean refusals of bad configs."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from detectors import Detector, ExecutionProviderError
from tests.integration.kafka_io import OutputTopics, create_topics, unique_name
from tests.integration.traffic import DemoDetector
from tests.integration.workers import (
    HealthPage,
    ModelEntry,
    WorkerLauncher,
    WorkerProcess,
    worker_environment,
    write_worker_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.embedded_broker]

INFERENCE_PARTITIONS = 3
START_TIMEOUT_S = 60.0


async def _watch_startup(
    worker: WorkerProcess, topic: str, *, timeout_s: float = START_TIMEOUT_S
) -> list[HealthPage]:
    """Poll ``/healthz`` from the worker's start until it holds every partition of ``topic``."""
    pages: list[HealthPage] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.assert_running()
        page = await worker.healthz()
        if page is not None:
            pages.append(page)
            if page.status == 200 and page.assigned(topic) == set(range(INFERENCE_PARTITIONS)):
                return pages
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker never held all of {topic}; last pages: {pages[-3:]}")


async def _start_watched_worker(
    kafka_bootstrap: str, demo_detector: DemoDetector, launcher: WorkerLauncher, folder: Path
) -> tuple[str, OutputTopics, list[HealthPage]]:
    inference = unique_name("health-inference")
    await create_topics(kafka_bootstrap, {inference: INFERENCE_PARTITIONS})
    topics = await OutputTopics.create(kafka_bootstrap, "health")
    config = write_worker_config(
        folder / "worker.yaml",
        detector=demo_detector.path,
        models=[ModelEntry("digits", [inference])],
        topics=topics,
    )
    worker = launcher.start("health", config)
    return inference, topics, await _watch_startup(worker, inference)


async def test_healthz_reports_the_assigned_partitions_once_consuming(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
) -> None:
    inference, topics, pages = await _start_watched_worker(
        kafka_bootstrap, demo_detector, worker_launcher, tmp_path
    )
    last = pages[-1]
    assert last.status == 200
    assert last.body["status"] == "ok"
    assert last.assigned(inference) == set(range(INFERENCE_PARTITIONS))
    # The internal source-flags topic is consumed by the same worker.
    assert last.assigned(topics.source_flags)
    # Still healthy a moment later: no rebalance loop.
    await asyncio.sleep(1.0)
    again = await worker_launcher.workers[0].healthz()
    assert again is not None
    assert again.status == 200
    assert again.assigned(inference) == set(range(INFERENCE_PARTITIONS))


async def test_healthz_is_not_ok_before_the_worker_holds_partitions(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
) -> None:
    """A readiness probe must not pass while the worker has not joined its group yet."""
    inference, _, pages = await _start_watched_worker(
        kafka_bootstrap, demo_detector, worker_launcher, tmp_path
    )
    premature = [page.body for page in pages if page.status == 200 and not page.assigned(inference)]
    assert premature == [], (
        f"/healthz answered 200 {len(premature)} time(s) before the worker held any "
        f"partition of {inference}, first: {premature[0]}"
    )


def _config_with_missing_detector(folder: Path, detector: DemoDetector) -> Path:
    return _config(folder, folder / "no-such-detector.json")


def _config_with_unknown_key(folder: Path, detector: DemoDetector) -> Path:
    path = _config(folder, detector.path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "quarantine:\n  limt: 5\n", encoding="utf-8")
    return path


def _config_with_misspelt_section(folder: Path, detector: DemoDetector) -> Path:
    path = _config(folder, detector.path)
    path.write_text(
        path.read_text(encoding="utf-8").replace("models:", "modles:"), encoding="utf-8"
    )
    return path


def _config_with_changed_model(folder: Path, detector: DemoDetector) -> Path:
    copy = folder / "detector"
    shutil.copytree(detector.path.parent, copy)
    with (copy / "model.onnx").open("ab") as model:
        model.write(b"\0")
    return _config(folder, copy / detector.path.name)


def _missing_config(folder: Path, detector: DemoDetector) -> Path:
    return folder / "no-such-config.yaml"


def _config_with_bad_yaml(folder: Path, detector: DemoDetector) -> Path:
    path = folder / "worker.yaml"
    path.write_text("models:\n  - id: digits\n   detector: [unclosed\n", encoding="utf-8")
    return path


def _config(folder: Path, detector: Path) -> Path:
    topics = OutputTopics(
        "bad-decisions", "bad-dead-letter", "bad-detections", "bad-flags", "bad-signals"
    )
    return write_worker_config(
        folder / "worker.yaml",
        detector=detector,
        models=[ModelEntry("digits", ["bad-inference"])],
        topics=topics,
    )


ConfigMaker = Callable[[Path, DemoDetector], Path]


def _the_one_error_line(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run ``advmon worker ARGS``; it must fail with one ``Error:`` line and no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "worker", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    return lines[0]


@pytest.mark.parametrize(
    ("make_config", "expected"),
    [
        pytest.param(_config_with_missing_detector, "no-such-detector.json", id="missing-detector"),
        pytest.param(_config_with_unknown_key, "limt", id="unknown-key"),
        pytest.param(_config_with_misspelt_section, "modles", id="misspelt-section"),
        pytest.param(_config_with_changed_model, "changed since calibration", id="changed-model"),
        pytest.param(_missing_config, "no-such-config.yaml", id="missing-config"),
        pytest.param(_config_with_bad_yaml, "worker.yaml", id="bad-yaml"),
    ],
)
def test_a_bad_config_stops_the_worker_with_one_clear_line(
    make_config: ConfigMaker, expected: str, demo_detector: DemoDetector, tmp_path: Path
) -> None:
    config = make_config(tmp_path, demo_detector)
    # No broker is needed: the config is checked before anything connects.
    env = worker_environment(kafka__bootstrap="127.0.0.1:9", worker__app_id=unique_name("bad"))
    line = _the_one_error_line(["--config", str(config), "--web-port", "9"], env, tmp_path)
    assert expected in line


def test_a_misspelt_setting_stops_the_worker_with_one_clear_line(
    demo_detector: DemoDetector, tmp_path: Path
) -> None:
    config = _config(tmp_path, demo_detector.path)
    env = worker_environment(kafka_bootstrap="127.0.0.1:9")  # one underscore: no such setting
    line = _the_one_error_line(["--config", str(config)], env, tmp_path)
    assert "ADVMON_KAFKA_BOOTSTRAP" in line


def _cuda_unusable(detector: DemoDetector) -> bool:
    try:
        Detector.from_file(detector.path, device="cuda")
    except ExecutionProviderError:
        return True
    return False


async def test_an_unusable_device_stops_the_worker_with_one_clear_line(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
) -> None:
    """``ADVMON_SCORING__DEVICE=cuda`` on a machine whose CUDA provider cannot start."""
    if not _cuda_unusable(demo_detector):
        pytest.skip("CUDA works here; the error case needs a machine without a usable GPU")
    inference = unique_name("device-inference")
    await create_topics(kafka_bootstrap, {inference: 1})
    config = write_worker_config(
        tmp_path / "worker.yaml",
        detector=demo_detector.path,
        models=[ModelEntry("digits", [inference])],
        topics=await OutputTopics.create(kafka_bootstrap, "device"),
    )
    worker = worker_launcher.start("device", config, scoring__device="cuda")
    assert worker.process is not None
    code = await asyncio.to_thread(worker.process.wait, START_TIMEOUT_S)
    output = worker.log()
    assert code != 0, output
    assert "Traceback" not in output, "the worker printed a traceback for a settings error"
    errors = [line for line in output.splitlines() if "cuda" in line.lower()]
    assert errors, output
