"""Straightforward NumPy/SciPy implementations of feature squeezing, to test the graph."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np
from scipy import ndimage, special


def bit_depth(x: np.ndarray, bits: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """The NDSS paper's ``rint(x · (2^b − 1)) / (2^b − 1)``, generalised to ``[low, high]``."""
    levels = np.float32(2**bits - 1)
    span = np.float32(high - low)
    unit = (np.clip(x, low, high) - np.float32(low)) * (levels / span)
    squeezed: np.ndarray = (np.rint(unit) * (span / levels) + np.float32(low)).astype(np.float32)
    return squeezed


def median(x: np.ndarray, size: int) -> np.ndarray:
    """SciPy's median filter over the last two axes with border replication."""
    footprint = (1,) * (x.ndim - 2) + (size, size)
    filtered: np.ndarray = ndimage.median_filter(x, size=footprint, mode="nearest")
    return filtered


def quantize(x: np.ndarray, center: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Round each feature to its grid; features with zero spacing are left alone."""
    safe = np.where(spacing > 0, spacing, 1.0).astype(np.float32)
    snapped = np.rint((x - center) / safe) * safe + center
    return np.where(spacing > 0, snapped, x).astype(np.float32)


def quantile_snap(x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Each feature moved to its nearest grid point, in exact arithmetic; ties go lower.

    ``x`` is ``[N, features]``, ``points`` the ascending ``[features, K]`` grid; distances
    are exact fractions, and ``argmin`` takes the first (lowest) of equally near points.
    """
    exact = np.frompyfunc(Fraction, 1, 1)
    x_exact = np.asarray(exact(x.astype(np.float64)), dtype=object)
    points_exact = np.asarray(exact(points.astype(np.float64)), dtype=object)
    distance = np.abs(x_exact[:, :, None] - points_exact)
    nearest = np.argmin(distance, axis=2)
    snapped: np.ndarray = points[np.arange(points.shape[0]), nearest].astype(np.float32)
    return snapped


def round_decimals(x: np.ndarray, decimals: int) -> np.ndarray:
    """NumPy's own rounding to ``decimals`` places (half to even), in float32."""
    rounded: np.ndarray = np.round(x.astype(np.float32), decimals)
    return rounded


def squeeze_score(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    squeezed: list[np.ndarray],
    logits: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and per-squeezer L1 distances, running the model on each copy separately."""

    def probabilities(batch: np.ndarray) -> np.ndarray:
        out = predict(batch).astype(np.float64)
        probs: np.ndarray = special.softmax(out, axis=1) if logits else out
        return probs

    original = probabilities(x)
    distances = np.stack(
        [np.abs(probabilities(s) - original).sum(axis=1) for s in squeezed], axis=1
    )
    return distances.max(axis=1), distances
