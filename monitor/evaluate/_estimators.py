"""The model under evaluation as the attacks see it.

- :class:`OnnxClassifier`: the bare ONNX model on ONNX Runtime (class scores,
  probabilities, predictions), the one every success and accuracy is measured on.
- :func:`black_box_classifier`: an ART ``BlackBoxClassifierNeuralNetwork`` over it,
  probabilities out, for the query-based attacks.
- :func:`white_box_classifier`: the same model converted to PyTorch with onnx2torch, as
  an ART ``PyTorchClassifier`` for the gradient attacks; used only when the converted
  model gives ONNX Runtime's outputs (:func:`check_converted_outputs`), otherwise a
  :class:`WhiteBox` that says why not.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from detectors import Device, OutputKind, create_session, inspect_model

__all__ = [
    "CONVERSION_TOLERANCE",
    "ModelTiming",
    "OnnxClassifier",
    "WhiteBox",
    "black_box_classifier",
    "check_converted_outputs",
    "seed_everything",
    "torch_threads",
    "white_box_classifier",
]

CONVERSION_TOLERANCE = 1e-4
"""How far (absolute and relative) the PyTorch model's outputs may be from ONNX Runtime's."""

_BATCH = 256
_MISSING_TORCH = "torch and onnx2torch are not installed (pip install 'advmon[attacks]')"
_MAX_DETAIL = 200


def seed_everything(seed: int) -> None:
    """Seed numpy's global generator (ART draws from it) and torch's, when it is loaded.

    Examples
    --------
    >>> seed_everything(3)
    >>> int(np.random.randint(1000))
    874
    """
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """Run torch with half the machine's cores (at least one) inside the block.

    Torch's OpenMP threads wait for each other at every operation, so when another
    process takes one of their cores (a shared CI runner) each operation stalls: on two
    loaded cores a small CNN's gradients run ten times slower with two threads than with
    one. Half the cores keeps that from happening and costs little on small models.

    Examples
    --------
    >>> with torch_threads():
    ...     pass
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)


class OnnxClassifier:
    """The bare model on ONNX Runtime.

    Parameters
    ----------
    model
        The ONNX classifier.
    output_kind
        Whether its class-score output holds ``logits`` or ``probabilities``.
    output_name
        The class-score output, when the model has several.
    device
        ONNX Runtime device (see :func:`detectors.create_session`).

    Examples
    --------
    >>> from monitor.demo.model import load_digits_data, mlp_to_onnx, train_mlp
    >>> data = load_digits_data()
    >>> model = OnnxClassifier(mlp_to_onnx(train_mlp(data.train_x, data.train_y)), "logits")
    >>> model.probabilities(data.test_x[:2]).shape
    (2, 10)
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        output_kind: OutputKind,
        output_name: str | None = None,
        device: Device = "cpu",
    ) -> None:
        self.model = model
        self.output_kind: OutputKind = output_kind
        self.signature = inspect_model(model, output_name)
        # Idle ONNX Runtime threads sleep rather than spin: between model calls the
        # attacks compute in numpy and torch, which need the cores.
        self._session = create_session(model, device, spin_wait=False)
        self.provider: str = self._session.get_providers()[0]

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The class-score output (logits or probabilities) for a batch, float32 ``[N, C]``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        name = self.signature.output_name
        parts = [
            self._session.run([name], {self.signature.input_name: x[start : start + _BATCH]})[0]
            for start in range(0, len(x), _BATCH)
        ]
        if not parts:
            return np.zeros((0, self.signature.num_classes or 0), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch (a softmax of logits), float32 ``[N, C]``."""
        scores = self.scores(x)
        return _softmax(scores) if self.output_kind == "logits" else scores

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The predicted class of each input, int64 ``[N]``."""
        return np.asarray(self.scores(x).argmax(axis=1), dtype=np.int64)

    def time_call(self, x: np.ndarray, repeats: int = 5) -> float:
        """Median seconds of one ONNX Runtime call on the batch ``x`` (after a warm-up)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        feed = {self.signature.input_name: x}
        self._session.run(None, feed)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self._session.run(None, feed)
            times.append(time.perf_counter() - started)
        return float(np.median(times))


@dataclass(frozen=True)
class ModelTiming:
    """Seconds of model calls, for the evaluation's time estimate: ``call + rows · row``.

    Examples
    --------
    >>> ModelTiming(call_seconds=1e-4, row_seconds=1e-5).seconds(calls=10, rows=100)
    0.002
    """

    call_seconds: float
    row_seconds: float
    gradient_call_seconds: float = 0.0
    gradient_row_seconds: float = 0.0

    def seconds(
        self,
        calls: float,
        rows: float,
        gradient_calls: float = 0.0,
        gradient_rows: float = 0.0,
        bookkeeping_seconds: float = 0.0,
    ) -> float:
        """Estimated seconds of that many calls, rows, gradient calls and gradient rows,
        plus the time spent outside the model."""
        return round(
            calls * self.call_seconds
            + rows * self.row_seconds
            + gradient_calls * self.gradient_call_seconds
            + gradient_rows * self.gradient_row_seconds
            + bookkeeping_seconds,
            9,
        )


