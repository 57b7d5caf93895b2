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

State is pickled (River detectors have no other serialisation). With a checkpoint key,
each checkpoint is signed (HMAC-SHA256 over the model id and the pickle) and one that does
not verify is never unpickled; unpickling is restricted to the classes a state is made of
(:class:`StateUnpickler`), so a forged changelog record cannot make the worker run code.
A checkpoint that cannot be used, or detectors that fail on update (River's Rust core
panics on an impossible state), reset that model's detectors: logged, counted in
``advmon_drift_resets_total``, and the stage goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import itertools
import logging
import pickle
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

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

__all__ = ["DriftStage", "DriftState", "StateUnpickler", "drift_detection_id", "seal_checkpoint"]

logger = logging.getLogger(__name__)

STATE_FORMAT = 2

SIGNED = b"advmon-drift-state hmac-sha256\n"
"""Starts a signed checkpoint: then the 32-byte HMAC-SHA256 tag, then the pickle."""
UNSIGNED = b"advmon-drift-state unsigned\n"
"""Starts a checkpoint written without a key: then the pickle."""
_TAG_SIZE = hashlib.sha256().digest_size
MIN_KEY_BYTES = 32

_FATAL = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)
"""What a failing detector may raise that still stops the worker; anything else resets."""


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


def _tag(key: bytes, model_id: str, payload: bytes) -> bytes:
    """HMAC-SHA256 over the header, the model id (length-prefixed) and the pickle: one
    model's checkpoint copied to another model's table key does not verify."""
    mac = hmac.new(key, SIGNED, hashlib.sha256)
    name = model_id.encode()
    mac.update(len(name).to_bytes(4, "big") + name)
    mac.update(payload)
    return mac.digest()


def seal_checkpoint(payload: bytes, model_id: str, key: bytes | None) -> bytes:
    """The table record of ``model_id``'s pickled state: signed with ``key``, or marked
    unsigned without one."""
    if key is None:
        return UNSIGNED + payload
    return SIGNED + _tag(key, model_id, payload) + payload


class _Reset(NamedTuple):
    """Why a model's detectors start afresh: the metric's reason, and the log's words."""

    reason: str
    problem: str


