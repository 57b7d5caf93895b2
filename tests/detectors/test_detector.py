"""Calibrated detectors: the detector file, and detection of crafted adversarial inputs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

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
