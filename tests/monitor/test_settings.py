"""ADVMON_* environment settings and how the CLI uses them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from monitor.cli import main, offline
from monitor.settings import Settings
from tests.monitor.cli_support import DemoModel, Traffic, normalized


def test_defaults_without_environment() -> None:
    settings = Settings()
    assert settings.scoring.device == "auto"
    assert settings.scoring.batch_size == 256
    assert settings.scoring.intra_op_threads is None
    assert settings.log_level == "WARNING"


def test_scoring_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVMON_SCORING__DEVICE", "cpu")
    monkeypatch.setenv("ADVMON_SCORING__BATCH_SIZE", "32")
    monkeypatch.setenv("ADVMON_SCORING__INTRA_OP_THREADS", "2")
    monkeypatch.setenv("ADVMON_LOG_LEVEL", "DEBUG")
    settings = Settings()
    assert settings.scoring.device == "cpu"
    assert settings.scoring.batch_size == 32
    assert settings.scoring.intra_op_threads == 2
    assert settings.log_level == "DEBUG"


class _Recorder:
    """Wraps an offline entry point and records the keyword arguments it got."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.function(*args, **kwargs)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Recorder]:
    """The CLI's calibrate_file and score_file, recording how they are called."""
    recorders = {
        name: _Recorder(getattr(offline, name)) for name in ("calibrate_file", "score_file")
    }
    for name, recorder in recorders.items():
        monkeypatch.setattr(offline, name, recorder)
    return recorders


def _run_both(
    runner: CliRunner,
    demo_model: DemoModel,
    benign_events: Path,
    traffic: Traffic,
    tmp_path: Path,
    *options: str,
) -> None:
    detector = tmp_path / "detector.json"
    calibrate = [
        "calibrate",
        "--model",
        str(demo_model.path),
        "--events",
        str(benign_events),
        "--squeezers",
        "preset",
    ]
    result = runner.invoke(main, [*calibrate, "--out", str(detector), *options])
    assert result.exit_code == 0, result.output
    score = ["score", "--detector", str(detector), "--events", str(traffic.path)]
    result = runner.invoke(main, [*score, "--out", str(tmp_path / "scores.jsonl"), *options])
    assert result.exit_code == 0, result.output
    assert "on CPUExecutionProvider" in normalized(result.stderr)


def test_cli_uses_the_environment_when_options_are_omitted(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    recorded: dict[str, _Recorder],
    demo_model: DemoModel,
    benign_events: Path,
    traffic: Traffic,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("ADVMON_SCORING__DEVICE", "cpu")
    monkeypatch.setenv("ADVMON_SCORING__BATCH_SIZE", "17")
    _run_both(runner, demo_model, benign_events, traffic, tmp_path)
    for recorder in recorded.values():
        (call,) = recorder.calls
        assert (call["device"], call["batch_size"]) == ("cpu", 17)
    detector = json.loads((tmp_path / "detector.json").read_text(encoding="utf-8"))
    assert detector["calibration"]["provider"] == "CPUExecutionProvider"


def test_cli_options_override_the_environment(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    recorded: dict[str, _Recorder],
    demo_model: DemoModel,
    benign_events: Path,
    traffic: Traffic,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("ADVMON_SCORING__DEVICE", "cuda")
    monkeypatch.setenv("ADVMON_SCORING__BATCH_SIZE", "17")
    _run_both(
        runner, demo_model, benign_events, traffic, tmp_path, "--device", "cpu", "--batch-size", "5"
    )
    for recorder in recorded.values():
        (call,) = recorder.calls
        assert (call["device"], call["batch_size"]) == ("cpu", 5)


def test_cli_defaults_without_environment(
    runner: CliRunner,
    recorded: dict[str, _Recorder],
    demo_model: DemoModel,
    benign_events: Path,
    traffic: Traffic,
    tmp_path: Path,
) -> None:
    _run_both(runner, demo_model, benign_events, traffic, tmp_path, "--device", "cpu")
    for recorder in recorded.values():
        (call,) = recorder.calls
        assert call["batch_size"] == 256


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("ADVMON_SCORING__DEVICE", "tpu", "ADVMON_SCORING__DEVICE='tpu'"),
        ("ADVMON_SCORING__BATCH_SIZE", "0", "ADVMON_SCORING__BATCH_SIZE='0'"),
        ("ADVMON_SCORING__BATCH_SIZE", "many", "ADVMON_SCORING__BATCH_SIZE='many'"),
        ("ADVMON_SCORING__BATCHSIZE", "64", "unknown setting ADVMON_SCORING__BATCHSIZE"),
        ("ADVMON_LOGLEVEL", "DEBUG", "unknown setting ADVMON_LOGLEVEL"),
        ("ADVMON_KAFKA_BOOTSTRAP", "broker:9092", "unknown setting ADVMON_KAFKA_BOOTSTRAP"),
        ("ADVMON_LOG_LEVEL", "LOUD", "ADVMON_LOG_LEVEL='LOUD'"),
    ],
)
def test_invalid_environment_gives_a_clear_error(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    calibrated_for_settings: Path,
    traffic: Traffic,
    tmp_path: Path,
    variable: str,
    value: str,
    field: str,
) -> None:
    monkeypatch.setenv(variable, value)
    out = tmp_path / "scores.jsonl"
    args = ["score", "--detector", str(calibrated_for_settings), "--events", str(traffic.path)]
    result = runner.invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stderr.startswith(("Error: invalid setting ", "Error: unknown setting "))
    assert field in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def calibrated_for_settings(
    demo_model: DemoModel, benign_events: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A detector for the settings tests (calibrated with default settings)."""
    detector = tmp_path_factory.mktemp("settings") / "detector.json"
    args = [
        "calibrate",
        "--model",
        str(demo_model.path),
        "--events",
        str(benign_events),
        "--squeezers",
        "preset",
    ]
    result = CliRunner().invoke(main, [*args, "--out", str(detector), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return detector


def test_instance_id_follows_kafkas_rule_for_group_instance_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ADVMON_WORKER__INSTANCE_ID", "advmon-worker-0.eu_1")
    assert Settings().worker.instance_id == "advmon-worker-0.eu_1"
    for bad in ("pod 0", "a/b", "host:6066", "x" * 250, ""):
        monkeypatch.setenv("ADVMON_WORKER__INSTANCE_ID", bad)
        with pytest.raises(ValueError, match="instance_id"):
            Settings()


def test_the_drift_checkpoint_key_is_a_secret_of_32_or_more_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().drift.checkpoint_key_bytes() is None
    monkeypatch.setenv("ADVMON_DRIFT__CHECKPOINT_KEY", "k" * 64)
    settings = Settings()
    assert settings.drift.checkpoint_key_bytes() == b"k" * 64
    assert "k" * 64 not in repr(settings)
    monkeypatch.setenv("ADVMON_DRIFT__CHECKPOINT_KEY", "k" * 31)
    with pytest.raises(ValueError, match="checkpoint_key"):
        Settings()
