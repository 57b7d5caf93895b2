"""Turn one event's input into a float32 array the model accepts, or say why not.

Every input is checked against hard limits before an array is built from it
(:data:`MAX_INPUT_DIMS`, :data:`MAX_INPUT_ELEMENTS`, reason ``too_large``): a declared
shape is checked before its bytes are read, a nested list's depth and size before numpy
sees it. They equal the wire contract's limits (``schemas.MAX_TENSOR_DIMS``,
``schemas.MAX_TENSOR_ELEMENTS``), which this package cannot import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from detectors._errors import InvalidInputError

__all__ = [
    "MAX_INPUT_DIMS",
    "MAX_INPUT_ELEMENTS",
    "TENSOR_DTYPES",
    "input_from_bytes",
    "input_from_nested_list",
    "validate_input",
]

MAX_INPUT_DIMS = 32
"""Dimensions of one input without its batch axis; numpy refuses more than 64."""

MAX_INPUT_ELEMENTS = 2**24
"""Elements of one input, and the largest size of one dimension (so that no product of
sizes overflows int64)."""

#: Element types accepted in raw tensor payloads (little-endian on the wire).
TENSOR_DTYPES = frozenset(
    {
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
    }
)


def input_from_nested_list(value: Sequence[Any]) -> np.ndarray:
    """Convert a nested list of numbers; ragged or non-numeric lists are refused.

    >>> input_from_nested_list([[0, 1], [2, 3]]).shape
    (2, 2)
    >>> input_from_nested_list([[0, 1], [2]])
    Traceback (most recent call last):
    ...
    detectors._errors.InvalidInputError: input is a ragged nested list (rows of different lengths)
    """
    # Depth and size along the first elements: the shape numpy would build, checked before
    # numpy allocates it (a ragged list is refused by numpy itself).
    depth, elements, level = 0, 1, value
    while isinstance(level, list | tuple):
        depth += 1
        elements *= len(level)
        if depth > MAX_INPUT_DIMS or elements > MAX_INPUT_ELEMENTS:
            raise InvalidInputError(
                "too_large",
                f"input nested list is deeper than {MAX_INPUT_DIMS} levels or holds more "
                f"than {MAX_INPUT_ELEMENTS} numbers",
            )
        if not level:
            break
        level = level[0]
    try:
        # Values beyond float32 become inf, which validate_input refuses with a reason.
        with np.errstate(over="ignore"):
            array = np.asarray(value, dtype=np.float32)
    except ValueError as exc:
        if "inhomogeneous" in str(exc) or "sequence" in str(exc):
            raise InvalidInputError(
                "ragged", "input is a ragged nested list (rows of different lengths)"
            ) from None
        raise InvalidInputError("dtype", "input holds values that are not numbers") from None
    except (TypeError, OverflowError):
        raise InvalidInputError("dtype", "input holds values that are not numbers") from None
    if array.ndim > MAX_INPUT_DIMS or array.size > MAX_INPUT_ELEMENTS:
        raise InvalidInputError(
            "too_large", f"input of shape {list(array.shape)} is larger than accepted"
        )
    # JSON has no NaN literal; NumPy turns a JSON null into NaN.
    if np.isnan(array).any():
        raise InvalidInputError("dtype", "input holds null values, not numbers")
    return array


def input_from_bytes(data: bytes, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode raw little-endian tensor bytes to a float32 array of ``shape``.

    The shape is checked against the limits before anything is allocated.

    >>> input_from_bytes(bytes(2), "uint8", [2]).tolist()
    [0.0, 0.0]
    >>> input_from_bytes(b"", "uint8", [0, 2**63])
    Traceback (most recent call last):
    ...
    detectors._errors.InvalidInputError: input dimension 9223372036854775808 is larger than 16777216
    """
    if dtype not in TENSOR_DTYPES:
        raise InvalidInputError("dtype", f"input dtype {dtype!r} is not supported")
    if len(shape) > MAX_INPUT_DIMS:
        raise InvalidInputError(
            "too_large", f"input has {len(shape)} dimensions; at most {MAX_INPUT_DIMS} are accepted"
        )
    for size in shape:
        if size < 0:
            raise InvalidInputError("shape", f"input shape {list(shape)} has a negative dimension")
        if size > MAX_INPUT_ELEMENTS:
            raise InvalidInputError(
                "too_large", f"input dimension {size} is larger than {MAX_INPUT_ELEMENTS}"
            )
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise InvalidInputError(
            "too_large",
            f"input shape {list(shape)} holds {elements} elements; at most "
            f"{MAX_INPUT_ELEMENTS} are accepted",
        )
    wire = np.dtype(dtype).newbyteorder("<")
    expected = elements * wire.itemsize
    if len(data) != expected:
        raise InvalidInputError(
            "shape",
            f"input has {len(data)} bytes but {dtype} of shape {list(shape)} needs {expected}",
        )
    with np.errstate(over="ignore"):
        return np.frombuffer(data, dtype=wire).reshape(tuple(shape)).astype(np.float32)


def validate_input(
    array: np.ndarray,
    shape: Sequence[int | None],
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Check an input (no batch axis) against the model's shape, finiteness and range.

    ``None`` in ``shape`` accepts any size on that axis. Returns ``array`` unchanged.
    """
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        wanted = ", ".join("*" if w is None else str(w) for w in shape)
        raise InvalidInputError(
            "shape", f"input shape {list(array.shape)} does not match the model's [{wanted}]"
        )
    if not np.all(np.isfinite(array)):
        raise InvalidInputError("non_finite", "input contains NaN or infinite values")
    if value_range is not None and array.size:
        low, high = value_range
        seen_low, seen_high = float(array.min()), float(array.max())
        if seen_low < low or seen_high > high:
            raise InvalidInputError(
                "range",
                f"input values span [{seen_low:g}, {seen_high:g}], outside the "
                f"calibrated range [{low:g}, {high:g}]",
            )
    return array
