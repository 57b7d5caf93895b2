"""Threshold calibration and running input statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors import CalibrationError, FeatureStats, calibrate_threshold


@pytest.mark.parametrize(("n", "fpr"), [(100, 0.05), (101, 0.05), (1000, 0.01), (250, 0.1)])
def test_threshold_is_the_ceil_rank_order_statistic(n: int, fpr: float) -> None:
    scores = np.random.default_rng(n).permutation(np.arange(1, n + 1) / n)
    calibration = calibrate_threshold(scores, fpr)
    rank = math.ceil((1 - fpr) * n)
    assert calibration.threshold == pytest.approx(rank / n)
    assert calibration.achieved_fpr == pytest.approx((n - rank) / n)
    assert calibration.achieved_fpr <= fpr
    assert calibration.n_events == n
    assert calibration.target_fpr == fpr


def test_ties_never_push_the_benign_flag_rate_above_target() -> None:
    scores = np.r_[np.zeros(90), np.full(10, 0.5)]
    calibration = calibrate_threshold(scores, fpr=0.05)
    assert calibration.threshold == 0.5
    assert calibration.achieved_fpr == 0.0


def test_quantiles_are_reported() -> None:
    calibration = calibrate_threshold(np.linspace(0, 1, 101), fpr=0.05)
    assert calibration.score_quantiles["p50"] == pytest.approx(0.5)
    assert calibration.score_quantiles["p100"] == pytest.approx(1.0)


def test_refuses_fewer_than_100_events() -> None:
    with pytest.raises(CalibrationError, match="at least 100 benign events, got 99"):
        calibrate_threshold(np.zeros(99))


def test_refuses_an_fpr_the_data_cannot_resolve() -> None:
    with pytest.raises(CalibrationError, match="give at least 1000 benign events"):
        calibrate_threshold(np.zeros(200), fpr=0.001)
    assert calibrate_threshold(np.zeros(1000), fpr=0.001).threshold == 0.0


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5])
def test_refuses_an_fpr_outside_zero_one(fpr: float) -> None:
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        calibrate_threshold(np.zeros(500), fpr=fpr)


def test_refuses_non_finite_scores() -> None:
    scores = np.zeros(200)
    scores[3] = np.nan
    with pytest.raises(CalibrationError, match="not finite"):
        calibrate_threshold(scores)


def test_feature_stats_do_not_depend_on_batching() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 2, 3)).astype(np.float32)
    stats = FeatureStats()
    for chunk in np.array_split(x, [1, 7, 300, 301, 999]):
        stats.update(chunk)
    assert stats.count == 1000
    assert stats.input_shape == (2, 3)
    np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.std, x.astype(np.float64).std(axis=0), rtol=1e-9)
    assert stats.value_range == (float(x.min()), float(x.max()))


def test_feature_stats_without_data() -> None:
    with pytest.raises(CalibrationError, match="no inputs"):
        _ = FeatureStats().mean


def test_feature_stats_of_inputs_with_different_shapes_keep_only_count_and_range() -> None:
    stats = FeatureStats()
    stats.update(np.zeros((3, 1, 4, 4)))
    stats.update(np.ones((2, 1, 6, 6)))
    assert stats.count == 5
    assert stats.value_range == (0.0, 1.0)
    assert stats.input_shape is None
    with pytest.raises(CalibrationError, match="differ in shape"):
        _ = stats.std


def test_feature_stats_keep_the_sample_on_request() -> None:
    x = np.random.default_rng(1).normal(size=(300, 4)).astype(np.float32)
    stats = FeatureStats(keep_sample=True)
    for chunk in np.array_split(x, [1, 50, 51, 299]):
        buffer = chunk.copy()
        stats.update(buffer)
        buffer[:] = 0.0  # callers may reuse their batch buffers
    np.testing.assert_array_equal(stats.sample, x)
    assert stats.sample.dtype == np.float32
    stats.update(x[:2])
    np.testing.assert_array_equal(stats.sample, np.concatenate([x, x[:2]]))


def test_feature_stats_sample_refusals() -> None:
    not_kept = FeatureStats()
    not_kept.update(np.zeros((3, 2)))
    with pytest.raises(CalibrationError, match="keep_sample=True"):
        _ = not_kept.sample
    with pytest.raises(CalibrationError, match="no inputs"):
        _ = FeatureStats(keep_sample=True).sample
    varying = FeatureStats(keep_sample=True)
    varying.update(np.zeros((3, 2)))
    varying.update(np.zeros((3, 5)))
    with pytest.raises(CalibrationError, match="differ in shape"):
        _ = varying.sample
