"""Fixtures for the monitor tests: the demo digit model trained once, and event files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from detectors import calibrate_detector
from monitor.cli._console import console
from monitor.demo.model import load_digits_data, mlp_to_onnx, train_mlp
from tests.monitor.cli_support import N_BENIGN, DemoModel, Traffic, image_events, write_events
from tests.monitor.database_support import fresh_schema


@pytest.fixture(scope="session", autouse=True)
def _isolated_settings() -> Iterator[None]:
    """No ADVMON_* variable of the machine running the tests leaks into a test."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith("ADVMON_"):
                patch.delenv(name)
        yield


@pytest.fixture(scope="session", autouse=True)
def _wide_console() -> Iterator[None]:
    """Keep advmon's console from wrapping long paths in the middle of a word."""
    before = console.width
    console.width = 400
    yield
    console.width = before


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> DemoModel:
    """The demo digit MLP trained once per session, exported to ONNX."""
    data = load_digits_data()
    weights = train_mlp(data.train_x, data.train_y)
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    onnx.save(mlp_to_onnx(weights), path)
    return DemoModel(data, weights, path)


@pytest.fixture(scope="session")
def benign_events(demo_model: DemoModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``N_BENIGN`` benign calibration events, half nested lists, half tensor payloads."""
    images = demo_model.data.calibration_x[:N_BENIGN]
    path = tmp_path_factory.mktemp("events") / "benign.jsonl"
    return write_events(path, image_events(images, "benign"))


@pytest.fixture(scope="session")
def traffic(demo_model: DemoModel, tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    """Held-out clean digits and noisy copies of them, to be scored."""
    clean = demo_model.data.test_x[:60]
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, clean.shape)
    noisy = np.clip(clean + noise, 0.0, 1.0).astype(np.float32)
    lines = image_events(clean, "clean", tensor_every=3) + image_events(noisy, "noisy")
    path = write_events(tmp_path_factory.mktemp("events") / "traffic.jsonl", lines)
    event_ids = [f"clean-{i}" for i in range(len(clean))] + [
        f"noisy-{i}" for i in range(len(noisy))
    ]
    return Traffic(path, event_ids, np.concatenate([clean, noisy]))


@pytest.fixture
def runner() -> CliRunner:
    """A click runner that keeps stdout and stderr apart."""
    return CliRunner()


@pytest.fixture(scope="session")
def detector_path(demo_model: DemoModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detector for the demo model, calibrated once on its calibration split."""
    x = demo_model.data.calibration_x
    config = calibrate_detector(
        demo_model.path, lambda: (x[i : i + 64] for i in range(0, len(x), 64)), device="cpu"
    )
    path = tmp_path_factory.mktemp("detector") / "digits.json"
    config.save(path)
    return path


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A fresh, empty schema of the session's PostgreSQL database (see ``fresh_schema``)."""
    with fresh_schema(pg_url) as name:
        yield name
