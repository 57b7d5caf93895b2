"""Calibrated detectors: the detector file, and detection of crafted adversarial inputs."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from detectors import (
    CalibrationError,
    Detector,
    DetectorConfig,
    DetectorFileError,
    ModelHashMismatchError,
    ModelValidationError,
    SearchAttack,
    SearchCandidate,
    SearchSplit,
    SqueezerSearch,
    SqueezerSpecError,
    calibrate_detector,
    detect_output_kind,
    file_sha256,
    inspect_model,
    preset_for,
)
from detectors.squeezers import BitDepth, QuantileGrid, Quantize, RoundDecimals
from tests.cancer import CancerCase, build_cancer_case
from tests.detectors.conftest import TrainedDigits
from tests.detectors.models import random_cnn, random_mlp_tabular


def roc_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    return float(roc_auc_score(labels, np.r_[negatives, positives]))


def batches_of(x: np.ndarray, size: int = 64) -> Callable[[], Iterator[np.ndarray]]:
    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(x), size):
            yield x[start : start + size]

    return batches


@pytest.fixture
def digits_model_path(tmp_path: Path, digits: TrainedDigits) -> Path:
    path = tmp_path / "models" / "digits.onnx"
    path.parent.mkdir()
    onnx.save(digits.model, path)
    return path


@pytest.fixture
def digits_config(digits_model_path: Path, digits: TrainedDigits) -> DetectorConfig:
    return calibrate_detector(
        digits_model_path, batches_of(digits.data.calibration_x), fpr=0.05, device="cpu"
    )


def test_detects_fgsm_and_pgd_digits_at_the_calibrated_fpr(
    digits: TrainedDigits, digits_config: DetectorConfig, adversarial_digits: dict[str, np.ndarray]
) -> None:
    detector = Detector(digits_config, digits.model, device="cpu")
    clean = detector.score(digits.data.test_x)
    # Held-out clean digits are flagged at about the target rate.
    held_out_fpr = float(clean.flagged.mean())
    assert abs(held_out_fpr - 0.05) < 0.03, held_out_fpr
    for name, adversarial in adversarial_digits.items():
        assert len(adversarial) > 100, name
        attacked = detector.score(adversarial)
        auc = roc_auc(clean.scores.score, attacked.scores.score)
        assert auc > 0.9, (name, auc)
        assert attacked.flagged.mean() > 0.6, name


def test_calibration_picks_the_image_preset_and_infers_the_rest(
    digits_config: DetectorConfig, digits_model_path: Path
) -> None:
    assert digits_config.squeezers == (BitDepth(2),)
    assert digits_config.input_kind == "image"
    assert digits_config.input_shape == (1, 8, 8)
    assert digits_config.input_range == (0.0, 1.0)
    assert digits_config.output_kind == "logits"
    assert digits_config.num_classes == 10
    assert digits_config.calibration.n_events == 449
    assert digits_config.calibration.achieved_fpr <= 0.05
    assert digits_config.calibration.provider == "CPUExecutionProvider"
    assert digits_config.model_sha256 == file_sha256(digits_model_path)


def test_presets_follow_the_input_shape() -> None:
    assert preset_for(inspect_model(random_mlp_tabular())) == "quantize:0.5"
    assert preset_for(inspect_model(random_cnn(channels=1, side=28))) == "bit_depth:2,median:2"
    assert preset_for(inspect_model(random_cnn(channels=3, side=32))) == "bit_depth:4,median:2"
    assert preset_for(inspect_model(random_cnn(channels=3, side=8))) == "bit_depth:4"


def test_detector_file_round_trips_with_a_relative_model_path(
    tmp_path: Path, digits_config: DetectorConfig, digits: TrainedDigits
) -> None:
    detector_path = tmp_path / "detector.json"
    digits_config.save(detector_path)
    content = json.loads(detector_path.read_text())
    assert content["model"]["path"] == "models/digits.onnx"
    assert content["squeezers"]["spec"] == "bit_depth:2"
    assert content["threshold"] == digits_config.threshold
    assert content["target_fpr"] == 0.05
    assert content["advmon_version"]
    assert DetectorConfig.load(detector_path) == digits_config

    # Moving the detector together with its model keeps it loadable.
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "models", moved / "models")
    shutil.copy(detector_path, moved / "detector.json")
    loaded = Detector.from_file(moved / "detector.json", device="cpu")
    x = digits.data.test_x[:32]
    original = Detector(digits_config, digits.model, device="cpu").score(x)
    np.testing.assert_array_equal(loaded.score(x).scores.score, original.scores.score)
    assert loaded.provider == "CPUExecutionProvider"


def test_loading_refuses_a_changed_model(tmp_path: Path, digits_config: DetectorConfig) -> None:
    detector_path = tmp_path / "detector.json"
    digits_config.save(detector_path)
    model_path = Path(digits_config.model_path)
    model_path.write_bytes(model_path.read_bytes() + b"\x00")
    with pytest.raises(ModelHashMismatchError, match="changed since calibration"):
        DetectorConfig.load(detector_path)
    model_path.unlink()
    with pytest.raises(DetectorFileError, match="model file is missing"):
        DetectorConfig.load(detector_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read detector file"),
        ("[1]", "not an advmon detector file"),
        ('{"format": "advmon-detector", "format_version": 99}', "format 99 is not supported"),
        ('{"format": "advmon-detector", "format_version": 1}', "lacks the field 'model'"),
    ],
)
def test_malformed_detector_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "detector.json"
    path.write_text(content)
    with pytest.raises(DetectorFileError, match=message):
        DetectorConfig.load(path)
    with pytest.raises(DetectorFileError, match="not found"):
        DetectorConfig.load(tmp_path / "missing.json")


def test_calibration_refusals(digits_model_path: Path, digits: TrainedDigits) -> None:
    x = digits.data.calibration_x
    with pytest.raises(CalibrationError, match="at least 100 benign events, got 99"):
        calibrate_detector(digits_model_path, batches_of(x[:99]), device="cpu")
    with pytest.raises(CalibrationError, match=r"0\.001 cannot be calibrated on 449 events"):
        calibrate_detector(digits_model_path, batches_of(x), fpr=0.001, device="cpu")
    with pytest.raises(CalibrationError, match="outside the given input range"):
        calibrate_detector(digits_model_path, batches_of(x), input_range=(0.0, 0.5), device="cpu")
    with pytest.raises(CalibrationError, match="not one of the usual ranges"):
        calibrate_detector(digits_model_path, batches_of(x * 3.0 - 2.0), device="cpu")


def test_output_kind_detection(digits: TrainedDigits) -> None:
    sample = digits.data.test_x[:16]
    assert detect_output_kind(digits.model, "logits", sample) == "logits"
    softmax = random_cnn(channels=1, side=8, softmax=True)
    # A Softmax producer is recognised from the graph alone...
    assert inspect_model(softmax).output_kind == "probabilities"
    # ...and from the values when the graph does not say.
    assert detect_output_kind(softmax, "probs", sample) == "probabilities"


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> CancerCase:
    case = build_cancer_case(tmp_path_factory.mktemp("cancer"))
    assert len(case.adversarial) > 30
    return case


def test_tabular_detector_on_a_scikit_learn_pipeline(cancer: CancerCase) -> None:
    config = calibrate_detector(cancer.model_path, batches_of(cancer.benign), device="cpu")
    assert config.input_kind == "tabular"
    assert config.output_kind == "probabilities"
    (quantize,) = config.squeezers
    assert isinstance(quantize, Quantize)
    assert quantize.step == 0.5
    assert quantize.center is not None
    np.testing.assert_allclose(
        quantize.center, cancer.benign.astype(np.float64).mean(axis=0), rtol=1e-6
    )

    detector = Detector(config, cancer.model, device="cpu")
    clean = detector.score(cancer.test_x).scores.score
    attacked = detector.score(cancer.adversarial).scores.score
    # Small tabular perturbations are only partly caught: well above chance, not more.
    # Measured 0.883 (48 fooled inputs against 169 clean).
    assert roc_auc(clean, attacked) > 0.8


@pytest.mark.parametrize(
    "spec",
    [
        # Measured ROC-AUC on this fixture: quantile:8 0.877, round:1 0.876 (quantize:0.5
        # 0.883). Over eight pipeline seeds quantile:8 ranged 0.81–0.88, while round:1,
        # one precision for features of very different scales, ranged 0.57–0.88.
        "quantile:8",
        "round:1",
    ],
)
def test_tabular_detector_with_quantile_and_round_squeezers(
    cancer: CancerCase, spec: str, tmp_path: Path
) -> None:
    config = calibrate_detector(
        cancer.model_path, batches_of(cancer.benign, size=50), squeezer_spec=spec, device="cpu"
    )
    assert config.squeezer_spec == spec
    (squeezer,) = config.squeezers
    if isinstance(squeezer, QuantileGrid):
        quantiles = np.quantile(
            cancer.benign, squeezer.probabilities, axis=0, method="inverted_cdf"
        )
        np.testing.assert_array_equal(squeezer.grid(), quantiles.T)
    else:
        assert squeezer == RoundDecimals(1)

    detector = Detector(config, cancer.model, device="cpu")
    clean = detector.score(cancer.test_x)
    attacked = detector.score(cancer.adversarial)
    assert roc_auc(clean.scores.score, attacked.scores.score) > 0.8

    # The detector file keeps the fitted grid: loading it gives the same detector.
    detector_path = tmp_path / "detector.json"
    config.save(detector_path)
    params = json.loads(detector_path.read_text())["squeezers"]["params"]
    assert params == [squeezer.to_dict()]
    loaded = Detector.from_file(detector_path, device="cpu")
    assert loaded.config == config
    np.testing.assert_array_equal(loaded.score(cancer.test_x).scores.score, clean.scores.score)


def test_calibration_checks_the_spec_before_reading_benign_data(
    digits_model_path: Path, cancer: CancerCase
) -> None:
    def unread() -> Iterator[np.ndarray]:
        raise AssertionError("the benign data must not be read")

    with pytest.raises(SqueezerSpecError, match="grid points must be 2 to 1024"):
        calibrate_detector(cancer.model_path, unread, squeezer_spec="quantile:1", device="cpu")
    with pytest.raises(ModelValidationError, match="'quantile:8' does not apply to image"):
        calibrate_detector(digits_model_path, unread, squeezer_spec="quantile:8", device="cpu")
    wrong_width = cancer.benign[:, :10]
    with pytest.raises(
        CalibrationError, match=r"shaped \[10\] per event, but the model takes \[30\]"
    ):
        calibrate_detector(
            cancer.model_path, batches_of(wrong_width), squeezer_spec="quantile:8", device="cpu"
        )


# --- the squeezer search's evidence in the detector file -----------------------------------


def _evidence(chosen: str = "bit_depth:2") -> SqueezerSearch:
    return SqueezerSearch(
        chosen=chosen,
        preset="bit_depth:2",
        fallback_reason=None,
        budget="small",
        seed=0,
        seconds=3.5,
        split=SearchSplit(
            benign_events=449,
            sampled_events=449,
            threshold_events=225,
            held_back_events=224,
            attacked_events=50,
        ),
        attacks=(
            SearchAttack("square", "linf", "black-box", 50, 44),
            SearchAttack("deepfool", "l2", "white-box", 50, 50),
        ),
        candidates=(
            SearchCandidate(
                "bit_depth:2", 0.57, 0.071, 0.23, {"square": 0.84, "deepfool": 0.3}, 0.04
            ),
            SearchCandidate("median:2", 0.05, 0.04, 1.9, {"square": 0.1, "deepfool": 0.0}, 0.02),
        ),
        held_back_fpr_limit=0.0911,
    )


def test_detector_file_round_trips_the_squeezer_search(
    tmp_path: Path, digits_config: DetectorConfig
) -> None:
    config = replace(digits_config, squeezer_search=_evidence())
    path = tmp_path / "detector.json"
    config.save(path)
    content = json.loads(path.read_text())
    assert content["format_version"] == 1
    assert content["squeezer_search"]["candidates"][0] == {
        "spec": "bit_depth:2",
        "detection_rate": 0.57,
        "held_back_fpr": 0.071,
        "threshold": 0.23,
        "detection_by_attack": {"square": 0.84, "deepfool": 0.3},
        "detection_stderr": 0.04,
    }
    assert content["squeezer_search"]["attacks"][0] == {
        "name": "square",
        "norm": "linf",
        "access": "black-box",
        "attempted": 50,
        "successful": 44,
    }
    loaded = DetectorConfig.load(path)
    assert loaded == config
    assert loaded.squeezer_search is not None
    assert loaded.squeezer_search.searched


def test_detector_files_without_the_search_still_load(
    tmp_path: Path, digits_config: DetectorConfig
) -> None:
    """Files written before the search existed (or with given squeezers) have no evidence."""
    path = tmp_path / "detector.json"
    digits_config.save(path)
    content = json.loads(path.read_text())
    assert "squeezer_search" not in content
    assert DetectorConfig.load(path).squeezer_search is None
    content["squeezer_search"] = None
    path.write_text(json.dumps(content))
    assert DetectorConfig.load(path) == digits_config


def _set(content: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, for ``...``, delete) the field at a dotted path; ``[i]`` indexes lists."""
    *parents, last = path.replace("[", ".").replace("]", "").split(".")
    target: Any = content
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is ...:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("squeezer_search", [1], "'squeezer_search' must be an object"),
        ("squeezer_search.split", ..., "lacks the field 'squeezer_search.split'"),
        ("squeezer_search.note", "hi", "'squeezer_search' has unknown fields: note"),
        ("squeezer_search.budget", "huge", "expected one of small, full, got 'huge'"),
        ("squeezer_search.seed", -1, "'squeezer_search.seed' is malformed: expected a count"),
        ("squeezer_search.seed", True, "'squeezer_search.seed' is malformed"),
        ("squeezer_search.seconds", -2.0, "expected a finite number ≥ 0"),
        ("squeezer_search.held_back_fpr_limit", 1.5, "expected a rate between 0 and 1"),
        ("squeezer_search.split.sampled_events", 500, "sampled_events exceeds benign_events"),
        ("squeezer_search.split.attacked_events", 300, "attacked_events exceeds held_back"),
        ("squeezer_search.split.held_back_events", 400, "exceeds sampled_events"),
        ("squeezer_search.attacks[0].successful", 51, "successful exceeds attempted"),
        ("squeezer_search.attacks[0].access", "grey-box", "white-box, black-box"),
        ("squeezer_search.attacks[1].name", "square", "attack names repeat"),
        ("squeezer_search.attacks[0].name", "", "expected a non-empty string"),
        ("squeezer_search.attacks", {}, "'squeezer_search.attacks' is malformed: expected a list"),
        ("squeezer_search.candidates[1].spec", "blur:3", "unknown squeezer 'blur'"),
        ("squeezer_search.candidates[0].detection_rate", "high", "expected a finite number"),
        ("squeezer_search.candidates[0].held_back_fpr", -0.1, "between 0 and 1"),
        ("squeezer_search.candidates[1].detection_stderr", ..., "candidates[1].detection_stderr"),
        ("squeezer_search.candidates[0].threshold", None, "candidates[0].threshold"),
        ("squeezer_search.candidates[0].detection_by_attack.cw", 0.5, "did not run: cw"),
        ("squeezer_search.candidates[0].extra", 1, "candidates[0]' has unknown fields: extra"),
        ("squeezer_search.chosen", "bit_depth:3", "chosen 'bit_depth:3' is none of the"),
        ("squeezer_search.preset", "bit_depth:5", "the preset 'bit_depth:5' is none of"),
        ("squeezer_search.fallback_reason", "no attack fooled", "but chose 'median:2'"),
        (
            "squeezers.params",
            [{"kind": "median", "size": 2}],
            "search chose 'bit_depth:2' but its squeezers are 'median:2'",
        ),
    ],
)
def test_malformed_squeezer_search_is_refused(
    tmp_path: Path,
    digits_config: DetectorConfig,
    field: str,
    value: Any,
    message: str,
) -> None:
    chosen = "median:2" if field == "squeezer_search.fallback_reason" else "bit_depth:2"
    config = replace(digits_config, squeezer_search=_evidence(chosen))
    content = copy.deepcopy(config.to_dict(relative_to=tmp_path))
    _set(content, field, value)
    path = tmp_path / "detector.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DetectorFileError) as raised:
        DetectorConfig.load(path, verify_model=False)
    assert message in str(raised.value)
