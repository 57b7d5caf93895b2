"""Classifiers the scoring benchmark runs, built in code so that nothing is downloaded.

* the demo's digits MLP (:mod:`monitor.demo.model`), trained on scikit-learn's digits;
* an MNIST-like and a CIFAR-like CNN with seeded random weights, written with
  ``onnx.helper``. Their predictions mean nothing, but their operators and shapes — and
  therefore their cost — are those of the small CNNs the NDSS feature-squeezing paper
  evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from detectors import inspect_model, preset_for
from monitor.demo.model import DigitsData, mlp_to_onnx, train_mlp

__all__ = [
    "BenchmarkModel",
    "cifar_like_cnn",
    "digits_mlp",
    "impulse_lattice",
    "mnist_like_cnn",
    "mnist_like_images",
    "small_cnn",
    "to_pixels",
]

#: Squeezers the NDSS paper used for MNIST, and a CIFAR-10 set from the same paper.
MNIST_SQUEEZERS = "bit_depth:1,median:2,median:3"
CIFAR_SQUEEZERS = "bit_depth:5,median:2"


@dataclass(frozen=True)
class BenchmarkModel:
    """An ONNX classifier emitting logits, and the squeezers it is scored with."""

    name: str
    description: str
    model: onnx.ModelProto
    squeezer_spec: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input shape without the batch axis."""
        dims = self.model.graph.input[0].type.tensor_type.shape.dim
        return tuple(d.dim_value for d in dims[1:])


def small_cnn(
    input_shape: tuple[int, int, int],
    *,
    conv_channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    num_classes: int = 10,
    seed: int = 0,
    opset: int = 17,
    input_scale: float | None = None,
) -> onnx.ModelProto:
    """``[Conv 3×3 → Relu]×len(conv_channels) → MaxPool 2×2 → Flatten → Gemm → Relu → Gemm``.

    Convolutions are unpadded with stride 1; weights are He-initialised from a seeded
    generator and biases are zero. The output is ``logits [N, num_classes]``. With
    ``input_scale``, the graph first multiplies its input by it (``Mul``), as a model
    taking pixel values 0 … 255 scales them to ``[0, 1]``.
    """
    rng = np.random.default_rng(seed)
    channels, height, width = input_shape
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        values = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        initializers.append(numpy_helper.from_array(values.astype(np.float32), name))
        return name

    def zeros(name: str, size: int) -> str:
        initializers.append(numpy_helper.from_array(np.zeros(size, dtype=np.float32), name))
        return name

    x = "image"
    if input_scale is not None:
        scale = numpy_helper.from_array(np.array(input_scale, dtype=np.float32), "input_scale")
        initializers.append(scale)
        nodes.append(helper.make_node("Mul", [x, "input_scale"], ["scaled"]))
        x = "scaled"
    for i, out_channels in enumerate(conv_channels):
        w = weight(f"conv{i}_w", (out_channels, channels, 3, 3), channels * 9)
        b = zeros(f"conv{i}_b", out_channels)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], kernel_shape=[3, 3]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x, channels, height, width = f"relu{i}", out_channels, height - 2, width - 2
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], axis=1))
    features = channels * (height // 2) * (width // 2)
    w1, b1 = weight("fc1_w", (features, hidden), features), zeros("fc1_b", hidden)
    w2, b2 = weight("fc2_w", (hidden, num_classes), hidden), zeros("fc2_b", num_classes)
    nodes.append(helper.make_node("Gemm", ["flat", w1, b1], ["fc1"]))
    nodes.append(helper.make_node("Relu", ["fc1"], ["fc1_relu"]))
    nodes.append(helper.make_node("Gemm", ["fc1_relu", w2, b2], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def digits_mlp(data: DigitsData) -> BenchmarkModel:
    """The demo's MLP trained on ``data``, with the squeezers advmon presets for it."""
    model = mlp_to_onnx(train_mlp(data.train_x, data.train_y))
    return BenchmarkModel(
        name="digits MLP",
        description="the demo's MLP 64→64→10 trained on 8×8 digits, input [N,1,8,8]",
        model=model,
        squeezer_spec=preset_for(inspect_model(model)),
    )


def mnist_like_cnn(seed: int = 0, *, pixels: bool = False) -> BenchmarkModel:
    """A random-weight CNN on ``[N, 1, 28, 28]`` with the paper's MNIST squeezers.

    With ``pixels`` it takes pixel values 0 … 255 and scales them by 1/255 first (the
    same weights otherwise).
    """
    scale = 1 / 255 if pixels else None
    return BenchmarkModel(
        name="MNIST-like CNN",
        description="Conv32-Conv64-MaxPool-FC128-FC10, input [N,1,28,28], random weights"
        + (", pixel values 0–255 scaled by 1/255 in the graph" if pixels else ""),
        model=small_cnn((1, 28, 28), seed=seed, input_scale=scale),
        squeezer_spec=MNIST_SQUEEZERS,
    )


def cifar_like_cnn(seed: int = 0) -> BenchmarkModel:
    """A random-weight CNN on ``[N, 3, 32, 32]`` with colour squeezers."""
    return BenchmarkModel(
        name="CIFAR-like CNN",
        description="Conv32-Conv64-MaxPool-FC128-FC10, input [N,3,32,32], random weights",
        model=small_cnn((3, 32, 32), seed=seed),
        squeezer_spec=CIFAR_SQUEEZERS,
    )


def mnist_like_images(digits: np.ndarray) -> np.ndarray:
    """Upscale ``[N, 1, 8, 8]`` digits ×3 and pad them to MNIST's ``[N, 1, 28, 28]``."""
    upscaled = np.kron(digits, np.ones((1, 1, 3, 3), dtype=digits.dtype))
    padded: np.ndarray = np.pad(upscaled, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return padded.astype(np.float32)


def to_pixels(images: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float images → uint8 pixel values ``0 … 255`` (rounded), as MNIST ships."""
    pixels: np.ndarray = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels


def impulse_lattice(
    images: np.ndarray, *, stride: int = 3, value: float = 255, seed: int = 0
) -> np.ndarray:
    """``images`` ``[N, C, H, W]`` with the pixels of a square lattice set to ``value``.

    Each image gets every ``stride``-th pixel of every ``stride``-th row set, starting at
    an offset ``(dy, dx)`` drawn from ``0 … stride - 1`` (seeded): isolated saturated
    pixels, ``1 / stride²`` of the image, at an L∞ distance of up to ``value`` from it.
    With ``stride >= 3`` no 2×2 or 3×3 window holds two of them, so median smoothing of
    either size replaces each with a value of its neighbourhood; bit-depth reduction
    keeps them.
    """
    rng = np.random.default_rng(seed)
    out = images.copy()
    for image, (dy, dx) in zip(out, rng.integers(0, stride, size=(len(out), 2)), strict=True):
        image[..., dy::stride, dx::stride] = value
    return out
