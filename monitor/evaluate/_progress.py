"""How an evaluation reports its progress: a plan of steps, then each step as it runs.

:func:`monitor.evaluate.evaluate` first announces every step it will take with an
estimate of its seconds (a timed model call times the model queries the budget allows),
so a caller can print the expected duration before anything slow starts; then it starts,
advances and finishes each step in turn. :class:`NoProgress` ignores all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["EvaluationProgress", "NoProgress", "PlannedStep"]


@dataclass(frozen=True)
class PlannedStep:
    """One step of an evaluation: an attack, randomized smoothing, the cost measurement.

    Examples
    --------
    >>> PlannedStep("square", "square (linf, black-box)", total=4, estimated_seconds=2.5).total
    4
    """

    key: str
    """Unique within a plan, e.g. ``square`` or ``hopskipjump:linf``."""
    description: str
    total: int
    """Units of work the step advances through (ε values, or 1)."""
    estimated_seconds: float


class EvaluationProgress(Protocol):
    """Receives an evaluation's plan and its progress; every method returns at once."""

    def planned(self, steps: Sequence[PlannedStep]) -> None:
        """Called once, before the first step starts, with every step in order."""

    def started(self, step: PlannedStep) -> None:
        """The step begins."""

    def advanced(self, step: PlannedStep, done: int) -> None:
        """``done`` of the step's ``total`` units are finished."""

    def finished(self, step: PlannedStep) -> None:
        """The step is over (all its units done, or it was skipped)."""


class NoProgress:
    """An :class:`EvaluationProgress` that ignores everything.

    Examples
    --------
    >>> NoProgress().planned([])
    """

    def planned(self, steps: Sequence[PlannedStep]) -> None:
        """Ignore the plan."""

    def started(self, step: PlannedStep) -> None:
        """Ignore the start."""

    def advanced(self, step: PlannedStep, done: int) -> None:
        """Ignore the progress."""

    def finished(self, step: PlannedStep) -> None:
        """Ignore the end."""
