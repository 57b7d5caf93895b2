"""The drift stage: per-event signals of each model → River detectors → drift detections.

The scoring stage publishes a :class:`~schemas.SignalBatch` per scored batch on the
internal signals topic, keyed by model id, so that all of a model's signals reach one
worker. That worker keeps the model's :class:`DriftState` (its detectors, and the last
inference offset applied per partition) in a Faust table keyed by model id: the state
moves with the partition on a rebalance, and a restarted worker recovers it from the
table's changelog instead of learning the baseline again.

The detectors see every event once under at-least-once delivery: the state records the
highest inference offset applied per topic-partition and skips any event at or below it,
so neither a replayed signals record nor an inference batch scored again after a crash
updates them twice. Per inference partition, events reach the detectors in offset order,
so a restarted worker continues exactly as an uninterrupted one would.

State is pickled (River detectors have no other serialisation). Unpickling is restricted
to the classes a state is made of (:class:`StateUnpickler`), so a forged changelog record
cannot make the worker run code.
"""

from __future__ import annotations

import io
import itertools
import logging
import pickle
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError
from river import drift

from detectors import DriftAlarm, DriftMonitor
from monitor.config import MonitorConfig
from monitor.errors import UnsafeStateError
from monitor.worker.metrics import Metrics
from monitor.worker.records import OutputRecord, Publish
from monitor.worker.signals import DriftPlan
from schemas import Detection, DetectionKind, SignalBatch

__all__ = ["DriftStage", "DriftState", "StateUnpickler", "drift_detection_id"]

logger = logging.getLogger(__name__)

STATE_FORMAT = 2


def drift_detection_id(stream: str, event_id: str) -> str:
    """The detection's id: a replay of the same drift is stored once."""
    return f"drift:{stream}:{event_id}"


def _fresh_events(batch: SignalBatch, applied: dict[str, tuple[int, int]]) -> list[int]:
    """Positions of the batch's events not applied yet; marks them applied.

    An event's place in its partition is ``(offset, row)``: formats that log a batch per
    message give each row an event.
    """
    rows = batch.rows if batch.rows is not None else [0] * len(batch.offsets)
    places = list(zip(batch.offsets, rows, strict=True))
    partitions = set(zip(batch.topics, batch.partitions, strict=True))
    if len(partitions) == 1:  # the usual case: one inference partition per batch
        ((topic, partition),) = partitions
        key = f"{topic}/{partition}"
        if (
            places
            and places[0] > applied.get(key, (-1, -1))
            and all(a < b for a, b in itertools.pairwise(places))
        ):
            applied[key] = places[-1]
            return list(range(len(places)))
    fresh: list[int] = []
    for i, (topic, partition, place) in enumerate(
        zip(batch.topics, batch.partitions, places, strict=True)
    ):
        key = f"{topic}/{partition}"
        if place > applied.get(key, (-1, -1)):
            applied[key] = place
            fresh.append(i)
    return fresh


_PAGE_HINKLEY_TESTS = frozenset({"_test_both", "_test_increase", "_test_decrease"})


def _page_hinkley_test(obj: object, name: str) -> Any:
    """``getattr`` for unpickling, limited to Page-Hinkley's test methods."""
    if type(obj) is not drift.PageHinkley or name not in _PAGE_HINKLEY_TESTS:
        raise UnsafeStateError(f"a drift state may not look up {type(obj).__name__}.{name}")
    return getattr(obj, name)