def black_box_classifier(
    model: OnnxClassifier, input_shape: tuple[int, ...], input_range: tuple[float, float]
) -> Any:
    """An ART black-box classifier over ``model``: probabilities out, clipped to the range."""
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    return BlackBoxClassifierNeuralNetwork(
        model.probabilities,
        input_shape=input_shape,
        nb_classes=int(model.signature.num_classes or 0),
        clip_values=input_range,
    )


@dataclass(frozen=True)
class WhiteBox:
    """The PyTorch classifier for white-box attacks, or why there is none.

    ``reason`` is ``"used"`` when ``classifier`` is there (the report's
    ``settings.white_box``).
    """

    classifier: Any | None
    reason: str

    @property
    def available(self) -> bool:
        """Whether white-box attacks can run."""
        return self.classifier is not None


def check_converted_outputs(
    expected: np.ndarray, actual: np.ndarray, tolerance: float = CONVERSION_TOLERANCE
) -> str | None:
    """Why the converted model's outputs cannot stand in for ONNX Runtime's, or ``None``.

    They must have the same shape and agree to ``tolerance``, absolute and relative.

    Examples
    --------
    >>> check_converted_outputs(np.zeros((2, 3)), np.full((2, 3), 5e-5)) is None
    True
    >>> check_converted_outputs(np.zeros((2, 3)), np.full((2, 3), 0.01))
    "the PyTorch conversion's outputs differ from ONNX Runtime's by up to 0.01 (tolerance 0.0001)"
    """
    if expected.shape != actual.shape:
        return (
            f"the PyTorch conversion outputs shape {list(actual.shape)}, ONNX Runtime "
            f"{list(expected.shape)}"
        )
    if not np.all(np.isfinite(actual)):
        return "the PyTorch conversion outputs non-finite values"
    if np.allclose(actual, expected, rtol=tolerance, atol=tolerance):
        return None
    gap = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    return (
        f"the PyTorch conversion's outputs differ from ONNX Runtime's by up to {gap:.3g} "
        f"(tolerance {tolerance:g})"
    )


def _short(error: BaseException) -> str:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "…"
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def white_box_classifier(
    model: OnnxClassifier,
    sample: np.ndarray,
    input_range: tuple[float, float],
    device: Device = "cpu",
) -> WhiteBox:
    """``model`` converted to PyTorch as an ART ``PyTorchClassifier``, checked on ``sample``.

    The conversion is used only when its outputs on ``sample`` (the events) agree with
    ONNX Runtime's (:func:`check_converted_outputs`). A model that outputs probabilities
    gives their logarithm to the attacks, which is what their cross-entropy loss expects
    of logits. Never raises: without torch, or when the conversion fails or disagrees,
    the returned :class:`WhiteBox` holds the reason.
    """
    try:
        import torch
        from onnx2torch import convert
    except ImportError:
        return WhiteBox(None, _MISSING_TORCH)
    try:
        converted = convert(model.model)
    except Exception as error:  # onnx2torch raises NotImplementedError, KeyError and others
        return WhiteBox(None, f"the model cannot be converted to PyTorch ({_short(error)})")
    output_index = [o.name for o in model.model.graph.output].index(model.signature.output_name)
    module = _class_scores(converted, output_index, log=model.output_kind == "probabilities")
    module.eval()
    try:
        with torch.no_grad(), torch_threads():
            actual = module.raw(torch.from_numpy(np.ascontiguousarray(sample, np.float32)))
    except Exception as error:
        return WhiteBox(None, f"the model converted to PyTorch does not run ({_short(error)})")
    mismatch = check_converted_outputs(model.scores(sample), actual.numpy())
    if mismatch is not None:
        return WhiteBox(None, mismatch)

    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(sample.shape[1:]),
        nb_classes=int(model.signature.num_classes or 0),
        clip_values=input_range,
        device_type="gpu" if device == "cuda" else "cpu",
    )
    return WhiteBox(classifier, "used")


@functools.cache
def _class_scores_type() -> type[Any]:
    import torch

    class ClassScores(torch.nn.Module):
        """The converted model's class-score output; log-probabilities for a model that
        outputs probabilities (a softmax of them gives the probabilities back)."""

        def __init__(self, converted: torch.nn.Module, output_index: int, log: bool) -> None:
            super().__init__()
            self.converted = converted
            self.output_index = output_index
            self.log = log

        def raw(self, x: torch.Tensor) -> torch.Tensor:
            outputs = self.converted(x)
            if isinstance(outputs, tuple | list):
                outputs = outputs[self.output_index]
            scores: torch.Tensor = outputs.float()
            return scores

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scores = self.raw(x)
            if self.log:
                scores = torch.log(scores.clamp_min(1e-12))
            return scores

    return ClassScores


def _class_scores(converted: Any, output_index: int, *, log: bool) -> Any:
    """A ``torch.nn.Module`` giving ``converted``'s class scores (see ``ClassScores``)."""
    return _class_scores_type()(converted, output_index, log)
