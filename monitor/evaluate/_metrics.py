"""The figures of a robustness report, from clean and adversarial inputs.

An attack's result at one ε is measured on the events it attacked:

- an event *succeeds* when the model classified it right, its adversarial input is
  classified wrong, and the perturbation's norm (in the attack's norm) is at most ε;
- robust accuracy is the fraction of attacked events classified right and not
  succeeded; the success rate is the successes over the events classified right;
- the median perturbation (L∞, L2 and L0, the elements changed) is over the successes;
- with a detector, the detection rate is the fraction of the successes it flags, and the
  ROC-AUC separates its scores of the clean events from those of the successes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from monitor.evaluate._attacks import Norm, perturbation_norm, within

__all__ = [
    "AttackOutcome",
    "Detections",
    "MedianPerturbation",
    "attack_outcome",
    "changed_elements",
    "rate",
]

_L0_TOLERANCE = 1e-6
"""An element counts as changed when it moves by more than this fraction of the range."""


def rate(hits: np.ndarray, total: int | None = None) -> float | None:
    """The fraction of ``hits`` that are true (over ``total`` rows when given); ``None``
    when there is nothing to count.

    Examples
    --------
    >>> rate(np.array([True, False, True, True]))
    0.75
    >>> rate(np.array([], dtype=bool)) is None
    True
    """
    count = len(hits) if total is None else total
    if count == 0:
        return None
    return float(np.count_nonzero(hits)) / count


def changed_elements(
    x: np.ndarray, x_adv: np.ndarray, input_range: tuple[float, float]
) -> np.ndarray:
    """How many input elements each row's perturbation changes (its L0 norm).

    Examples
    --------
    >>> changed_elements(np.zeros((1, 3)), np.array([[0.0, 0.5, 1e-9]]), (0.0, 1.0))
    array([1])
    """
    low, high = input_range
    delta = np.abs(x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    return np.asarray((delta > _L0_TOLERANCE * (high - low)).sum(axis=1), dtype=np.int64)


@dataclass(frozen=True)
class MedianPerturbation:
    """Median L∞, L2 and L0 size of the successful perturbations; ``None`` without one."""

    linf: float | None
    l2: float | None
    l0: float | None

    @classmethod
    def of(
        cls, x: np.ndarray, x_adv: np.ndarray, input_range: tuple[float, float]
    ) -> MedianPerturbation:
        """The medians over the rows of ``x`` and their adversarial ``x_adv``."""
        if len(x) == 0:
            return cls(None, None, None)
        return cls(
            linf=float(np.median(perturbation_norm(x, x_adv, "linf"))),
            l2=float(np.median(perturbation_norm(x, x_adv, "l2"))),
            l0=float(np.median(changed_elements(x, x_adv, input_range))),
        )

    def to_dict(self) -> dict[str, float | None]:
        """The report's ``median_perturbation`` object."""
        return {"linf": self.linf, "l2": self.l2, "l0": self.l0}


@dataclass(frozen=True)
class Detections:
    """The detector's verdicts on some inputs: scores and whether each is flagged."""

    scores: np.ndarray
    flagged: np.ndarray

    def subset(self, mask: np.ndarray) -> Detections:
        """The verdicts of the rows ``mask`` selects."""
        return Detections(self.scores[mask], self.flagged[mask])


@dataclass(frozen=True)
class AttackOutcome:
    """One attack at one ε: the report's row, and the successes behind it."""

    name: str
    norm: Norm
    access: str
    eps: float
    n: int
    robust_accuracy: float
    success_rate: float | None
    median_perturbation: MedianPerturbation
    detection_rate: float | None
    roc_auc: float | None
    success: np.ndarray
    """``[n]`` bool: which attacked events the attack turned wrong within ε."""
    robust: np.ndarray
    """``[n]`` bool: which attacked events are still classified right."""
    detected: Detections | None
    """The detector's verdicts on the successful adversarial examples."""

    def to_dict(self) -> dict[str, Any]:
        """The report's row of this attack at this ε."""
        return {
            "name": self.name,
            "norm": self.norm,
            "access": self.access,
            "eps": self.eps,
            "n": self.n,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "median_perturbation": self.median_perturbation.to_dict(),
            "detection_rate": self.detection_rate,
            "roc_auc": self.roc_auc,
        }


def success_within(
    x: np.ndarray,
    x_adv: np.ndarray,
    correct: np.ndarray,
    fooled: np.ndarray,
    norm: Norm,
    eps: float,
) -> np.ndarray:
    """Which rows are successes at ``eps``: right before, wrong after, perturbed ≤ ε."""
    return np.asarray(correct & fooled & within(perturbation_norm(x, x_adv, norm), eps))


def attack_outcome(
    *,
    name: str,
    norm: Norm,
    access: str,
    eps: float,
    x: np.ndarray,
    x_adv: np.ndarray,
    correct: np.ndarray,
    success: np.ndarray,
    input_range: tuple[float, float],
    adversarial: Detections | None = None,
    clean: Detections | None = None,
) -> AttackOutcome:
    """The figures of an attack at ``eps`` over the attacked rows ``x``.

    ``correct`` says which rows the model classified right, ``success`` which the attack
    turned wrong within ε (:func:`success_within`). ``adversarial`` holds the detector's
    verdicts on every row of ``x_adv`` and ``clean`` on every clean event; without them
    the detection figures are ``None``.

    Examples
    --------
    >>> x = np.zeros((4, 2), dtype=np.float32)
    >>> x_adv = x + np.float32(0.1)
    >>> outcome = attack_outcome(
    ...     name="pgd", norm="linf", access="white-box", eps=0.1, x=x, x_adv=x_adv,
    ...     correct=np.array([True, True, True, False]),
    ...     success=np.array([True, False, False, False]), input_range=(0.0, 1.0),
    ... )
    >>> outcome.robust_accuracy, round(outcome.success_rate, 4), outcome.median_perturbation.l0
    (0.5, 0.3333, 2.0)
    """
    robust = correct & ~success
    detected: Detections | None = None
    detection_rate = roc_auc = None
    if adversarial is not None and clean is not None:
        detected = adversarial.subset(success)
        detection_rate = rate(detected.flagged)
        if len(detected.scores) and len(clean.scores):
            truth = np.r_[np.zeros(len(clean.scores)), np.ones(len(detected.scores))]
            scores = np.r_[clean.scores, detected.scores].astype(np.float64)
            roc_auc = float(roc_auc_score(truth, scores))
    return AttackOutcome(
        name=name,
        norm=norm,
        access=access,
        eps=float(eps),
        n=len(x),
        robust_accuracy=float(robust.mean()),
        success_rate=rate(success[correct]),
        median_perturbation=MedianPerturbation.of(x[success], x_adv[success], input_range),
        detection_rate=detection_rate,
        roc_auc=roc_auc,
        success=success,
        robust=robust,
        detected=detected,
    )
