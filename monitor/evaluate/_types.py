"""What an evaluation produces: the report's content plus the raw scores its plots need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["AttackScores", "Evaluation"]


@dataclass(frozen=True)
class AttackScores:
    """The detector's scores of one attack's successful adversarial examples at one ε."""

    name: str
    norm: str
    eps: float
    scores: np.ndarray
    """Squeeze scores, one per successful adversarial example (float)."""
    labels: np.ndarray
    """The true class of each of them (int)."""


@dataclass(frozen=True)
class Evaluation:
    """The result of ``advmon evaluate``.

    ``report`` is the content of ``report.json`` and validates against
    ``schemas/json/robustness_report.schema.json``. The arrays are what the HTML report's
    ROC curves and score histograms are drawn from; they are not written to the JSON.
    """

    report: dict[str, Any]
    clean_scores: np.ndarray | None = None
    """The detector's scores of the clean events (None without a detector)."""
    clean_labels: np.ndarray | None = None
    adversarial_scores: list[AttackScores] = field(default_factory=list)
