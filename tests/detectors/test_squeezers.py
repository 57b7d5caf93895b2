"""Squeezers: spec parsing, and their ONNX form against NumPy/SciPy references."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from detectors import (
    BitDepth,
    MedianFilter,
    Quantize,
    SqueezerSpecError,
    format_squeezer_spec,
    parse_squeezer_spec,
)
from detectors._onnx_builder import GraphBuilder
from detectors.squeezers import Squeezer, squeezer_from_dict
from tests.detectors import reference


def run_squeezer(squeezer: Squeezer, x: np.ndarray, opset: int = 17) -> np.ndarray:
    """Run one squeezer's ONNX operators alone on ``x`` (all axes symbolic)."""
    graph = GraphBuilder("t/", opset)
    out = squeezer.to_onnx(graph, "x", x.ndim)
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "squeezer",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None] * x.ndim)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None] * x.ndim)],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {"x": x})[0]
    return result


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bit_depth:1", (BitDepth(1),)),
        ("bit_depth:8, median:2x2 ,median:3", (BitDepth(8), MedianFilter(2), MedianFilter(3))),
        ("quantize:0.25", (Quantize(0.25),)),
        ("median:7,", (MedianFilter(7),)),
    ],
)
def test_parse_spec(spec: str, expected: tuple[Squeezer, ...]) -> None:
    assert parse_squeezer_spec(spec) == expected


def test_spec_round_trips_through_its_canonical_form() -> None:
    squeezers = parse_squeezer_spec("bit_depth:5,median:2,quantize:0.5")
    assert format_squeezer_spec(squeezers) == "bit_depth:5,median:2,quantize:0.5"
    assert parse_squeezer_spec(format_squeezer_spec(squeezers)) == squeezers


def test_input_range_reaches_bit_depth() -> None:
    (squeezer,) = parse_squeezer_spec("bit_depth:4", input_range=(0.0, 255.0))
    assert squeezer == BitDepth(4, 0.0, 255.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("bit_depth", "needs a parameter"),
        ("bit_depth:0", "bits must be 1 to 8"),
        ("bit_depth:9", "bits must be 1 to 8"),
        ("bit_depth:two", "expected an integer"),
        ("median:1", "at least 2"),
        ("median:2x3", "square"),
        ("quantize:-1", "positive"),
        ("quantize:nan", "positive"),
        ("blur:3", "unknown squeezer 'blur'"),
    ],
)
def test_bad_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(SqueezerSpecError, match=message):
        parse_squeezer_spec(spec)


def test_squeezer_parameters_round_trip_through_dicts() -> None:
    fitted = Quantize(0.5).fit(np.array([1.0, 2.0]), np.array([0.5, 0.0]))
    for squeezer in (BitDepth(3, -1.0, 1.0), MedianFilter(4), fitted):
        assert squeezer_from_dict(squeezer.to_dict()) == squeezer
    with pytest.raises(SqueezerSpecError, match="unknown squeezer kind"):
        squeezer_from_dict({"kind": "blur"})
    with pytest.raises(SqueezerSpecError, match="malformed median"):
        squeezer_from_dict({"kind": "median"})


@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_bit_depth_matches_reference(bits: int) -> None:
    rng = np.random.default_rng(bits)
    # Values outside [0, 1] check the clipping; exact level midpoints check rounding.
    x = rng.uniform(-0.2, 1.2, size=(4, 3, 7, 5)).astype(np.float32)
    x[0, 0, 0, :] = (np.arange(5) + 0.5) / (2**bits - 1)
    expected = reference.bit_depth(x, bits)
    np.testing.assert_allclose(run_squeezer(BitDepth(bits), x), expected, atol=1e-6)
    assert len(np.unique(expected)) <= 2**bits


def test_bit_depth_on_another_range() -> None:
    x = np.random.default_rng(0).uniform(0, 255, size=(3, 10, 10)).astype(np.float32)
    got = run_squeezer(BitDepth(3, 0.0, 255.0), x)
    np.testing.assert_allclose(got, reference.bit_depth(x, 3, 0.0, 255.0), atol=1e-4)
    np.testing.assert_allclose(np.unique(got), np.linspace(0, 255, 8), atol=1e-4)


@pytest.mark.parametrize("size", [2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(2, 1, 5, 7), (2, 3, 6, 6), (3, 9, 4), (1, 1, 2, 2)])
def test_median_matches_scipy_including_edges(size: int, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(size).random(shape, dtype=np.float32)
    np.testing.assert_array_equal(run_squeezer(MedianFilter(size), x), reference.median(x, size))


def test_median_even_window_anchor_and_border_replication() -> None:
    # One bright pixel in the top-left corner of a 3×3 image. With a 2×2 window spanning
    # rows/cols i-1..i and border replication, pixel (0, 0) sees only the corner value,
    # and (0, 1), (1, 0) see it twice out of four: the upper median keeps it there.
    x = np.zeros((1, 1, 3, 3), dtype=np.float32)
    x[0, 0, 0, 0] = 1.0
    expected = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(run_squeezer(MedianFilter(2), x)[0, 0], expected)


def test_median_works_on_old_opsets() -> None:
    x = np.random.default_rng(1).random((2, 1, 6, 6), dtype=np.float32)
    np.testing.assert_array_equal(
        run_squeezer(MedianFilter(3), x, opset=13), reference.median(x, 3)
    )


def test_quantize_matches_reference_and_keeps_constant_features() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 2.0, size=(50, 4)).astype(np.float32)
    x[:, 3] = 7.0
    fitted = Quantize(0.5).fit(x.mean(axis=0), x.std(axis=0))
    center, spacing = fitted.grid()
    got = run_squeezer(fitted, x)
    np.testing.assert_allclose(got, reference.quantize(x, center, spacing), atol=1e-5)
    np.testing.assert_array_equal(got[:, 3], 7.0)
    assert len(np.unique(got[:, 0])) < len(np.unique(x[:, 0]))


def test_quantize_must_be_fitted_before_use() -> None:
    with pytest.raises(SqueezerSpecError, match="calibrate first"):
        run_squeezer(Quantize(0.5), np.zeros((2, 3), dtype=np.float32))


@pytest.mark.parametrize("size", [2, 3, 4])
def test_median_matches_scipy_on_inputs_full_of_ties(size: int) -> None:
    x = (np.random.default_rng(size).integers(0, 3, (4, 2, 9, 7)) / 2).astype(np.float32)
    np.testing.assert_array_equal(run_squeezer(MedianFilter(size), x), reference.median(x, size))
