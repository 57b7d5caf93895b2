"""Squeezers: spec parsing, and their ONNX form against NumPy/SciPy references."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from detectors import (
    BitDepth,
    CalibrationError,
    MedianFilter,
    QuantileGrid,
    Quantize,
    RoundDecimals,
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
        ("quantile:8", (QuantileGrid(8),)),
        ("round:2,round:-3", (RoundDecimals(2), RoundDecimals(-3))),
    ],
)
def test_parse_spec(spec: str, expected: tuple[Squeezer, ...]) -> None:
    assert parse_squeezer_spec(spec) == expected


def test_spec_round_trips_through_its_canonical_form() -> None:
    spec = "bit_depth:5,median:2,quantize:0.5,quantile:16,round:-1"
    squeezers = parse_squeezer_spec(spec)
    assert format_squeezer_spec(squeezers) == spec
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
        ("quantile", "needs a parameter, e.g. .*quantile:8, round:2"),
        ("quantile:1", "number of grid points must be 2 to 1024, got 1"),
        ("quantile:1025", "number of grid points must be 2 to 1024, got 1025"),
        ("quantile:8.5", "quantile: expected an integer, got '8.5'"),
        ("round:13", "decimal places must be -6 to 12, got 13"),
        ("round:-7", "decimal places must be -6 to 12, got -7"),
        ("round:0.1", "round: expected an integer"),
        ("blur:3", "unknown squeezer 'blur'; known squeezers: .*quantile, round"),
    ],
)
def test_bad_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(SqueezerSpecError, match=message):
        parse_squeezer_spec(spec)


def test_squeezer_parameters_round_trip_through_dicts() -> None:
    fitted = Quantize(0.5).fit(np.array([1.0, 2.0]), np.array([0.5, 0.0]))
    sample = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    grid = QuantileGrid(4).fit(sample)
    for squeezer in (
        BitDepth(3, -1.0, 1.0),
        MedianFilter(4),
        fitted,
        grid,
        QuantileGrid(4),
        RoundDecimals(-2),
    ):
        assert squeezer_from_dict(squeezer.to_dict()) == squeezer
    assert grid.to_dict()["points"] == grid.grid().tolist()
    with pytest.raises(SqueezerSpecError, match="unknown squeezer kind"):
        squeezer_from_dict({"kind": "blur"})
    with pytest.raises(SqueezerSpecError, match="malformed median"):
        squeezer_from_dict({"kind": "median"})
    with pytest.raises(SqueezerSpecError, match="malformed round"):
        squeezer_from_dict({"kind": "round", "decimals": "two"})


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([[0.0, 1.0, 2.0]], "must hold 2 points for each of at least one feature"),
        ([[0.0, 1.0], [1.0]], "must hold 2 points"),
        ([], "must hold 2 points"),
        ([[1.0, 0.0]], "ascending"),
        ([[0.0, float("nan")]], "non-finite"),
        ([[0.0, "x"]], "malformed quantile"),
    ],
)
def test_a_malformed_quantile_grid_is_refused(points: list[list[object]], message: str) -> None:
    with pytest.raises(SqueezerSpecError, match=message):
        squeezer_from_dict({"kind": "quantile", "levels": 2, "points": points})


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


def test_quantile_grid_points_are_observed_benign_quantiles() -> None:
    # 40 events: feature 0 continuous, 1 binary with 30 % ones, 2 constant.
    rng = np.random.default_rng(4)
    sample = np.stack(
        [rng.normal(size=40), (np.arange(40) % 10 < 3), np.full(40, 2.5)], axis=1
    ).astype(np.float32)
    grid = QuantileGrid(8).fit(sample)
    np.testing.assert_array_equal(grid.probabilities, (np.arange(8) + 0.5) / 8)
    # Point i is the ceil(n·(i + 0.5)/K)-th smallest benign value.
    ranks = np.ceil(40 * grid.probabilities).astype(int) - 1
    np.testing.assert_array_equal(grid.grid(), np.sort(sample, axis=0)[ranks].T)
    assert grid.points is not None
    assert grid.points[1] == (0.0,) * 6 + (1.0,) * 2  # levels 1/16 … 11/16 fall on 0
    assert grid.points[2] == (2.5,) * 8
    assert grid.n_features == 3


def test_quantile_matches_exact_reference() -> None:
    rng = np.random.default_rng(5)
    sample = np.stack(
        [rng.normal(3.0, 2.0, 200), rng.integers(0, 3, 200), rng.exponential(1e4, 200)], axis=1
    ).astype(np.float32)
    grid = QuantileGrid(8).fit(sample)
    points = grid.grid()
    x = np.concatenate([sample[:100], rng.normal(0.0, 5e3, size=(50, 3))]).astype(np.float32)
    # Exact midpoints between neighbouring points, and the float32 values either side.
    middle = ((points[:, :-1].astype(np.float64) + points[:, 1:]) / 2).astype(np.float32).T
    for ties in (middle, np.nextafter(middle, -np.inf), np.nextafter(middle, np.inf)):
        x = np.concatenate([x, ties.astype(np.float32)])
    for opset in (13, 21):
        got = run_squeezer(grid, x, opset)
        np.testing.assert_array_equal(got, reference.quantile_snap(x, points))
    snapped = run_squeezer(grid, x)
    assert all(set(snapped[:, j]) <= set(points[j]) for j in range(3))
    # The discrete feature keeps its benign values.
    np.testing.assert_array_equal(snapped[:100, 1], sample[:100, 1])


def test_quantile_snaps_to_the_nearest_point_and_ties_go_lower() -> None:
    grid = QuantileGrid(4, points=((0.0, 1.0, 1.0, 4.0), (-1.0, -1.0, -1.0, -1.0)))
    x = np.array(
        [
            [-5.0, 7.0],  # below the grid: the lowest point; constant feature: its value
            [0.5, 0.0],  # halfway between 0 and 1: the lower
            [np.nextafter(np.float32(0.5), np.float32(1)), 0.0],  # just above: the upper
            [1.0, 0.0],  # on a repeated point
            [2.5, 0.0],  # halfway between 1 and 4: the lower
            [2.6, 0.0],
            [1e30, 0.0],  # above the grid: the highest point
        ],
        dtype=np.float32,
    )
    expected = np.array(
        [[0, -1], [0, -1], [1, -1], [1, -1], [1, -1], [4, -1], [4, -1]], dtype=np.float32
    )
    np.testing.assert_array_equal(run_squeezer(grid, x), expected)
    np.testing.assert_array_equal(reference.quantile_snap(x, grid.grid()), expected)


def test_quantile_ties_are_exact_even_where_float32_midpoints_round() -> None:
    # Points far apart in magnitude: the float32 nearest to their midpoint is not the
    # midpoint, and a float64 sum drops the tiny point. The graph must still pick the
    # exactly nearest point for the float32 values around every midpoint.
    points = np.array(
        [[-1e-30, 1.0], [1e-45, 3e38], [-3e38, 7e-8], [0.1, 0.3], [1.0, 1.0000001]],
        dtype=np.float32,
    )
    grid = QuantileGrid(2, points=tuple(tuple(float(v) for v in row) for row in points))
    middle = ((points[:, 0].astype(np.float64) + points[:, 1]) / 2).astype(np.float32)
    around = [np.nextafter(middle, -np.inf), middle, np.nextafter(middle, np.inf)]
    x = np.stack([m.astype(np.float32) for m in around])
    np.testing.assert_array_equal(run_squeezer(grid, x), reference.quantile_snap(x, points))
    # x = 0.5 is nearer to 1.0 than to -1e-30, by 1e-30.
    assert run_squeezer(grid, np.array([[0.5, 0, 0, 0, 0]], np.float32))[0, 0] == 1.0


def test_quantile_must_be_fitted_on_a_finite_table() -> None:
    with pytest.raises(SqueezerSpecError, match="quantile: the grid is not fitted; calibrate"):
        run_squeezer(QuantileGrid(8), np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(CalibrationError, match=r"shaped \[events, features\], got shape \[5\]"):
        QuantileGrid(8).fit(np.zeros(5))
    with pytest.raises(CalibrationError, match=r"got shape \[0, 3\]"):
        QuantileGrid(8).fit(np.zeros((0, 3)))
    with pytest.raises(CalibrationError, match="non-finite"):
        QuantileGrid(8).fit(np.array([[1.0], [np.inf]]))
    grid = QuantileGrid(2).fit(np.zeros((3, 2)))
    with pytest.raises(SqueezerSpecError, match="tabular inputs"):
        run_squeezer(grid, np.zeros((1, 1, 2, 2), dtype=np.float32))


@pytest.mark.parametrize("decimals", [-3, -1, 0, 1, 2, 4, 7, 12])
@pytest.mark.parametrize("opset", [13, 21])
def test_round_matches_numpy_round(decimals: int, opset: int) -> None:
    rng = np.random.default_rng(decimals + 10)
    x = (rng.normal(0.0, 1.0, size=(64, 5)) * 10.0 ** rng.integers(-4, 5, size=(64, 5))).astype(
        np.float32
    )
    got = run_squeezer(RoundDecimals(decimals), x, opset)
    np.testing.assert_array_equal(got, reference.round_decimals(x, decimals))


def test_round_rounds_halves_to_even() -> None:
    x = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, 0.25, 0.75, 250.0, 350.0]], dtype=np.float32)
    expected = {
        0: [0, 2, 2, -0, -2, 0, 1, 250, 350],
        1: [0.5, 1.5, 2.5, -0.5, -2.5, 0.2, 0.8, 250, 350],
        -2: [0, 0, 0, -0, -0, 0, 0, 200, 400],
    }
    for decimals, values in expected.items():
        got = run_squeezer(RoundDecimals(decimals), x)[0]
        np.testing.assert_array_equal(got, np.array(values, dtype=np.float32))
