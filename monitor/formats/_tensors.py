"""Open Inference Protocol v2 tensor data as numpy arrays, and rows as tensor payloads.

The spec (kserve/open-inference-protocol, ``specification/protocol/inference_rest.md``,
"Tensor Data") gives ``data`` in row-major order, either in its natural nested form or
flattened to one dimension, and leaves coercion to the server. advmon coerces only where
no information is lost: JSON integers into float tensors, integral floats (``1.0``) into
integer tensors, ``0``/``1`` into BOOL. Fractions into integers, values out of the
type's range, booleans into numbers and strings anywhere are errors, since silently
truncating or re-reading them would score a different input from the one served.

Limits (reason ``too_large``), checked on the declared ``shape`` before ``data`` is read:
at most ``MAX_TENSOR_DIMS`` + 1 dimensions (the batch axis and a row), each dimension and
the whole tensor at most ``MAX_TENSOR_ELEMENTS``, at most ``MAX_RECORD_ROWS`` rows.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from monitor.formats._errors import FormatError, FormatErrorReason
from schemas import (
    MAX_RECORD_ROWS,
    MAX_TENSOR_DIMS,
    MAX_TENSOR_ELEMENTS,
    TensorDType,
    TensorPayload,
)

__all__ = ["OIP_DATATYPES", "check_tensor_shape", "decode_tensor", "tensor_payload"]

OIP_DATATYPES: dict[str, TensorDType] = {
    "BOOL": TensorDType.BOOL,
    "UINT8": TensorDType.UINT8,
    "UINT16": TensorDType.UINT16,
    "UINT32": TensorDType.UINT32,
    "UINT64": TensorDType.UINT64,
    "INT8": TensorDType.INT8,
    "INT16": TensorDType.INT16,
    "INT32": TensorDType.INT32,
    "INT64": TensorDType.INT64,
    "FP16": TensorDType.FLOAT16,
    "FP32": TensorDType.FLOAT32,
    "FP64": TensorDType.FLOAT64,
}
"""Open Inference Protocol datatypes advmon scores, and the numpy type of each."""

_INVALID = FormatErrorReason.INVALID_OIP_V2
_SHAPE = FormatErrorReason.SHAPE_MISMATCH
_TOO_LARGE = FormatErrorReason.TOO_LARGE


def check_tensor_shape(where: str, shape: Sequence[int]) -> int:
    """Check a batch tensor's declared shape (batch axis first) against the limits; return
    its number of elements.

    >>> check_tensor_shape("input 'x'", [2, 3])
    6
    >>> check_tensor_shape("input 'x'", [1] * 70)
    Traceback (most recent call last):
    ...
    monitor.formats.FormatError: input 'x' has 70 dimensions; at most 33 are accepted
    """
    if len(shape) > MAX_TENSOR_DIMS + 1:
        raise FormatError(
            _TOO_LARGE,
            f"{where} has {len(shape)} dimensions; at most {MAX_TENSOR_DIMS + 1} are accepted",
        )
    for size in shape:
        if size < 0:
            raise FormatError(_SHAPE, f"{where}: shape {list(shape)} has a negative dimension")
        if size > MAX_TENSOR_ELEMENTS:
            raise FormatError(
                _TOO_LARGE, f"{where}: dimension {size} is larger than {MAX_TENSOR_ELEMENTS}"
            )
    elements = math.prod(shape)
    if elements > MAX_TENSOR_ELEMENTS:
        raise FormatError(
            _TOO_LARGE,
            f"{where}: shape {list(shape)} holds {elements} elements; at most "
            f"{MAX_TENSOR_ELEMENTS} are accepted",
        )
    if shape and shape[0] > MAX_RECORD_ROWS:
        raise FormatError(
            _TOO_LARGE,
            f"{where}: a batch of {shape[0]} rows; at most {MAX_RECORD_ROWS} are accepted",
        )
    return elements


def decode_tensor(where: str, shape: Sequence[int], datatype: str, data: Any) -> np.ndarray:
    """Decode one tensor's ``data`` (flat or nested) into an array of ``shape``.

    ``where`` names the tensor in errors, e.g. ``"request input 'x'"``.

    Raises
    ------
    FormatError
        ``unsupported_datatype`` for BYTES, BF16 or an unknown datatype;
        ``shape_mismatch`` when the element count or the nesting disagrees with ``shape``;
        ``invalid_oip_v2`` when ``data`` is not an array of values of that datatype;
        ``too_large`` when ``shape`` exceeds a limit (checked before ``data`` is read).

    Examples
    --------
    >>> decode_tensor("input 'x'", [2, 2], "INT32", [1, 2, 3, 4]).tolist()
    [[1, 2], [3, 4]]
    >>> decode_tensor("input 'x'", [1, 3], "BOOL", [[True, False, True]]).dtype
    dtype('bool')
    """
    dtype = _numpy_dtype(where, datatype)
    expected = check_tensor_shape(where, shape)
    if not isinstance(data, list):
        raise FormatError(_INVALID, f"{where}: 'data' must be a JSON array")
    depth, level = 0, data
    while isinstance(level, list) and level:
        depth += 1
        level = level[0]
    if depth > max(len(shape), 1):
        raise FormatError(
            _SHAPE, f"{where}: 'data' is nested {depth} deep but 'shape' is {list(shape)}"
        )
    try:
        raw = np.array(data)
    except (ValueError, TypeError):
        raise FormatError(
            _SHAPE, f"{where}: nested 'data' is ragged (sub-arrays of different lengths)"
        ) from None
    if raw.ndim > 1 and raw.shape != tuple(shape):
        raise FormatError(
            _SHAPE,
            f"{where}: nested 'data' has shape {list(raw.shape)} but 'shape' is {list(shape)}",
        )
    if raw.size != expected:
        raise FormatError(
            _SHAPE,
            f"{where}: 'data' has {raw.size} elements but shape {list(shape)} needs {expected}",
        )
    return _cast(where, data, raw, dtype, datatype).reshape(tuple(shape))


def tensor_payload(row: np.ndarray) -> TensorPayload:
    """A tensor payload of ``row``: its dtype, shape and raw little-endian C-order bytes."""
    dtype = TensorDType(row.dtype.name)
    wire = np.ascontiguousarray(row, dtype=row.dtype.newbyteorder("<"))
    return TensorPayload(
        dtype=dtype,
        shape=list(row.shape),
        data_b64=base64.b64encode(wire.tobytes()).decode("ascii"),
    )


def _numpy_dtype(where: str, datatype: str) -> np.dtype[Any]:
    kind = OIP_DATATYPES.get(datatype)
    if kind is not None:
        return np.dtype(kind.value)
    if datatype == "BYTES":
        raise FormatError(
            FormatErrorReason.UNSUPPORTED_DATATYPE,
            f"{where} has datatype BYTES (strings or encoded blobs), which advmon cannot "
            "score; log the decoded numeric tensor instead",
        )
    supported = ", ".join(OIP_DATATYPES)
    raise FormatError(
        FormatErrorReason.UNSUPPORTED_DATATYPE,
        f"{where} has datatype {datatype!r}; supported: {supported}",
    )


def _cast(
    where: str, data: list[Any], raw: np.ndarray, dtype: np.dtype[Any], datatype: str
) -> np.ndarray:
    if raw.size == 0:
        return raw.astype(dtype)
    kind = raw.dtype.kind
    if kind not in "biuf":
        raise FormatError(_INVALID, f"{where}: 'data' holds values that are not {datatype} numbers")
    if dtype.kind == "b":
        if kind == "b" or (kind in "iu" and bool(np.isin(raw, (0, 1)).all())):
            return raw.astype(dtype)
        raise FormatError(_INVALID, f"{where}: BOOL 'data' must hold true/false (or 0/1)")
    if kind == "b":
        raise FormatError(_INVALID, f"{where}: {datatype} 'data' holds true/false values")
    if dtype.kind in "iu":
        if kind == "f":
            return _exact_integers(where, data, raw.shape, dtype, datatype)
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise FormatError(
                _INVALID, f"{where}: 'data' holds values outside the {datatype} range"
            )
        return raw.astype(dtype)
    with np.errstate(over="ignore"):
        cast = raw.astype(dtype)
    if not bool(np.isfinite(cast).all()):
        raise FormatError(_INVALID, f"{where}: 'data' holds values outside the {datatype} range")
    return cast


def _exact_integers(
    where: str, data: list[Any], shape: tuple[int, ...], dtype: np.dtype[Any], datatype: str
) -> np.ndarray:
    # numpy read the values as float64: some are fractions, or integers too large for
    # int64 mixed with others. Check each JSON value itself, so none is rounded.
    info = np.iinfo(dtype)
    values: list[int] = []
    for value in np.array(data, dtype=object).ravel().tolist():
        if isinstance(value, bool):
            raise FormatError(_INVALID, f"{where}: {datatype} 'data' holds true/false values")
        if isinstance(value, float):
            if not value.is_integer():
                raise FormatError(_INVALID, f"{where}: {datatype} 'data' holds non-integer numbers")
            value = int(value)
        if not info.min <= value <= info.max:
            raise FormatError(
                _INVALID, f"{where}: 'data' holds values outside the {datatype} range"
            )
        values.append(value)
    return np.array(values, dtype=dtype).reshape(shape)
