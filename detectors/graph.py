"""Fuse a user's ONNX classifier, the squeezers and the squeeze score into one graph.

The fused graph takes a batch ``x`` of ``N`` inputs, builds the ``k`` squeezed copies
with ONNX operators, concatenates ``[x, s1(x), …, sk(x)]`` along the batch axis, runs the
model once over the ``(k+1)·N`` rows, turns its outputs into probabilities (softmax when
the model emits logits) and computes, per event, the L1 distance between the
probabilities of the original and of each squeezed copy. Its outputs:

=====================  ==========  ===============================================
``score``              ``[N]``     max over squeezers of the L1 distance
``prediction``         ``[N]``     arg-max class of the original input
``probabilities``      ``[N, C]``  class probabilities of the original input
``squeezer_distances`` ``[N, k]``  the L1 distance for each squeezer
=====================  ==========  ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx.compose
from onnx import TensorProto, helper

from detectors._errors import ModelValidationError
from detectors._onnx_builder import GraphBuilder
from detectors.squeezers import InputKind, QuantileGrid, Quantize, Squeezer

__all__ = [
    "FUSED_OUTPUTS",
    "ModelSignature",
    "OutputKind",
    "build_squeeze_graph",
    "check_squeezers_apply",
    "inspect_model",
    "load_model",
]

OutputKind = Literal["logits", "probabilities"]

#: Output names of the fused graph, in order.
FUSED_OUTPUTS = ("score", "prediction", "probabilities", "squeezer_distances")

_MIN_OPSET = 13
_MODEL_PREFIX = "model/"
_OUR_PREFIX = "advmon/"
_PROBABILITY_OPS = {"Softmax"}


@dataclass(frozen=True)
class ModelSignature:
    """What advmon needs to know about a classifier's input and class-score output.

    ``input_shape`` excludes the batch axis; symbolic dimensions are ``None``.
    ``output_kind`` is ``None`` when the graph alone does not tell whether the output
    holds logits or probabilities.
    """

    input_name: str
    input_shape: tuple[int | None, ...]
    input_kind: InputKind
    output_name: str
    num_classes: int | None
    output_kind: OutputKind | None
    output_elem_type: int
    opset: int


def load_model(path: str) -> onnx.ModelProto:
    """Read an ONNX model file, with a clear error when it is not one."""
    try:
        return onnx.load(path)
    except FileNotFoundError:
        raise ModelValidationError(f"model file not found: {path}") from None
    except Exception as exc:  # onnx raises protobuf DecodeError and others
        raise ModelValidationError(f"{path} is not a readable ONNX model: {exc}") from None


def _dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelValidationError("the model imports no default ONNX opset")


def _pick_output(model: onnx.ModelProto, output_name: str | None) -> onnx.ValueInfoProto:
    candidates: list[onnx.ValueInfoProto] = []
    outputs: list[onnx.ValueInfoProto] = list(model.graph.output)
    for out in outputs:
        dims = _dims(out)
        if out.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE) and (
            dims is not None and len(dims) == 2
        ):
            candidates.append(out)
    if output_name is not None:
        for out in outputs:
            if out.name == output_name:
                if out not in candidates:
                    raise ModelValidationError(
                        f"output {output_name!r} is not a float tensor of shape [batch, classes]"
                    )
                return out
        names = ", ".join(o.name for o in model.graph.output)
        raise ModelValidationError(f"the model has no output {output_name!r} (it has: {names})")
    if len(candidates) == 1:
        return candidates[0]
    described = ", ".join(f"{o.name}" for o in model.graph.output)
    if not candidates:
        raise ModelValidationError(
            "the model needs one class-score output, a float tensor of shape "
            f"[batch, classes]; its outputs are: {described}. scikit-learn models "
            "exported with skl2onnx need options={'zipmap': False}"
        )
    raise ModelValidationError(
        f"the model has several [batch, classes] float outputs ({described}); "
        "name the class-score output to use"
    )


def inspect_model(model: onnx.ModelProto, output_name: str | None = None) -> ModelSignature:
    """Check that ``model`` is a classifier advmon can monitor and describe it.

    The model must have exactly one input, a float32 tensor with a batch axis first and
    1 (tabular ``[batch, features]``), 2 (``[batch, H, W]``) or 3 (``[batch, C, H, W]``)
    more axes; and one float output of shape ``[batch, classes]`` (``output_name`` picks
    it when there are several).
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelValidationError(f"the model must have exactly one input; it has: {names}")
    model_input = inputs[0]
    if model_input.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelValidationError(f"the model input {model_input.name!r} must be float32")
    dims = _dims(model_input)
    if dims is None or len(dims) not in (2, 3, 4):
        raise ModelValidationError(
            f"the model input {model_input.name!r} must have shape [batch, features], "
            "[batch, H, W] or [batch, C, H, W]"
        )
    kind: InputKind = "tabular" if len(dims) == 2 else "image"
    output = _pick_output(model, output_name)
    out_dims = _dims(output)
    assert out_dims is not None
    producer = next((n for n in model.graph.node if output.name in n.output), None)
    output_kind: OutputKind | None = None
    if producer is not None and producer.op_type in _PROBABILITY_OPS:
        output_kind = "probabilities"
    opset = _default_opset(model)
    if opset < _MIN_OPSET:
        raise ModelValidationError(
            f"the model uses ONNX opset {opset}; advmon needs {_MIN_OPSET} or newer "
            "(re-export it, or upgrade it with onnx.version_converter)"
        )
    return ModelSignature(
        input_name=model_input.name,
        input_shape=dims[1:],
        input_kind=kind,
        output_name=output.name,
        num_classes=out_dims[1],
        output_kind=output_kind,
        output_elem_type=output.type.tensor_type.elem_type,
        opset=opset,
    )


