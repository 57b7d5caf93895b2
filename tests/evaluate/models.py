"""Models for the evaluation tests, trained on scikit-learn's bundled data (no download).

Each builder writes its ONNX model into a folder and returns a :class:`ModelCase`: the
model file, its input range and output kind, train / calibration / test splits, and a
helper that writes native inference events with their true class. Training is seeded, so
a builder gives the same model every time; callers cache the case per test session.

- :func:`digits28_cnn`: a small CNN on the 8×8 digits upscaled to 28×28 ("MNIST-sized"),
  trained with torch and written to ONNX from its weights, logits out.
- :func:`cancer_tabular`: the scikit-learn pipeline of :mod:`tests.cancer` (skl2onnx,
  ``ai.onnx.ml`` operators), probabilities out.
- :func:`digits_mlp`: the demo's 8×8 digits MLP (:mod:`monitor.demo.model`), logits out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import onnx
import orjson
from onnx import TensorProto, helper, numpy_helper

from monitor.demo.model import load_digits_data, mlp_to_onnx, train_mlp
from monitor.evaluate._estimators import torch_threads
from tests.cancer import build_cancer_case

if TYPE_CHECKING:
    import torch

__all__ = ["ModelCase", "Split", "cancer_tabular", "digits28_cnn", "digits_mlp"]

_SIDE = 28


class Split(NamedTuple):
    """Inputs shaped like the model's input (float32) and their true classes (int64)."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class ModelCase:
    """A trained model written to ONNX, with the data it was trained and tested on."""

    name: str
    model_path: Path
    input_range: tuple[float, float]
    output_kind: Literal["logits", "probabilities"]
    train: Split
    calibration: Split
    test: Split

    def write_events(
        self, path: Path, x: np.ndarray, y: np.ndarray, label_field: str = "label"
    ) -> Path:
        """Write one native inference event per row of ``x`` with its class ``y``.

        Each line is ``{"event_id", "model_id", "input": nested list, label_field: int}``.
        """
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)} labels")
        with open(path, "wb") as out:
            for number, (row, label) in enumerate(zip(x, y, strict=True)):
                event = {
                    "event_id": f"{self.name}-{number}",
                    "model_id": self.name,
                    "input": np.asarray(row, dtype=np.float32).tolist(),
                    label_field: int(label),
                }
                out.write(orjson.dumps(event) + b"\n")
        return path


def _upscale(images: np.ndarray) -> np.ndarray:
    """``[N, 1, 8, 8]`` → ``[N, 1, 28, 28]``: bilinear to 24×24, then a 2-pixel border."""
    import torch
    import torch.nn.functional as functional

    big = functional.interpolate(
        torch.from_numpy(images), size=(24, 24), mode="bilinear", align_corners=False
    )
    padded = functional.pad(big, (2, 2, 2, 2))
    return np.asarray(np.clip(padded.numpy(), 0.0, 1.0), dtype=np.float32)


def _cnn_to_onnx(state: dict[str, np.ndarray], classes: int) -> onnx.ModelProto:
    """The trained CNN as an ONNX graph ``image [N, 1, 28, 28] -> logits [N, classes]``."""
    nodes = [
        helper.make_node("Conv", ["image", "conv1_w", "conv1_b"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2_w", "conv2_b"], ["conv2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool2"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits28_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, _SIDE, _SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(value, name) for name, value in state.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _train(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    epochs: int,
) -> None:
    """Minibatches of 32 in a seeded order, ``epochs`` times over the training inputs."""
    import torch

    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(network(inputs[batch]), targets[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()


def digits28_cnn(folder: Path, *, epochs: int = 15, seed: int = 0) -> ModelCase:
    """Train the 28×28 digits CNN (about 97 % test accuracy) and write ``digits28_cnn.onnx``.

    conv 3×3 (8) → relu → maxpool 2 → conv 3×3 (16) → relu → maxpool 2 → dense 10, trained
    with Adam for ``epochs`` epochs on half of the digits (a few seconds on a CPU).
    """
    import torch
    from torch import nn

    data = load_digits_data(seed)
    train_x, cal_x, test_x = (_upscale(x) for x in (data.train_x, data.calibration_x, data.test_x))
    torch.manual_seed(seed)
    conv1, conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
    dense = nn.Linear(16 * 7 * 7, 10)
    network = nn.Sequential(
        conv1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), dense
    )
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    inputs, targets = torch.from_numpy(train_x), torch.from_numpy(data.train_y)
    generator = torch.Generator().manual_seed(seed)
    with torch_threads():
        _train(network, optimizer, inputs, targets, generator, epochs)
    network.eval()
    state = {
        f"{name}_{part[0]}": np.asarray(tensor.detach().numpy(), dtype=np.float32)
        for name, layer in (("conv1", conv1), ("conv2", conv2), ("dense", dense))
        for part, tensor in layer.named_parameters(recurse=False)
        if part in ("weight", "bias")
    }
    model = _cnn_to_onnx(state, 10)
    path = folder / "digits28_cnn.onnx"
    onnx.save(model, path)
    return ModelCase(
        name="digits28-cnn",
        model_path=path,
        input_range=(0.0, 1.0),
        output_kind="logits",
        train=Split(train_x, data.train_y),
        calibration=Split(cal_x, data.calibration_y),
        test=Split(test_x, data.test_y),
    )


def cancer_tabular(folder: Path) -> ModelCase:
    """The breast-cancer pipeline of :mod:`tests.cancer`, written to ``cancer.onnx``.

    Rows 0–199 trained it; 200–399 are the calibration split and 400–568 the test split,
    as in :func:`tests.cancer.build_cancer_case`. Its input range is the range of the data.
    """
    from sklearn.datasets import load_breast_cancer

    case = build_cancer_case(folder)
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    if not np.array_equal(x[200:400], case.benign):
        raise RuntimeError("tests.cancer no longer splits the data as cancer_tabular expects")
    return ModelCase(
        name="cancer-mlp",
        model_path=case.model_path,
        input_range=(float(x.min()), float(x.max())),
        output_kind="probabilities",
        train=Split(x[:200], y[:200]),
        calibration=Split(x[200:400], y[200:400]),
        test=Split(x[400:], y[400:]),
    )


def digits_mlp(folder: Path, *, seed: int = 0) -> ModelCase:
    """The demo's digits MLP (:mod:`monitor.demo.model`), written to ``digits_mlp.onnx``."""
    data = load_digits_data(seed)
    weights = train_mlp(data.train_x, data.train_y, seed=seed)
    path = folder / "digits_mlp.onnx"
    onnx.save(mlp_to_onnx(weights), path)
    return ModelCase(
        name="digits-mlp",
        model_path=path,
        input_range=(0.0, 1.0),
        output_kind="logits",
        train=Split(data.train_x, data.train_y),
        calibration=Split(data.calibration_x, data.calibration_y),
        test=Split(data.test_x, data.test_y),
    )
