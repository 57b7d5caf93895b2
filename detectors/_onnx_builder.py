"""A tiny helper for emitting ONNX nodes with unique names and opset-aware operators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT64_MAX = np.iinfo(np.int64).max


class GraphBuilder:
    """Collects nodes and constants for one ONNX graph under a name prefix.

    ``opset`` is the default-domain opset of the model the nodes will live in: operators
    whose signature changed between opsets (``ReduceMax`` took ``axes`` as an attribute
    before opset 18) are emitted in the form that opset expects.
    """

    def __init__(self, prefix: str, opset: int) -> None:
        self.prefix = prefix
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        """Return a new unique tensor name."""
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: np.ndarray | Sequence[int] | float, hint: str = "const") -> str:
        """Add an initializer and return its name; ints become int64, floats float32."""
        array = np.asarray(value)
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        elif array.dtype.kind == "f":
            array = array.astype(np.float32)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        hint: str = "",
        output: str | None = None,
        **attrs: Any,
    ) -> str:
        """Add a single-output node and return the name of its output.

        The output is named ``output`` when given, else a fresh name built from ``hint``.
        """
        output = output or self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attrs))
        return output

    def reduce(
        self,
        op_type: str,
        x: str,
        axes: Sequence[int],
        keepdims: bool,
        output: str | None = None,
    ) -> str:
        """Emit ``ReduceSum``/``ReduceMax``, passing ``axes`` the way this opset wants."""
        input_axes = self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13)
        if input_axes:
            inputs = [x, self.const(list(axes), "axes")]
            return self.op(op_type, inputs, output=output, keepdims=int(keepdims))
        return self.op(op_type, [x], output=output, axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        """Emit ``Unsqueeze`` (axes are an input from opset 13 on)."""
        return self.op("Unsqueeze", [x, self.const(list(axes), "axes")])

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int]) -> str:
        """Emit ``Slice`` with constant bounds."""
        return self.op(
            "Slice",
            [
                x,
                self.const(list(starts), "starts"),
                self.const(list(ends), "ends"),
                self.const(list(axes), "axes"),
            ],
        )
