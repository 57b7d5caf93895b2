"""Turning event inputs into model inputs, with specific reasons when that fails."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import InvalidInputError, input_from_bytes, input_from_nested_list, validate_input


def test_nested_list_and_bytes_give_the_same_array() -> None:
    image = np.random.default_rng(0).random((1, 4, 4), dtype=np.float32)
    from_list = input_from_nested_list(image.tolist())
    from_bytes = input_from_bytes(image.astype("<f4").tobytes(), "float32", [1, 4, 4])
    np.testing.assert_array_equal(from_list, image)
    np.testing.assert_array_equal(from_bytes, image)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float64", "float16", "bool"])
def test_bytes_of_every_dtype_are_little_endian(dtype: str) -> None:
    values = np.array([0, 1, 1, 0, 1, 0], dtype=dtype)
    raw = values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(input_from_bytes(raw, dtype, [2, 3]), values.reshape(2, 3))


def test_big_endian_hosts_are_not_assumed() -> None:
    raw = np.array([1.5, -2.0], dtype="<f8").tobytes()
    np.testing.assert_array_equal(input_from_bytes(raw, "float64", [2]), [1.5, -2.0])


@pytest.mark.parametrize(
    ("value", "reason"),
    [([[1, 2], [3]], "ragged"), ([["a", "b"]], "dtype"), ([[1, None]], "dtype")],
)
def test_bad_nested_lists(value: list[object], reason: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        input_from_nested_list(value)
    assert info.value.reason == reason


def test_bad_bytes() -> None:
    with pytest.raises(InvalidInputError, match="needs 16") as info:
        input_from_bytes(b"\x00" * 12, "float32", [4])
    assert info.value.reason == "shape"
    with pytest.raises(InvalidInputError, match="not supported"):
        input_from_bytes(b"", "complex64", [0])


def test_validate_input_checks_shape_finiteness_and_range() -> None:
    x = np.zeros((1, 8, 8), dtype=np.float32)
    assert validate_input(x, (1, 8, 8)) is x
    assert validate_input(x, (1, None, 8)) is x
    with pytest.raises(
        InvalidInputError,
        match=r"\[1, 8, 8\] does not match the model's "
        r"\[3, 8, 8\]",
    ) as info:
        validate_input(x, (3, 8, 8))
    assert info.value.reason == "shape"
    with pytest.raises(InvalidInputError, match=r"\[\*, 8\]"):
        validate_input(x, (None, 8))
    bad = x.copy()
    bad[0, 1, 2] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or infinite") as info:
        validate_input(bad, (1, 8, 8))
    assert info.value.reason == "non_finite"
    bright = x + 2.0
    with pytest.raises(InvalidInputError, match=r"outside the calibrated range \[0, 1\]") as info:
        validate_input(bright, (1, 8, 8), (0.0, 1.0))
    assert info.value.reason == "range"
