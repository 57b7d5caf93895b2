"""Small ONNX classifiers built in the tests, with seeded random or trained weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _finish(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def random_cnn(
    channels: int = 3,
    side: int = 12,
    classes: int = 5,
    *,
    softmax: bool = False,
    opset: int = 17,
    batch: int | str = "N",
    seed: int = 0,
) -> onnx.ModelProto:
    """Conv → Relu → Flatten → Gemm over ``[batch, channels, side, side]``, seeded weights."""
    rng = np.random.default_rng(seed)
    filters = 4
    conv_w = rng.normal(0, 0.5, (filters, channels, 3, 3)).astype(np.float32)
    dense_w = rng.normal(0, 0.3, (filters * side * side, classes)).astype(np.float32)
    dense_b = rng.normal(0, 0.1, classes).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"]),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"]),
    ]
    output = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
        output = "probs"
    graph = helper.make_graph(
        nodes,
        "random_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, side, side])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, classes])],
        [
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(dense_w, "dense_w"),
            numpy_helper.from_array(dense_b, "dense_b"),
        ],
    )
    return _finish(graph, opset)


def random_mlp_tabular(
    features: int = 6, classes: int = 3, *, opset: int = 17, seed: int = 0
) -> onnx.ModelProto:
    """Gemm → Tanh → Gemm over ``[N, features]``, seeded weights, logits out."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1.0, (features, 8)).astype(np.float32)
    w2 = rng.normal(0, 1.0, (8, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1"], ["h"]),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("Gemm", ["t", "w2"], ["logits"]),
        ],
        "random_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return _finish(graph, opset)
