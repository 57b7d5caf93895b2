"""What one run of :mod:`benchmarks.drift_cost` measured, as
:mod:`benchmarks.drift_report` renders it."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.machine import Machine

__all__ = ["BATCH", "DriftCost", "DriftCostReport"]

#: Events per batch, as the worker batches them.
BATCH = 64


@dataclass(frozen=True)
class DriftCost:
    """Median seconds of each variant over the same events."""

    events: int
    scoring_s: float
    signals_s: float
    drift_s: float
    streams: int
    """Detector streams of the default signal set."""
    rounds: int

    def per_event_us(self, seconds: float) -> float:
        return seconds / self.events * 1e6

    @property
    def drift_cost_s(self) -> float:
        return self.signals_s + self.drift_s


@dataclass(frozen=True)
class DriftCostReport:
    """One run: the command, the machine and the figures."""

    command: str
    """The command line that ran the benchmark."""
    machine: Machine
    cost: DriftCost