def _open_checkpoint(raw: bytes, model_id: str, key: bytes | None) -> bytes | _Reset:
    """The pickle inside a table record once it is verified, else why it is refused.

    Without a key, unsigned records (and bare pickles of versions before signing) are
    taken as they are; with one, only a record whose tag verifies is.
    """
    if raw.startswith(SIGNED):
        if key is None:
            return _Reset("unauthenticated", "drift checkpoint signed, but no key is set")
        tag, payload = raw[len(SIGNED) : len(SIGNED) + _TAG_SIZE], raw[len(SIGNED) + _TAG_SIZE :]
        if len(tag) != _TAG_SIZE or not hmac.compare_digest(tag, _tag(key, model_id, payload)):
            return _Reset("bad_signature", "drift checkpoint failed HMAC verification")
        return payload
    if key is not None:
        return _Reset("unauthenticated", "drift checkpoint not signed")
    return raw[len(UNSIGNED) :] if raw.startswith(UNSIGNED) else raw


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
    checkpoint_key
        Key the checkpoints are signed and verified with (HMAC-SHA256, at least 32 bytes);
        ``None`` writes and reads them unsigned, which is logged once here.
    """

    def __init__(
        self,
        config: MonitorConfig,
        plans: Mapping[str, DriftPlan],
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        publish: Publish,
        owns: Callable[[str], bool] = lambda _model_id: True,
        checkpoint_key: bytes | None = None,
    ) -> None:
        if checkpoint_key is not None and len(checkpoint_key) < MIN_KEY_BYTES:
            raise ValueError(
                f"checkpoint_key must have at least {MIN_KEY_BYTES} bytes, "
                f"got {len(checkpoint_key)}"
            )
        self.config = config
        self.plans = dict(plans)
        self.table = table
        self.metrics = metrics
        self.publish = publish
        self.owns = owns
        self.checkpoint_key = checkpoint_key
        if checkpoint_key is None and self.plans:
            logger.warning(
                "drift checkpoints are not authenticated: set ADVMON_DRIFT__CHECKPOINT_KEY "
                "so that a record written into the drift-states changelog by anyone else is "
                "never unpickled"
            )

    def load(self, model_id: str) -> DriftState:
        """The model's checkpointed state, or a fresh one (also when it does not fit)."""
        state, reset = self._checkpoint(model_id)
        if state is not None:
            return state
        if reset is not None:
            return self._reset(model_id, reset)
        plan = self.plans[model_id]
        return DriftState(plan.fingerprint, plan.new_monitor(), {}, time.time())

    def _reset(self, model_id: str, reset: _Reset) -> DriftState:
        """Fresh detectors for the model, logged and counted with the reason."""
        logger.warning(
            "model %s: %s; its drift detectors start afresh (%s)",
            model_id,
            reset.problem,
            reset.reason,
        )
        self.metrics.drift_resets.labels(model_id, reset.reason).inc()
        plan = self.plans[model_id]
        return DriftState(plan.fingerprint, plan.new_monitor(), {}, time.time())

    def _checkpoint(self, model_id: str) -> tuple[DriftState | None, _Reset | None]:
        """The model's usable checkpoint, else ``None`` and why (``None``: there is none).

        The record is verified before anything is unpickled.
        """
        raw = self.table.get(model_id)
        if not raw:
            return None, None
        payload = _open_checkpoint(bytes(raw), model_id, self.checkpoint_key)
        if isinstance(payload, _Reset):
            return None, payload
        try:
            state = StateUnpickler.loads(payload)
        except BaseException as exc:  # River's Rust core panics on bytes it cannot restore
            if isinstance(exc, _FATAL):
                raise
            return None, _Reset("unreadable", f"drift checkpoint unreadable ({_failure(exc)})")
        if (
            not isinstance(state, DriftState)
            or state.format != STATE_FORMAT
            or not isinstance(state.monitor, DriftMonitor)
            or not isinstance(state.applied, dict)
        ):
            return None, _Reset("other_version", "drift checkpoint of another advmon version")
        if state.fingerprint != self.plans[model_id].fingerprint:
            return None, _Reset("configuration_changed", "drift configuration changed")
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
            state, found = self._learn(model_id, self.load(model_id), batches)
            states[model_id] = state
            for alarm, batch, position in found:
                records.append(self._detection(batch, alarm, position))
                counted.append((model_id, alarm.signal))
        if records:
            await self.publish(records)
        for model_id, state in states.items():
            self.table[model_id] = seal_checkpoint(state.dumps(), model_id, self.checkpoint_key)
            self._report(model_id, state)
        for model_id, signal in counted:
            self.metrics.drift_detections.labels(model_id, signal).inc()

    def _learn(
        self, model_id: str, state: DriftState, batches: Sequence[SignalBatch]
    ) -> tuple[DriftState, list[tuple[DriftAlarm, SignalBatch, int]]]:
        """:meth:`_apply`, resetting the model's detectors if they fail, a River panic (not
        an ``Exception``) included: fresh detectors learn the take instead, and should
        they fail too, the take's events are skipped. The state to keep, and the alarms."""
        try:
            return state, self._apply(state, batches)
        except BaseException as exc:
            if isinstance(exc, _FATAL):
                raise
            failure = exc
        fresh = self._reset(
            model_id, _Reset("update_failed", f"drift detectors failed ({_failure(failure)})")
        )
        try:
            return fresh, self._apply(fresh, batches)
        except BaseException as exc:
            if isinstance(exc, _FATAL):
                raise
            failure = exc
        skipped = self._reset(
            model_id,
            _Reset(
                "update_failed",
                f"fresh drift detectors failed too ({_failure(failure)}); "
                f"the events of {len(batches)} signals records are not learned",
            ),
        )
        skipped.applied = fresh.applied  # the take's events, marked applied as it failed
        return skipped, []

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
                state, _ = self._checkpoint(model_id)  # a reset is logged on its first take
                if state is not None:
                    try:
                        self._report(model_id, state)
                    except Exception as exc:  # a state only an unsigned checkpoint can hold
                        logger.warning("model %s: drift state not reported (%s)", model_id, exc)

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