def check_squeezers_apply(squeezers: tuple[Squeezer, ...], signature: ModelSignature) -> None:
    """Raise :class:`ModelValidationError` unless every squeezer fits the model's input.

    A squeezer must support the input kind (image or tabular), and one fitted per feature
    must have been fitted on as many features as the model takes.
    """
    features = signature.input_shape[-1] if signature.input_kind == "tabular" else None
    for squeezer in squeezers:
        if signature.input_kind not in squeezer.input_kinds:
            raise ModelValidationError(
                f"squeezer {squeezer.spec!r} does not apply to {signature.input_kind} inputs "
                f"(input shape {list(signature.input_shape)})"
            )
        if isinstance(squeezer, Quantize | QuantileGrid):
            fitted = squeezer.n_features
            if fitted is not None and features is not None and fitted != features:
                raise ModelValidationError(
                    f"squeezer {squeezer.spec!r} was fitted on {fitted} features but the "
                    f"model takes {features}; calibrate it on inputs shaped like the model's"
                )


def _tensor_info(name: str, elem: int, shape: list[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def build_squeeze_graph(
    model: onnx.ModelProto,
    squeezers: tuple[Squeezer, ...],
    *,
    output_kind: OutputKind,
    output_name: str | None = None,
) -> onnx.ModelProto:
    """Return one ONNX model that scores a batch with feature squeezing.

    ``output_kind`` says whether the model's class-score output holds ``logits`` (a
    softmax is applied) or ``probabilities``. See the module docstring for the outputs.
    """
    if not squeezers:
        raise ModelValidationError("at least one squeezer is needed")
    signature = inspect_model(model, output_name)
    rank = len(signature.input_shape) + 1
    check_squeezers_apply(squeezers, signature)

    inner = onnx.compose.add_prefix(model, _MODEL_PREFIX)
    # Intermediate shapes recorded at export time may pin the batch size; the fused graph
    # runs the model over (k+1)·N rows, so let ONNX Runtime infer them afresh.
    del inner.graph.value_info[:]
    model_input = _MODEL_PREFIX + signature.input_name
    model_output = _MODEL_PREFIX + signature.output_name

    graph = GraphBuilder(_OUR_PREFIX, signature.opset)
    x = "input"
    copies = [x] + [squeezer.to_onnx(graph, x, rank) for squeezer in squeezers]
    graph.nodes.append(helper.make_node("Concat", copies, [model_input], axis=0))

    post = GraphBuilder(_OUR_PREFIX + "score/", signature.opset)
    scores = model_output
    if signature.output_elem_type != TensorProto.FLOAT:
        scores = post.op("Cast", [scores], to=TensorProto.FLOAT)
    probs = post.op("Softmax", [scores], axis=-1) if output_kind == "logits" else scores
    k = len(squeezers)
    # [(k+1)·N, C] -> [k+1, N, C]
    num_classes = post.slice(post.op("Shape", [probs]), [1], [2], [0])
    target = post.op("Concat", [post.const([k + 1, -1], "shape"), num_classes], axis=0)
    stacked = post.op("Reshape", [probs, target])
    original = post.op("Gather", [stacked, post.const(np.array(0, dtype=np.int64))], axis=0)
    squeezed = post.slice(stacked, [1], [k + 1], [0])
    l1 = post.op("Abs", [post.op("Sub", [squeezed, original])])
    distance = post.reduce("ReduceSum", l1, [2], keepdims=False)
    post.reduce("ReduceMax", distance, [0], keepdims=False, output="score")
    post.op("ArgMax", [original], output="prediction", axis=1, keepdims=0)
    post.op("Identity", [original], output="probabilities")
    post.op("Transpose", [distance], output="squeezer_distances", perm=[1, 0])

    input_shape: list[int | str | None] = ["batch", *signature.input_shape]
    fused_graph = helper.make_graph(
        nodes=[*graph.nodes, *inner.graph.node, *post.nodes],
        name="advmon_feature_squeezing",
        inputs=[_tensor_info(x, TensorProto.FLOAT, input_shape)],
        outputs=[
            _tensor_info("score", TensorProto.FLOAT, ["batch"]),
            _tensor_info("prediction", TensorProto.INT64, ["batch"]),
            _tensor_info("probabilities", TensorProto.FLOAT, ["batch", signature.num_classes]),
            _tensor_info("squeezer_distances", TensorProto.FLOAT, ["batch", k]),
        ],
        initializer=[*graph.initializers, *inner.graph.initializer, *post.initializers],
    )
    fused_graph.sparse_initializer.extend(inner.graph.sparse_initializer)
    fused = helper.make_model(
        fused_graph,
        opset_imports=list(model.opset_import),
        producer_name="advmon",
        doc_string="feature squeezing: " + ",".join(s.spec for s in squeezers),
    )
    fused.ir_version = model.ir_version
    fused.functions.extend(inner.functions)
    try:
        onnx.checker.check_model(fused)
    except onnx.checker.ValidationError as exc:
        raise ModelValidationError(f"the fused graph is not valid ONNX: {exc}") from None
    return fused
