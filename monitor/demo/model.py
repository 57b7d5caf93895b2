"""A small digit classifier for the demo, exported to ONNX without any converter.

scikit-learn's bundled 8×8 digits (no download) train a one-hidden-layer MLP; its
weights are written into an ONNX graph ``[N, 1, 8, 8] -> logits [N, 10]`` so that the
attacks in :mod:`monitor.demo.attacks` can use the exact same function with analytic
gradients.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["DigitsData", "MLPClassifierWeights", "load_digits_data", "mlp_to_onnx", "train_mlp"]

IMAGE_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class DigitsData:
    """Digits images scaled to ``[0, 1]`` with shape ``[N, 1, 8, 8]``, split in three."""

    train_x: np.ndarray
    train_y: np.ndarray
    calibration_x: np.ndarray
    calibration_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True)
class MLPClassifierWeights:
    """Weights of ``logits = relu(x·W1 + b1)·W2 + b2`` over flattened inputs."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch shaped like the model input."""
        hidden = np.maximum(x.reshape(len(x), -1) @ self.w1 + self.b1, 0.0)
        return np.asarray(hidden @ self.w2 + self.b2)


def load_digits_data(seed: int = 0) -> DigitsData:
    """Split scikit-learn's digits into train / calibration / test sets (50/25/25 %)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32).reshape(-1, *IMAGE_SHAPE)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    a, b = len(x) // 2, (3 * len(x)) // 4
    return DigitsData(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def train_mlp(
    x: np.ndarray, y: np.ndarray, hidden: int = 64, seed: int = 0
) -> MLPClassifierWeights:
    """Train scikit-learn's MLPClassifier and return its weights as float32 arrays."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=(hidden,), max_iter=60, learning_rate_init=0.01, random_state=seed
    )
    with warnings.catch_warnings():
        # A few dozen epochs reach ~97 % test accuracy; full convergence is not the point.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x.reshape(len(x), -1), y)
    w1, w2 = (np.asarray(w, dtype=np.float32) for w in clf.coefs_)
    b1, b2 = (np.asarray(b, dtype=np.float32) for b in clf.intercepts_)
    return MLPClassifierWeights(w1, b1, w2, b2)


def mlp_to_onnx(weights: MLPClassifierWeights, opset: int = 17) -> onnx.ModelProto:
    """Export the MLP as an ONNX graph that takes ``[N, 1, 8, 8]`` and returns logits."""
    inits = [
        numpy_helper.from_array(np.array([-1, weights.w1.shape[0]], dtype=np.int64), "flat"),
        numpy_helper.from_array(weights.w1, "w1"),
        numpy_helper.from_array(weights.b1, "b1"),
        numpy_helper.from_array(weights.w2, "w2"),
        numpy_helper.from_array(weights.b2, "b2"),
    ]
    nodes = [
        helper.make_node("Reshape", ["image", "flat"], ["flat_image"]),
        helper.make_node("Gemm", ["flat_image", "w1", "b1"], ["pre_hidden"]),
        helper.make_node("Relu", ["pre_hidden"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *IMAGE_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", weights.w2.shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
