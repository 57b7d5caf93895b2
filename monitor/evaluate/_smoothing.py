"""Certified accuracy of the randomized-smoothing classifier built on the model.

Randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019) classifies an input by the
majority vote of the model over Gaussian-noised copies of it; when the vote's top class
is likely enough, no L2 perturbation of norm below ``σ·Φ⁻¹(p_A)`` changes it. ART's
``NumpyRandomizedSmoothing`` runs CERTIFY over the black-box model: ``n0`` noisy copies
select the class, ``n`` more bound its probability ``p_A`` from below (Clopper–Pearson, at
confidence ``1 - alpha``), and an input whose bound is under ½ abstains.

Certified accuracy at radius ``R`` is the fraction of events the smoothed classifier
gets right with a certified radius of at least ``R``; it cannot grow with ``R``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.evaluate._estimators import seed_everything

__all__ = ["CertifiedAccuracy", "SmoothingPlan", "certified_accuracy", "smoothing_plan"]

_RADII = (0.0, 0.125, 0.25, 0.5)
"""Radii at which certified accuracy is reported, as fractions of the input range."""


@dataclass(frozen=True)
class SmoothingPlan:
    """How randomized smoothing is run: noise levels and noise samples per event."""

    sigmas: tuple[float, ...]
    radii: tuple[float, ...]
    n0: int
    """Noisy copies that select the class."""
    n: int
    """Noisy copies that certify it."""
    alpha: float = 0.001

    def rows(self, events: int) -> int:
        """Model rows the plan costs for that many events."""
        return len(self.sigmas) * events * (self.n0 + self.n)


def smoothing_plan(budget: str, input_range: tuple[float, float]) -> SmoothingPlan:
    """The plan for a budget: σ = ¼ of the input range with few noise samples (``small``),
    or σ at ⅛, ¼ and ½ of it with more (``full``).

    Examples
    --------
    >>> smoothing_plan("small", (0.0, 1.0))
    SmoothingPlan(sigmas=(0.25,), radii=(0.0, 0.125, 0.25, 0.5), n0=32, n=200, alpha=0.001)
    """
    low, high = input_range
    width = high - low
    radii = tuple(width * r for r in _RADII)
    if budget == "small":
        return SmoothingPlan((0.25 * width,), radii, n0=32, n=200)
    return SmoothingPlan(tuple(f * width for f in (0.125, 0.25, 0.5)), radii, n0=100, n=1000)


@dataclass(frozen=True)
class CertifiedAccuracy:
    """Certified accuracy at one noise level and radius (a row of the report)."""

    sigma: float
    radius: float
    n: int
    certified_accuracy: float

    def to_dict(self) -> dict[str, float | int]:
        """The report's ``certified`` row."""
        return {
            "sigma": self.sigma,
            "radius": self.radius,
            "n": self.n,
            "certified_accuracy": self.certified_accuracy,
        }


@functools.cache
def _smoothing_type() -> type[Any]:
    from art.estimators.certification.randomized_smoothing import NumpyRandomizedSmoothing
    from scipy.stats import beta

    class ClopperPearsonSmoothing(NumpyRandomizedSmoothing):  # type: ignore[misc]
        """ART's smoothing with its Clopper–Pearson lower bound computed by scipy."""

        def _lower_confidence_bound(self, n_class_samples: int, n_total_samples: int) -> float:
            # The lower end of the two-sided (1 - 2·alpha) Clopper–Pearson interval, as
            # ART computes it with statsmodels (method "beta").
            if n_class_samples == 0:
                return 0.0
            return float(
                beta.ppf(self.alpha, n_class_samples, n_total_samples - n_class_samples + 1)
            )

    return ClopperPearsonSmoothing


def certified_accuracy(
    classifier: Any,
    x: np.ndarray,
    y: np.ndarray,
    plan: SmoothingPlan,
    *,
    seed: int = 0,
    batch_size: int = 256,
    on_sigma: Callable[[int], None] | None = None,
) -> list[CertifiedAccuracy]:
    """Certify the events ``x`` (true classes ``y``) under each σ of ``plan``.

    ``classifier`` is the ART black-box classifier of the model. Returns a row per σ and
    radius, radii ascending; ``on_sigma`` is called with the number of σ done after each.
    """
    rows: list[CertifiedAccuracy] = []
    for done, sigma in enumerate(plan.sigmas, start=1):
        smoothed = _smoothing_type()(classifier, sample_size=plan.n0, scale=sigma, alpha=plan.alpha)
        seed_everything(seed)
        prediction, radius = smoothed.certify(
            np.ascontiguousarray(x, dtype=np.float32), n=plan.n, batch_size=batch_size
        )
        right = np.asarray(prediction) == y
        rows.extend(
            CertifiedAccuracy(
                sigma=float(sigma),
                radius=float(r),
                n=len(x),
                certified_accuracy=float(np.mean(right & (np.asarray(radius) >= r))),
            )
            for r in sorted(plan.radii)
        )
        if on_sigma is not None:
            on_sigma(done)
    return rows