class StateUnpickler(pickle.Unpickler):
    """Unpickles drift states, refusing every global outside a fixed allowlist."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("collections", "deque"),
            ("random", "Random"),
            ("numpy", "dtype"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy.core.numeric", "_frombuffer"),
            ("detectors.drift", "DriftMonitor"),
            ("detectors.drift", "DriftDetector"),
            ("detectors.drift", "DriftDetectorSpec"),
            ("detectors.drift", "SignalSpec"),
            ("detectors.drift", "_Stream"),
            ("monitor.worker.stages.drift", "DriftState"),
            ("river.drift.adwin", "ADWIN"),
            ("river._river_rust.drift", "AdaptiveWindowing"),
            ("river.drift.kswin", "KSWIN"),
            ("river.drift.page_hinkley", "PageHinkley"),
            ("river.drift.no_drift", "NoDrift"),
            ("river.drift.binary.ddm", "DDM"),
            ("river.drift.binary.eddm", "EDDM"),
            ("river.drift.binary.hddm_a", "HDDMA"),
            ("river.drift.binary.hddm_w", "HDDMW"),
            ("river.drift.binary.hddm_w", "SampleInfo"),
            ("river.drift.binary.fhddm", "FHDDM"),
            ("river.stats.mean", "Mean"),
            ("river.stats.var", "Var"),
            ("river.stats.ewmean", "EWMean"),
            ("river._river_rust.stats", "RsEWMean"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            # Page-Hinkley keeps a bound method; only those may be looked up by name.
            return _page_hinkley_test
        if (module, name) == ("monitor.drift_stage", "DriftState"):
            # Where the class lived before the worker became a package: states
            # checkpointed by earlier versions are read again.
            return DriftState
        if (module, name) not in self.ALLOWED:
            raise UnsafeStateError(f"a drift state may not refer to {module}.{name}")
        return super().find_class(module, name)

    @classmethod
    def loads(cls, data: bytes) -> Any:
        """Unpickle ``data`` with the allowlist."""
        return cls(io.BytesIO(data)).load()


@dataclass
class DriftState:
    """One model's drift detectors and what they have seen, as checkpointed."""

    fingerprint: str
    monitor: DriftMonitor
    applied: dict[str, tuple[int, int]]
    """Highest ``(offset, row)`` applied, by inference ``topic/partition``."""
    created_at: float
    """When the detectors started learning (epoch seconds)."""
    format: int = STATE_FORMAT

    def dumps(self) -> bytes:
        """The checkpoint."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)


class DriftStage:
    """Feed each model's signals to its detectors and publish drift detections.

    Parameters
    ----------
    config
        The worker config (topic names).
    plans
        Each drift-monitored model's plan, by model id.
    table
        Checkpoints by model id (a Faust table in the worker; any mapping in tests).
    metrics, publish
        Where the stage reports, and how it sends records (returns once acknowledged).
    owns
        Whether this worker holds a model's partition of the signals topic.
    """

    def __init__(
        self,
        config: MonitorConfig,
        plans: Mapping[str, DriftPlan],
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        publish: Publish,
        owns: Callable[[str], bool] = lambda _model_id: True,
    ) -> None:
        self.config = config
        self.plans = dict(plans)
        self.table = table
        self.metrics = metrics
        self.publish = publish
        self.owns = owns

    def load(self, model_id: str) -> DriftState:
        """The model's checkpointed state, or a fresh one (also when it does not fit)."""
        state, problem = self._checkpoint(model_id)
        if state is not None:
            return state
        if problem is not None:
            logger.warning("model %s: %s; its drift detectors start afresh", model_id, problem)
        plan = self.plans[model_id]
        return DriftState(plan.fingerprint, plan.new_monitor(), {}, time.time())

    def _checkpoint(self, model_id: str) -> tuple[DriftState | None, str | None]:
        """The model's usable checkpoint, else ``None`` and why (``None``: there is none)."""
        raw = self.table.get(model_id)
        if not raw:
            return None, None
        try:
            state = StateUnpickler.loads(bytes(raw))
        except Exception as exc:
            return None, f"drift state unreadable ({exc})"
        if not isinstance(state, DriftState) or state.format != STATE_FORMAT:
            return None, "drift state of another advmon version"
        if state.fingerprint != self.plans[model_id].fingerprint:
            return None, "drift configuration changed"
        return state, None

    async def process(self, raw_batches: Sequence[bytes]) -> None:
        """Apply signals records in order; returns once drift detections are acknowledged
        and the new states are written to the table.

        A model's new events from all the records are applied in one update, so the
        per-call work of each detector is shared by the whole take.
        """
        pending: dict[str, list[SignalBatch]] = {}
        for raw in raw_batches:
            try:
                batch = SignalBatch.model_validate_json(raw)
            except ValidationError as exc:
                logger.error("skipping a malformed signals record: %s", exc)
                continue
            if batch.model_id not in self.plans:
                logger.warning("skipping signals of model %s: drift is off for it", batch.model_id)
                continue
            pending.setdefault(batch.model_id, []).append(batch)
        records: list[OutputRecord] = []
        counted: list[tuple[str, str]] = []
        states: dict[str, DriftState] = {}
        for model_id, batches in pending.items():
            state = states[model_id] = self.load(model_id)
            for alarm, batch, position in self._apply(state, batches):
                records.append(self._detection(batch, alarm, position))
                counted.append((model_id, alarm.signal))
        if records:
            await self.publish(records)
        for model_id, state in states.items():
            self.table[model_id] = state.dumps()
            self._report(model_id, state)
        for model_id, signal in counted:
            self.metrics.drift_detections.labels(model_id, signal).inc()

    @staticmethod
    def _apply(
        state: DriftState, batches: Sequence[SignalBatch]
    ) -> list[tuple[DriftAlarm, SignalBatch, int]]:
        """Update the detectors with the batches' new events, in order; each alarm with the
        batch and position of its event."""
        applied = state.applied
        where: list[tuple[SignalBatch, int]] = []
        columns: dict[str, list[float]] = {}
        times: list[float] = []
        for batch in batches:
            fresh = _fresh_events(batch, applied)
            if not fresh:
                continue
            whole = len(fresh) == len(batch.offsets)
            for name, values in batch.columns.items():
                column = columns.setdefault(name, [])
                column.extend(values if whole else [values[i] for i in fresh])
            times.extend(batch.times if whole else [batch.times[i] for i in fresh])
            where.extend((batch, i) for i in fresh)
        if not where:
            return []
        alarms = state.monitor.update(
            {name: np.asarray(values) for name, values in columns.items()}, np.asarray(times)
        )
        return [(alarm, *where[alarm.index]) for alarm in alarms]

    def _detection(self, batch: SignalBatch, alarm: DriftAlarm, position: int) -> OutputRecord:
        stats = alarm.statistics
        event_id = batch.event_ids[position]
        detection = Detection(
            event_id=drift_detection_id(alarm.stream, event_id),
            model_id=batch.model_id,
            kind=DetectionKind.DRIFT,
            score=abs(stats["shift"]),
            threshold=0.0,
            event_ts=datetime.fromtimestamp(batch.times[position], UTC),
            detected_at=datetime.now(UTC),
            topic=batch.topics[position],
            partition=batch.partitions[position],
            offset=batch.offsets[position],
            signal=alarm.stream,
            detector=alarm.detector,
            details=stats,
        )
        logger.warning(
            "model %s: drift on %s (%s) at event %s: mean %.4g → %.4g",
            batch.model_id,
            alarm.stream,
            alarm.detector,
            event_id,
            stats["mean_before"],
            stats["mean_recent"],
        )
        return OutputRecord.of(self.config.topics.detections, batch.model_id, detection)

    def report_held(self) -> None:
        """Set the gauges of every model whose detectors this worker holds, such as right
        after a restart, before new signals arrive."""
        for model_id in self.plans:
            if self.owns(model_id):
                state, _ = self._checkpoint(model_id)
                if state is not None:
                    self._report(model_id, state)

    def _report(self, model_id: str, state: DriftState) -> None:
        metrics = self.metrics
        monitor = state.monitor
        for stream in monitor.streams:
            recent = stream.detector.recent_mean
            if recent is not None:
                metrics.drift_signal.labels(model_id, stream.name).set(recent)
        metrics.drift_state_events.labels(model_id).set(monitor.n_seen)
        metrics.drift_state_age.labels(model_id).set(max(0.0, time.time() - state.created_at))
        for name, suppressed in monitor.suppressed().items():
            metrics.drift_suppressed.labels(model_id, name).set(suppressed)
