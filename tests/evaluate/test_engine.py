"""``evaluate``: the robustness report of a model on labelled clean events (small budget)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest

from detectors import Detector, ModelHashMismatchError, calibrate_detector
from monitor.evaluate._engine import evaluate
from monitor.evaluate._progress import PlannedStep
from monitor.evaluate._types import Evaluation
from monitor.offline import BadLine
from tests.evaluate.models import ModelCase, cancer_tabular, digits28_cnn, digits_mlp

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas/json/robustness_report.schema.json").read_text()
)
CNN_ATTACKS = "square,hopskipjump,pgd"
TIMINGS = ("created_at", "seconds", "cost")
"""Report fields that measure the run rather than the model."""


@dataclass(frozen=True)
class Evaluated:
    """A model, its events file (and detector), and the evaluation of them."""

    case: ModelCase
    events: Path
    detector: Path | None
    evaluation: Evaluation

    @property
    def report(self) -> dict[str, Any]:
        return self.evaluation.report


def _detector(case: ModelCase, folder: Path) -> Path:
    calibration_x = case.calibration.x
    config = calibrate_detector(
        case.model_path,
        lambda: [calibration_x],
        output_kind=case.output_kind,
        input_range=case.input_range,
        device="cpu",
    )
    path = folder / "detector.json"
    config.save(path)
    return path


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    """The demo's digits MLP with a detector, every default attack."""
    folder = tmp_path_factory.mktemp("mlp")
    case = digits_mlp(folder)
    events = case.write_events(folder / "events.jsonl", case.test.x[:150], case.test.y[:150])
    detector = _detector(case, folder)
    evaluation = evaluate(case.model_path, events, detector_path=detector, seed=0)
    return Evaluated(case, events, detector, evaluation)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    """The 28×28 digits CNN without a detector."""
    folder = tmp_path_factory.mktemp("cnn")
    case = digits28_cnn(folder)
    events = case.write_events(folder / "events.jsonl", case.test.x[:40], case.test.y[:40])
    evaluation = evaluate(case.model_path, events, attacks=CNN_ATTACKS, seed=0)
    return Evaluated(case, events, None, evaluation)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    """The skl2onnx breast-cancer pipeline with a detector, ε in feature units."""
    folder = tmp_path_factory.mktemp("cancer")
    case = cancer_tabular(folder)
    events = case.write_events(folder / "events.jsonl", case.test.x[:80], case.test.y[:80])
    config = calibrate_detector(
        case.model_path, lambda: [case.calibration.x], output_kind="probabilities", device="cpu"
    )
    detector = folder / "detector.json"
    config.save(detector)
    evaluation = evaluate(
        case.model_path,
        events,
        detector_path=detector,
        eps={"linf": [2.0, 10.0, 50.0], "l2": [5.0, 25.0, 100.0]},
        seed=0,
    )
    return Evaluated(case, events, detector, evaluation)


