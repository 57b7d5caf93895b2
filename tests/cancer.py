"""A tabular model for tests: a scikit-learn MLP pipeline on the breast-cancer data,
exported with skl2onnx, with FGSM rows crafted against it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

__all__ = ["CancerCase", "build_cancer_case"]


@dataclass(frozen=True)
class CancerCase:
    """The exported pipeline, its benign calibration split, test rows and FGSM rows."""

    model: onnx.ModelProto
    model_path: Path
    benign: np.ndarray
    test_x: np.ndarray
    adversarial: np.ndarray
    """FGSM rows (0.3 standard deviations) that fool the pipeline."""


def build_cancer_case(folder: Path) -> CancerCase:
    """Train on 200 rows, export to ``folder/cancer.onnx``, attack the 169 test rows."""
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

    # FGSM in the standardised feature space, with a finite-difference loss gradient.
    test_x, test_y = x[400:], y[400:]
    scaler, classifier = pipeline[0], pipeline[-1]
    z = scaler.transform(test_x)
    rows = np.arange(len(z))
    true = classifier.predict_proba(z)[rows, test_y]
    gradient = np.zeros_like(z)
    for j in range(z.shape[1]):
        shifted = z.copy()
        shifted[:, j] += 1e-3
        gradient[:, j] = np.log(true) - np.log(classifier.predict_proba(shifted)[rows, test_y])
    adversarial = scaler.inverse_transform(z + 0.3 * np.sign(gradient)).astype(np.float32)
    fooled = pipeline.predict(adversarial) != test_y
    return CancerCase(model, model_path, x[200:400], test_x, adversarial[fooled])
