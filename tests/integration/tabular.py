"""A tabular model for the format tests: scikit-learn's breast-cancer data, an MLP
pipeline exported with skl2onnx, its calibrated detector, and FGSM rows crafted against it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from detectors import Detector, calibrate_detector

__all__ = ["TabularModel", "build_tabular_model"]


@dataclass(frozen=True)
class TabularModel:
    """The detector file, and rows to send with the detector's offline verdict on each."""

    detector_path: Path
    clean: np.ndarray
    adversarial: np.ndarray
    """FGSM rows that fool the model."""
    detector: Detector

    def offline(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The detector's scores and verdicts for ``rows``, on CPU."""
        verdict = self.detector.score(rows.astype(np.float32))
        return verdict.scores.score, verdict.flagged


def build_tabular_model(folder: Path) -> TabularModel:
    """Train, export, calibrate (on 200 benign rows) and attack; takes a few seconds."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline = make_pipeline(
            StandardScaler(), MLPClassifier((32,), max_iter=500, random_state=0)
        ).fit(x[:200], y[:200])
    model = to_onnx(
        pipeline, x[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    model_path = folder / "cancer.onnx"
    onnx.save(model, model_path)
    benign = x[200:400]

    def batches() -> list[np.ndarray]:
        return [benign[i : i + 64] for i in range(0, len(benign), 64)]

    config = calibrate_detector(model_path, batches, device="cpu")
    detector_path = folder / "cancer-detector.json"
    config.save(detector_path)

    # FGSM in the standardised feature space, with a finite-difference loss gradient.
    test_x, test_y = x[400:], y[400:]
    scaler, classifier = pipeline[0], pipeline[-1]
    z = scaler.transform(test_x)
    true = classifier.predict_proba(z)[np.arange(len(z)), test_y]
    gradient = np.zeros_like(z)
    for j in range(z.shape[1]):
        shifted = z.copy()
        shifted[:, j] += 1e-3
        moved = classifier.predict_proba(shifted)[np.arange(len(z)), test_y]
        gradient[:, j] = np.log(true) - np.log(moved)
    adversarial = scaler.inverse_transform(z + 0.3 * np.sign(gradient)).astype(np.float32)
    fooled = pipeline.predict(adversarial) != test_y
    return TabularModel(
        detector_path=detector_path,
        clean=test_x,
        adversarial=adversarial[fooled],
        detector=Detector.from_file(detector_path, device="cpu"),
    )