def _by_attack(report: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in report["attacks"]:
        rows[row["name"], row["norm"]].append(row)
    return rows


def _without_timings(report: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in report.items() if key not in TIMINGS}


@pytest.mark.parametrize("name", ["mlp", "cnn", "cancer"])
def test_report_validates_against_the_schema(name: str, request: pytest.FixtureRequest) -> None:
    evaluated: Evaluated = request.getfixturevalue(name)

    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(
        evaluated.report
    )
    assert json.loads(json.dumps(evaluated.report)) == evaluated.report


def test_model_events_and_settings_are_recorded(mlp: Evaluated) -> None:
    report = mlp.report

    assert report["model"] | {"path": "", "sha256": ""} == {
        "path": "",
        "sha256": "",
        "input_shape": [None, 1, 8, 8],
        "num_classes": 10,
        "input_kind": "image",
        "input_range": [0.0, 1.0],
        "output_kind": "logits",
    }
    assert report["events"]["n_valid"] == 150
    assert report["events"]["n_bad_lines"] == 0
    assert report["events"]["label_field"] == "label"
    settings = report["settings"]
    assert settings["attacks"] == [
        "square",
        "hopskipjump",
        "simba",
        "fgsm",
        "pgd",
        "cw",
        "deepfool",
    ]
    assert settings["eps"] == {"l2": [0.16, 0.4, 0.8, 1.6], "linf": [0.02, 0.05, 0.1, 0.2]}
    assert (settings["budget"], settings["seed"], settings["samples"]) == ("small", 0, 100)
    assert settings["white_box"] == "used"
    rows = report["attacks"]
    assert {(row["name"], row["access"]) for row in rows} == {
        ("square", "black-box"),
        ("hopskipjump", "black-box"),
        ("simba", "black-box"),
        ("fgsm", "white-box"),
        ("pgd", "white-box"),
        ("cw", "white-box"),
        ("deepfool", "white-box"),
    }
    assert all(row["n"] == 100 for row in rows)
    assert len(rows) == 7 * 4


def test_clean_accuracy_and_fpr_match_an_independent_computation(mlp: Evaluated) -> None:
    session = ort.InferenceSession(str(mlp.case.model_path), providers=["CPUExecutionProvider"])
    x, y = mlp.case.test.x[:150], mlp.case.test.y[:150]
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert mlp.detector is not None
    flagged = Detector.from_file(mlp.detector, device="cpu").score(x).flagged

    assert mlp.report["clean"] == {"n": 150, "accuracy": float(np.mean(logits.argmax(1) == y))}
    assert mlp.report["detector"]["clean_fpr"] == float(flagged.mean())
    assert mlp.report["detector"]["squeezers"] == "bit_depth:2"
    np.testing.assert_array_equal(mlp.evaluation.clean_labels, y)


@pytest.mark.parametrize("name", ["mlp", "cnn", "cancer"])
def test_robust_accuracy_never_grows_with_eps(name: str, request: pytest.FixtureRequest) -> None:
    report = request.getfixturevalue(name).report

    for key, rows in _by_attack(report).items():
        eps = [row["eps"] for row in rows]
        assert eps == sorted(eps), key
        robust = [row["robust_accuracy"] for row in rows]
        assert robust == sorted(robust, reverse=True), key
        rates = [row["success_rate"] for row in rows]
        assert rates == sorted(rates), key


def test_attacks_break_the_cnn_within_the_largest_eps(cnn: Evaluated) -> None:
    clean = cnn.report["clean"]["accuracy"]
    largest = {key: rows[-1] for key, rows in _by_attack(cnn.report).items()}

    assert set(largest) == {("square", "linf"), ("hopskipjump", "l2"), ("pgd", "linf")}
    assert clean > 0.9
    assert min(row["robust_accuracy"] for row in largest.values()) < clean - 0.5
    pgd = largest["pgd", "linf"]
    assert pgd["success_rate"] > 0.5
    assert 0 < pgd["median_perturbation"]["linf"] <= pgd["eps"] * (1 + 1e-5)
    assert pgd["median_perturbation"]["l0"] >= 1


def test_minimal_norm_successes_lie_within_each_eps(mlp: Evaluated) -> None:
    for (name, norm), rows in _by_attack(mlp.report).items():
        for row in rows:
            median = row["median_perturbation"][norm]
            if row["success_rate"]:
                assert median <= row["eps"] * (1 + 1e-5), (name, row["eps"])
            else:
                assert row["median_perturbation"] == {"linf": None, "l2": None, "l0": None}


def test_detection_figures_with_a_detector(mlp: Evaluated) -> None:
    rows = mlp.report["attacks"]
    with_success = [row for row in rows if row["success_rate"]]

    assert with_success
    assert all(row["detection_rate"] is not None for row in with_success)
    assert all(0.5 < row["roc_auc"] <= 1.0 for row in with_success)
    scores = mlp.evaluation.adversarial_scores
    assert [(s.name, s.norm, s.eps) for s in scores] == [
        (row["name"], row["norm"], row["eps"]) for row in rows
    ]
    threshold = mlp.report["detector"]["threshold"]
    for row, attack in zip(rows, scores, strict=True):
        assert len(attack.scores) == len(attack.labels)
        if len(attack.scores):
            flagged = float(np.mean(attack.scores > np.float32(threshold)))
            assert row["detection_rate"] == pytest.approx(flagged)
    assert mlp.evaluation.clean_scores is not None
    assert len(mlp.evaluation.clean_scores) == 150
    cost = mlp.report["cost"]
    assert cost["detector_ms_per_event"] > 0
    assert cost["ratio"] > 0


def test_no_detection_figures_without_a_detector(cnn: Evaluated) -> None:
    report = cnn.report

    assert report["detector"] is None
    assert all(row["detection_rate"] is None for row in report["attacks"])
    assert all(row["roc_auc"] is None for row in report["attacks"])
    assert all(row["detection_rate"] is None for row in report["per_class"])
    assert report["cost"]["detector_ms_per_event"] is None
    assert report["cost"]["ratio"] is None
    assert report["cost"]["model_ms_per_event"] > 0
    assert cnn.evaluation.clean_scores is None
    assert cnn.evaluation.adversarial_scores == []


def test_a_tabular_pipeline_runs_black_box_attacks_only(cancer: Evaluated) -> None:
    report = cancer.report
    settings = report["settings"]

    assert settings["white_box"].startswith("the model cannot be converted to PyTorch")
    assert settings["attacks"] == ["hopskipjump", "hopskipjump:linf", "boundary"]
    assert settings["eps"] == {"l2": [5.0, 25.0, 100.0], "linf": [2.0, 10.0, 50.0]}
    assert {(row["name"], row["norm"], row["access"]) for row in report["attacks"]} == {
        ("hopskipjump", "l2", "black-box"),
        ("hopskipjump", "linf", "black-box"),
        ("boundary", "l2", "black-box"),
    }
    assert report["model"]["input_kind"] == "tabular"
    assert report["model"]["output_kind"] == "probabilities"
    largest = [rows[-1] for rows in _by_attack(report).values()]
    assert all(row["robust_accuracy"] < report["clean"]["accuracy"] for row in largest)


def test_square_on_a_tabular_model_is_a_usage_error(cancer: Evaluated) -> None:
    with pytest.raises(ValueError, match="square applies to images") as error:
        evaluate(cancer.case.model_path, cancer.events, attacks="square")
    assert "hopskipjump, boundary" in str(error.value)


def test_same_seed_gives_the_same_report(mlp: Evaluated) -> None:
    again = evaluate(mlp.case.model_path, mlp.events, detector_path=mlp.detector, seed=0)

    assert _without_timings(again.report) == _without_timings(mlp.report)
    for first, second in zip(
        mlp.evaluation.adversarial_scores, again.adversarial_scores, strict=True
    ):
        np.testing.assert_array_equal(first.scores, second.scores)
        np.testing.assert_array_equal(first.labels, second.labels)


def test_another_seed_gives_other_numbers(mlp: Evaluated) -> None:
    other = evaluate(
        mlp.case.model_path, mlp.events, detector_path=mlp.detector, attacks="square", seed=1
    )
    square = [row for row in mlp.report["attacks"] if row["name"] == "square"]

    assert other.report["settings"]["seed"] == 1
    assert other.report["attacks"] != square


def test_certified_accuracy_never_grows_with_the_radius(mlp: Evaluated) -> None:
    rows = mlp.report["certified"]
    by_sigma: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_sigma[row["sigma"]].append(row)

    assert list(by_sigma) == [0.25]
    certified = by_sigma[0.25]
    assert [row["radius"] for row in certified] == [0.0, 0.125, 0.25, 0.5]
    accuracy = [row["certified_accuracy"] for row in certified]
    assert accuracy == sorted(accuracy, reverse=True)
    assert accuracy[0] > 0.6
    assert accuracy[-1] < accuracy[0]
    assert all(row["n"] == 100 for row in certified)


def test_per_class_figures_add_up(mlp: Evaluated) -> None:
    report = mlp.report
    per_class = report["per_class"]

    assert [row["label"] for row in per_class] == list(range(10))
    assert sum(row["n"] for row in per_class) == 150
    weighted = sum(row["n"] * row["clean_accuracy"] for row in per_class) / 150
    assert weighted == pytest.approx(report["clean"]["accuracy"])
    largest = [rows[-1]["robust_accuracy"] for rows in _by_attack(report).values()]
    assert min(row["robust_accuracy"] for row in per_class) <= max(largest)
    assert all(row["detection_rate"] is not None for row in per_class)


def test_bad_label_lines_are_skipped_and_counted(mlp: Evaluated, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    lines = mlp.events.read_bytes().splitlines(keepends=True)[:40]
    lines.insert(3, b'{"event_id": "x1", "model_id": "m", "input": [[[0.5]]], "label": 1}\n')
    lines.insert(7, lines[8].replace(b'"label":', b'"labels":'))
    lines.insert(9, lines[9].rsplit(b'"label":', 1)[0] + b'"label":10}\n')
    events.write_bytes(b"".join(lines))
    seen: list[BadLine] = []

    evaluation = evaluate(
        mlp.case.model_path, events, attacks="fgsm", on_bad_line=seen.append, seed=0
    )

    assert [bad.line_number for bad in seen] == [4, 8, 10]
    assert "no 'label' field" in seen[1].reason
    assert "is 10, not a class of the model" in seen[2].reason
    assert evaluation.report["events"]["n_valid"] == 40
    assert evaluation.report["events"]["n_bad_lines"] == 3
    assert evaluation.report["settings"]["samples"] == 40


class RecordingProgress:
    """Keeps every call an evaluation makes to its progress."""

    def __init__(self) -> None:
        self.plan: list[PlannedStep] = []
        self.calls: list[tuple[str, str, int]] = []

    def planned(self, steps: Sequence[PlannedStep]) -> None:
        self.plan = list(steps)

    def started(self, step: PlannedStep) -> None:
        self.calls.append(("started", step.key, 0))

    def advanced(self, step: PlannedStep, done: int) -> None:
        self.calls.append(("advanced", step.key, done))

    def finished(self, step: PlannedStep) -> None:
        self.calls.append(("finished", step.key, step.total))


def test_progress_gets_the_plan_then_each_step(mlp: Evaluated) -> None:
    progress = RecordingProgress()
    evaluation = evaluate(
        mlp.case.model_path,
        mlp.events,
        attacks="fgsm,hopskipjump:linf",
        eps={"linf": [0.1, 0.03]},
        progress=progress,
    )

    assert [(s.key, s.total) for s in progress.plan] == [
        ("fgsm", 2),
        ("hopskipjump:linf", 1),
        ("smoothing", 1),
        ("cost", 1),
    ]
    assert all(step.estimated_seconds > 0 for step in progress.plan)
    assert progress.calls == [
        ("started", "fgsm", 0),
        ("advanced", "fgsm", 1),
        ("advanced", "fgsm", 2),
        ("finished", "fgsm", 2),
        ("started", "hopskipjump:linf", 0),
        ("advanced", "hopskipjump:linf", 1),
        ("finished", "hopskipjump:linf", 1),
        ("started", "smoothing", 0),
        ("advanced", "smoothing", 1),
        ("finished", "smoothing", 1),
        ("started", "cost", 0),
        ("advanced", "cost", 1),
        ("finished", "cost", 1),
    ]
    report = evaluation.report
    assert report["settings"]["eps"] == {"linf": [0.03, 0.1]}
    assert [(row["name"], row["eps"]) for row in report["attacks"]] == [
        ("fgsm", 0.03),
        ("fgsm", 0.1),
        ("hopskipjump", 0.03),
        ("hopskipjump", 0.1),
    ]


def test_converted_logits_that_disagree_leave_white_box_out(
    mlp: Evaluated, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx2torch

    real_convert = onnx2torch.convert

    def half_logits(model: Any) -> Any:
        import torch

        return torch.nn.Sequential(real_convert(model), torch.nn.Hardtanh(-1.0, 1.0))

    monkeypatch.setattr(onnx2torch, "convert", half_logits)
    evaluation = evaluate(mlp.case.model_path, mlp.events, attacks="fgsm,hopskipjump")

    settings = evaluation.report["settings"]
    assert settings["white_box"].startswith("the PyTorch conversion's outputs differ")
    assert settings["attacks"] == ["hopskipjump"]
    assert {row["name"] for row in evaluation.report["attacks"]} == {"hopskipjump"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": {"linf": [0.1, -0.2]}}, "eps: linf values must be finite and positive"),
        ({"eps": {"l1": [0.1]}}, "eps: unknown norm 'l1'"),
        ({"eps": {"l2": []}}, "eps: l2 needs a non-empty list"),
        ({"budget": "huge"}, "budget must be 'small' or 'full'"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"attacks": "fgsm,magic"}, "unknown attack 'magic'"),
    ],
)
def test_bad_arguments_are_refused(mlp: Evaluated, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(mlp.case.model_path, mlp.events, **kwargs)


def test_events_without_a_valid_label_are_refused(mlp: Evaluated, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(mlp.events.read_bytes().replace(b'"label":', b'"class":'))

    with pytest.raises(ValueError, match="holds no valid event with a true class in 'label'"):
        evaluate(mlp.case.model_path, events)


def test_a_detector_of_another_model_is_refused(mlp: Evaluated, cnn: Evaluated) -> None:
    with pytest.raises(ModelHashMismatchError, match="calibrated for another model"):
        evaluate(cnn.case.model_path, cnn.events, detector_path=mlp.detector)
