"""Drift signals: what the scoring stage computes per event for each model's detectors.

:func:`drift_plans` checks at start-up that every model's signals fit it; for each scored
batch, :func:`signal_batch` computes the plan's columns into the signals record that the
scoring stage publishes, keyed by model, for :mod:`monitor.worker.stages.drift`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from detectors import DriftConfigError, DriftMonitor, SignalSpec, signal_columns
from detectors.runtime import SqueezeScores
from monitor.worker.models import ModelDetector
from monitor.worker.records import InputMessage
from schemas import InferenceEvent, SignalBatch

__all__ = ["DriftPlan", "drift_plans", "signal_batch"]


@dataclass(frozen=True)
class DriftPlan:
    """What drift detection does for one model: its signals and the columns they need."""

    model_id: str
    signals: tuple[SignalSpec, ...]
    num_classes: int | None
    cooldown_seconds: float

    @property
    def fingerprint(self) -> str:
        """Identifies the configuration a state was learned under."""
        return repr((self.signals, self.num_classes, self.cooldown_seconds))

    def new_monitor(self) -> DriftMonitor:
        """Fresh detectors for this plan."""
        return DriftMonitor(self.signals, self.num_classes, self.cooldown_seconds)

    @property
    def columns(self) -> list[str]:
        """The per-event columns the scoring stage computes for this model."""
        return list(dict.fromkeys(s.column for s in self.signals))


def drift_plans(models: Mapping[str, ModelDetector]) -> dict[str, DriftPlan]:
    """The drift plan of every model with drift detection on.

    Raises :class:`detectors.DriftConfigError` naming the model when a signal does not
    fit it (``predicted_class`` without classes, a feature index beyond the input).
    """
    plans: dict[str, DriftPlan] = {}
    for model_id, model in models.items():
        drift = model.config.drift
        if not drift.enabled:
            continue
        detector = model.detector
        dims = detector.input_shape
        n_features = None if None in dims else math.prod(d for d in dims if d is not None)
        try:
            specs = drift.signal_specs(detector.input_kind, detector.num_classes, n_features)
            for spec in specs:
                name, _, index = spec.name.partition(":")
                if name == "feature" and n_features is not None and int(index) >= n_features:
                    raise DriftConfigError(
                        f"signal {spec.name!r}: the input has {n_features} features"
                    )
            plan = DriftPlan(model_id, tuple(specs), detector.num_classes, drift.cooldown_seconds)
            plan.new_monitor()
        except DriftConfigError as exc:
            raise DriftConfigError(f"model {model_id!r}: drift: {exc}") from None
        plans[model_id] = plan
    return plans


def signal_batch(
    plan: DriftPlan,
    messages: Sequence[InputMessage],
    rows: Sequence[int],
    events: Sequence[InferenceEvent],
    times: Sequence[float],
    inputs: np.ndarray,
    scores: SqueezeScores,
) -> SignalBatch:
    """The signals record of a scored batch of one model."""
    columns = signal_columns(
        plan.columns, inputs, scores.probabilities, scores.score, scores.prediction
    )
    return SignalBatch.model_construct(
        model_id=plan.model_id,
        event_ids=[e.event_id for e in events],
        times=list(times),
        topics=[m.topic for m in messages],
        partitions=[m.partition for m in messages],
        offsets=[m.offset for m in messages],
        rows=list(rows) if any(rows) else None,
        columns={name: values.tolist() for name, values in columns.items()},
    )
