"""``advmon evaluate`` as a user runs it: the files, the release gate and its exit statuses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result

from monitor.cli import main
from monitor.demo.model import MLPClassifierWeights, load_digits_data, mlp_to_onnx, train_mlp
from monitor.evaluate import EXIT_INCOMPARABLE, EXIT_REGRESSION, load_report
from monitor.offline import calibrate_file
from tests.evaluate.models import ModelCase, Split, cancer_tabular, digits_mlp

#: Three attacks, one of each kind, keep each run to seconds.
ATTACKS = "square,hopskipjump,fgsm"


@dataclass(frozen=True)
class Release:
    """A model, a detector calibrated for it and its labelled held-out events."""

    model: Path
    detector: Path
    events: Path


def _evaluate(release: Release, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            str(release.model),
            "--events",
            str(release.events),
            "--detector",
            str(release.detector),
            "--attacks",
            ATTACKS,
            "--out",
            str(out),
            *extra,
        ],
    )


def _release(folder: Path, case: ModelCase) -> Release:
    folder.mkdir(parents=True, exist_ok=True)
    benign = case.write_events(folder / "benign.jsonl", *case.calibration)
    events = case.write_events(folder / "labelled.jsonl", *case.test)
    detector = folder / "detector.json"
    calibrate_file(case.model_path, benign, detector, squeezer_spec="bit_depth:2", device="cpu")
    return Release(case.model_path, detector, events)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    folder = tmp_path_factory.mktemp("release")
    return _release(folder, digits_mlp(folder))


@pytest.fixture(scope="module")
def baseline(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("baseline")
    result = _evaluate(release, out)
    assert result.exit_code == 0, result.output
    return out / "report.json"


def test_writes_the_three_files_and_a_valid_report(release: Release, baseline: Path) -> None:
    report = load_report(baseline)  # validates against the committed schema
    assert {p.name for p in baseline.parent.iterdir()} == {
        "report.json",
        "report.html",
        "report.md",
    }
    assert sorted({row["name"] for row in report["attacks"]}) == sorted(ATTACKS.split(","))
    assert report["detector"]["squeezers"] == "bit_depth:2"
    assert "--attacks square,hopskipjump,fgsm" in report["settings"]["command"]
    # The clean accuracy is the model's own on the events, computed apart from advmon.
    session = ort.InferenceSession(str(release.model), providers=["CPUExecutionProvider"])
    lines = [json.loads(line) for line in release.events.read_text().splitlines()]
    x = np.asarray([line["input"] for line in lines], dtype=np.float32)
    y = np.asarray([line["label"] for line in lines])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert report["clean"]["n"] == len(y)
    assert report["clean"]["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == y)))


def test_the_gate_passes_on_the_same_release(
    release: Release, baseline: Path, tmp_path: Path
) -> None:
    result = _evaluate(release, tmp_path, "--baseline", str(baseline))
    assert result.exit_code == 0, result.output
    assert "release gate passed" in result.stderr
    assert "regression" not in result.stderr.replace("regressions", "")


def test_the_gate_fails_on_a_looser_detector(
    release: Release, baseline: Path, tmp_path: Path
) -> None:
    detector = json.loads(release.detector.read_text())
    detector["threshold"] *= 3
    looser = tmp_path / "looser.json"
    looser.write_text(json.dumps(detector))
    # The detector file names its model relative to its own folder.
    detector["model"]["path"] = str(release.model)
    looser.write_text(json.dumps(detector))
    weaker = Release(release.model, looser, release.events)

    result = _evaluate(weaker, tmp_path / "out", "--baseline", str(baseline))

    assert result.exit_code == EXIT_REGRESSION, result.output
    assert "release gate failed" in result.stderr
    assert "detection_rate" in result.stderr
    # The report is written whatever the verdict, and says it failed.
    assert "failed" in (tmp_path / "out" / "report.md").read_text()


def test_the_gate_fails_on_a_weakened_model(baseline: Path, tmp_path: Path) -> None:
    data = load_digits_data(0)
    trained = train_mlp(data.train_x, data.train_y, seed=0)
    noise = np.random.default_rng(1).normal(0.0, 0.6 * trained.w1.std(), trained.w1.shape)
    weakened = MLPClassifierWeights(
        (trained.w1 + noise).astype(np.float32), trained.b1, trained.w2, trained.b2
    )
    model = tmp_path / "weakened.onnx"
    onnx.save(mlp_to_onnx(weakened), model)
    weak_case = ModelCase(
        name="digits-mlp",
        model_path=model,
        input_range=(0.0, 1.0),
        output_kind="logits",
        train=Split(data.train_x, data.train_y),
        calibration=Split(data.calibration_x, data.calibration_y),
        test=Split(data.test_x, data.test_y),
    )
    weak = _release(tmp_path / "weak", weak_case)

    result = _evaluate(weak, tmp_path / "out", "--baseline", str(baseline))

    assert result.exit_code == EXIT_REGRESSION, result.output
    assert "clean_accuracy" in result.stderr or "robust_accuracy" in result.stderr


def test_a_baseline_of_another_model_is_incomparable(
    release: Release, baseline: Path, tmp_path: Path
) -> None:
    tabular = cancer_tabular(tmp_path)
    events = tabular.write_events(tmp_path / "labelled.jsonl", *tabular.test)
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            str(tabular.model_path),
            "--events",
            str(events),
            "--attacks",
            "hopskipjump",
            "--eps",
            "l2=10,50",
            "--out",
            str(tmp_path / "out"),
            "--baseline",
            str(baseline),
        ],
    )
    assert result.exit_code == EXIT_INCOMPARABLE, result.output
    assert "incomparable" in result.stderr


def test_a_tabular_model_needs_its_eps(tmp_path: Path) -> None:
    tabular = cancer_tabular(tmp_path)
    events = tabular.write_events(tmp_path / "labelled.jsonl", *tabular.test)
    command = ["evaluate", "--model", str(tabular.model_path), "--events", str(events)]
    result = CliRunner().invoke(main, [*command, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "share no unit" in result.stderr
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_broken_baseline_fails_before_any_attack(release: Release, tmp_path: Path) -> None:
    broken = tmp_path / "report.json"
    broken.write_text('{"format": "something else"}')
    result = _evaluate(release, tmp_path / "out", "--baseline", str(broken))
    assert result.exit_code == 1
    assert "Error:" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--eps", "linf=0"], "positive"),
        (["--eps", "l3=0.1"], "NORM=LIST"),
        (["--eps", "linf=a"], "numbers"),
        (["--attacks", "nosuchattack"], "nosuchattack"),
        (["--max-drop", "2"], "max-drop"),
        (["--budget", "huge"], "budget"),
        (["--max-drop", "nan"], "not nan"),
        (["--eps", "linf=2"], "larger than any perturbation"),
        (["--input-range", "0,0.5"], "is not the detector's"),
    ],
)
def test_bad_options_are_usage_errors(
    release: Release, tmp_path: Path, options: list[str], message: str
) -> None:
    result = _evaluate(release, tmp_path / "out", *options)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_logs_to_an_mlflow_run(
    release: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("release"))

    result = _evaluate(release, tmp_path / "out", "--mlflow-run-id", run.info.run_id)

    assert result.exit_code == 0, result.output
    logged = client.get_run(run.info.run_id).data.metrics
    report = load_report(tmp_path / "out" / "report.json")
    assert logged["clean_accuracy"] == pytest.approx(report["clean"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "robustness_report")}
    assert artifacts == {
        "robustness_report/report.json",
        "robustness_report/report.html",
        "robustness_report/report.md",
    }


def test_what_would_fail_after_the_attacks_fails_before_them(
    release: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    occupied = tmp_path / "file"
    occupied.write_text("")
    result = _evaluate(release, occupied / "out")
    assert result.exit_code == 2, result.output
    assert "--out" in result.stderr

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result = _evaluate(release, tmp_path / "out", "--mlflow-run-id", "0" * 32)
    assert result.exit_code == 1, result.output
    assert "no MLflow run" in result.stderr
    # Neither got as far as the plan of attacks.
    assert "steps, estimated" not in result.stderr
    assert not (tmp_path / "out" / "report.json").exists()


def test_event_text_is_never_read_as_console_markup(release: Release, tmp_path: Path) -> None:
    lines = release.events.read_bytes().splitlines()[:20]
    hostile = tmp_path / "d[red]x" / "events.jsonl"
    hostile.parent.mkdir()
    bad_label = dict(json.loads(lines[0]), label="[/]")
    hostile.write_bytes(b"\n".join([*lines, json.dumps(bad_label).encode()]))
    command = ["evaluate", "--model", str(release.model), "--events", str(hostile)]
    result = CliRunner().invoke(
        main, [*command, "--attacks", "fgsm", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert "d[red]x" in result.stderr
    assert "[/]" in result.stderr
