"""Threshold calibration on benign traffic, and running statistics of benign inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detectors._errors import CalibrationError

__all__ = ["MIN_CALIBRATION_EVENTS", "Calibration", "FeatureStats", "calibrate_threshold"]

#: Fewest benign events a threshold is calibrated on.
MIN_CALIBRATION_EVENTS = 100


@dataclass(frozen=True)
class Calibration:
    """A threshold inferred from benign scores at a target false-positive rate.

    An event is flagged when its score is strictly greater than ``threshold``;
    ``achieved_fpr`` is the fraction of the benign events that would be flagged.
    """

    threshold: float
    target_fpr: float
    n_events: int
    achieved_fpr: float
    score_quantiles: dict[str, float]


def calibrate_threshold(scores: np.ndarray, fpr: float = 0.05) -> Calibration:
    """Threshold = the ``ceil((1 − fpr)·n)``-th smallest of ``n`` benign scores.

    Raises :class:`CalibrationError` for fewer than :data:`MIN_CALIBRATION_EVENTS`
    scores, non-finite scores, an ``fpr`` outside ``(0, 1)``, or an ``fpr`` smaller
    than ``1/n`` (the data cannot tell such a rate apart from zero).

    Examples
    --------
    >>> scores = np.linspace(0.0, 0.99, 100)
    >>> cal = calibrate_threshold(scores, fpr=0.05)
    >>> round(cal.threshold, 2), cal.achieved_fpr
    (0.94, 0.05)
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = len(scores)
    if not 0.0 < fpr < 1.0:
        raise CalibrationError(f"the false-positive rate must be between 0 and 1, got {fpr}")
    if n < MIN_CALIBRATION_EVENTS:
        raise CalibrationError(
            f"calibration needs at least {MIN_CALIBRATION_EVENTS} benign events, got {n}"
        )
    if not np.all(np.isfinite(scores)):
        raise CalibrationError("some benign scores are not finite; check the model's outputs")
    if fpr * n < 1.0:
        raise CalibrationError(
            f"a false-positive rate of {fpr:g} cannot be calibrated on {n} events: the "
            f"smallest non-zero rate {n} events can show is {1 / n:.2g}; give at least "
            f"{math.ceil(1 / fpr)} benign events or a larger --fpr"
        )
    rank = math.ceil((1.0 - fpr) * n)
    ordered = np.sort(scores)
    threshold = float(ordered[rank - 1])
    achieved = float(np.count_nonzero(scores > threshold)) / n
    quantiles = {f"p{q:g}": float(np.quantile(scores, q / 100)) for q in (50, 90, 95, 99, 100)}
    return Calibration(threshold, fpr, n, achieved, quantiles)


class FeatureStats:
    """Per-element count, mean, standard deviation, minimum and maximum over batches.

    Batches are merged with Chan et al.'s parallel update, so the result does not
    depend on how the events were batched (up to float rounding). When inputs differ in
    shape (models with symbolic axes) only the count and the value range are kept.

    Parameters
    ----------
    keep_sample
        Also keep a float32 copy of every input, for statistics that need the whole
        sample (the exact quantiles a ``quantile`` squeezer is fitted on). This holds
        ``4 · events · elements`` bytes: 4 MB for 10,000 events of 100 features, so meant
        for tabular calibration sets, not for large image sets.

    Examples
    --------
    >>> stats = FeatureStats(keep_sample=True)
    >>> stats.update(np.array([[1.0, 10.0], [3.0, 10.0]]))
    >>> stats.update(np.array([[5.0, 10.0]]))
    >>> stats.mean.tolist(), stats.std.tolist(), stats.sample.shape
    ([3.0, 10.0], [1.632993161855452, 0.0], (3, 2))
    """

    def __init__(self, keep_sample: bool = False) -> None:
        self.keep_sample = keep_sample
        self.count = 0
        self._sample: list[np.ndarray] = []
        self._shape: tuple[int, ...] | None = None
        self._varying_shape = False
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._min = math.inf
        self._max = -math.inf

    def update(self, batch: np.ndarray) -> None:
        """Add a batch shaped ``[N, *input_shape]``."""
        if len(batch) == 0:
            return
        values = np.asarray(batch, dtype=np.float64)
        n = len(values)
        self._min = min(self._min, float(values.min()))
        self._max = max(self._max, float(values.max()))
        if self._shape is not None and values.shape[1:] != self._shape:
            self._varying_shape = True
        self._shape = values.shape[1:]
        if self._varying_shape:
            self._sample.clear()
            self.count += n
            return
        if self.keep_sample:
            self._sample.append(np.array(batch, dtype=np.float32))
        mean = values.mean(axis=0)
        m2 = ((values - mean) ** 2).sum(axis=0)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2 = mean, m2
        else:
            total = self.count + n
            delta = mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + m2 + delta**2 * (self.count * n / total)
        self.count += n

    def _check_per_element(self) -> None:
        if self._varying_shape:
            raise CalibrationError(
                "the benign inputs differ in shape, so per-element statistics (needed by "
                "quantize and quantile) do not exist; use squeezers that need no fitting"
            )
        if self._mean is None:
            raise CalibrationError("no inputs were seen")

    @property
    def mean(self) -> np.ndarray:
        """Per-element mean."""
        self._check_per_element()
        assert self._mean is not None
        return self._mean

    @property
    def std(self) -> np.ndarray:
        """Per-element population standard deviation."""
        self._check_per_element()
        assert self._m2 is not None
        return np.sqrt(self._m2 / self.count)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of one input (without the batch axis); ``None`` if inputs differ."""
        return None if self._varying_shape else self._shape

    @property
    def sample(self) -> np.ndarray:
        """Every input seen, in order, as one float32 array ``[count, *input_shape]``.

        Only kept when constructed with ``keep_sample=True``.
        """
        if not self.keep_sample:
            raise CalibrationError("the benign inputs were not kept; use keep_sample=True")
        self._check_per_element()
        if len(self._sample) > 1:
            self._sample = [np.concatenate(self._sample)]
        return self._sample[0]

    @property
    def value_range(self) -> tuple[float, float]:
        """Smallest and largest value seen in any element."""
        return self._min, self._max
