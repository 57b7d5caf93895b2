"""The scoring stage: inference messages → decoded events → fused squeeze graph → decisions.

For each batch the agent takes from the inference topics (and from the internal joined
topic), :meth:`ScoringStage.process`

1. decodes and validates every message through :mod:`monitor.decoding`; a refused one
   becomes a dead letter, an OIP v2 record is forwarded, keyed by its CloudEvent id, to
   the internal halves topic (:mod:`monitor.worker.stages.join` pairs them);
2. scores each model's events, grouped by input shape, with the model's fused squeeze
   graph on ONNX Runtime, in one worker thread so the event loop keeps serving Kafka;
3. decides (:mod:`monitor.worker.decisions`): a decision per event on the decisions
   topic; for flagged events a detection, and a source flag re-keyed by source for
   :mod:`monitor.worker.stages.quarantine`; each batch's drift signals, keyed by model,
   for :mod:`monitor.worker.stages.drift`; the query fingerprints of the events that
   name a source, keyed by model and source, for :mod:`monitor.worker.stages.queries`;
4. publishes all of it and returns once the broker acknowledged every record.

:class:`ScoringPipeline` holds steps 1 and 3 as pure functions over plain data, testable
without a broker; :class:`ScoringStage` runs them around ONNX Runtime.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import mode
import numpy as np

from detectors import Detector, DetectorScores, Device, load_model
from monitor.config import ModelConfig, MonitorConfig
from monitor.decoding import (
    RecordFormat,
    as_refusal,
    check_topic,
    checked_input,
    event_input,
    monitored,
    native_fast,
    oip_half,
    record_events,
)
from monitor.errors import InvalidRecordError
from monitor.worker.decisions import (
    adversarial_detection,
    request_action,
    request_decisions,
    source_flag,
)
from monitor.worker.metrics import Metrics, observe_many
from monitor.worker.models import ModelDetector
from monitor.worker.queries import QueryPlan, query_records
from monitor.worker.records import (
    InputMessage,
    OutputRecord,
    Publish,
    PublishInOrder,
    b64,
    dead_letter,
)
from monitor.worker.signals import DriftPlan, signal_batch
from schemas import (
    Action,
    InferenceEvent,
    OipHalf,
    Scope,
)

__all__ = [
    "DecidedBatch",
    "DecodedMessages",
    "ScoringBatch",
    "ScoringPipeline",
    "ScoringStage",
    "event_time",
]

logger = logging.getLogger(__name__)

_NATIVE = RecordFormat()
"""How a topic that no model of another format reads holds its records."""

INLINE_SCORING_S = 0.001
"""A batch expected to score in less than this is scored on the event loop."""

_HALF_OVERHEAD_BYTES = 16_384
"""Room in a halves record for what surrounds the base64 copy (ids, names, JSON)."""


@dataclass
class ScoringBatch:
    """Valid events of one model, with inputs of one shape, ready for the fused graph."""

    model_id: str
    messages: list[InputMessage] = field(default_factory=list)
    events: list[InferenceEvent] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    """Row of each event within its message (formats that log a batch per message)."""

    def stacked(self) -> np.ndarray:
        """Inputs as one ``[N, *input_shape]`` array."""
        return np.stack(self.inputs)

    def split(self) -> list[ScoringBatch]:
        """One single-event batch per event (to isolate an event that fails to score)."""
        return [
            ScoringBatch(self.model_id, [m], [e], [x], [r])
            for m, e, x, r in zip(self.messages, self.events, self.inputs, self.rows, strict=True)
        ]


@dataclass
class DecodedMessages:
    """A decoded batch: per-model scoring batches and dead letters, with their reasons, and
    the OIP v2 halves to forward to the join."""

    batches: list[ScoringBatch]
    dead_letters: list[OutputRecord]
    invalid_reasons: list[str]
    halves: list[OutputRecord] = field(default_factory=list)
    half_kinds: list[tuple[str, str]] = field(default_factory=list)
    """``(model id, request|response)`` of each forwarded half."""


@dataclass(frozen=True)
class DecidedBatch:
    """The records to publish for a scored batch, and the action taken for each event."""

    records: list[OutputRecord]
    actions: list[Action]


class ScoringPipeline:
    """Decode, validate and decide for the configured models.

    Parameters
    ----------
    config
        The worker config (topics, models, policy).
    models
        Each monitored model's detector, by model id.
    """

    def __init__(
        self,
        config: MonitorConfig,
        models: Mapping[str, ModelDetector],
        *,
        max_half_bytes: int = 1_048_576,
    ) -> None:
        self.config = config
        self.models = dict(models)
        self.max_half_bytes = max_half_bytes
        """The largest internal halves record sent to the join (the producer's limit)."""
        self.topic_models = {
            topic: model
            for model in config.models
            if model.format != "native"
            for topic in model.topics
        }
        # How each topic's records read, built once: decoding asks for it per message.
        self.topic_formats = {
            topic: RecordFormat.of(model) for topic, model in self.topic_models.items()
        }

    def decode(self, messages: Sequence[InputMessage]) -> DecodedMessages:
        """Split messages into per-model scoring batches, dead letters and OIP v2 halves.

        Never raises for a message, whatever it holds: each refusal becomes one dead letter,
        and an exception that is no refusal (which :mod:`monitor.decoding` already turns
        into ``decode_error``, and this method too as a last line of defence) does as well,
        so the good messages of the batch are still decoded. Only ``MemoryError``
        propagates (see :mod:`monitor.decoding`).
        """
        batches: dict[tuple[str, tuple[int, ...]], ScoringBatch] = {}
        decoded = DecodedMessages([], [], [])
        for message in messages:

            def reject(error: InvalidRecordError, message: InputMessage = message) -> None:
                decoded.invalid_reasons.append(error.reason)
                decoded.dead_letters.append(
                    dead_letter(
                        self.config.topics.dead_letter,
                        message,
                        error,
                        copy_bytes=self.config.dead_letters.copy_bytes,
                    )
                )

            model = self.topic_models.get(message.topic)
            try:
                if model is not None and model.format == "oip-v2":
                    record, kind = self._half(message, model)
                    decoded.halves.append(record)
                    decoded.half_kinds.append((model.id, kind))
                    continue
                record_format = self.topic_formats.get(message.topic, _NATIVE)
                fast = native_fast(message.value) if record_format is _NATIVE else None
                arrays: list[np.ndarray | None]
                if fast is not None:
                    events, arrays = [fast[0]], [fast[1]]
                else:
                    events = record_events(message.value, record_format)
                    arrays = [None] * len(events)
            except Exception as exc:
                reject(as_refusal(exc))
                continue
            for row, (event, unchecked) in enumerate(zip(events, arrays, strict=True)):
                try:
                    array = self._accept(message, event, unchecked)
                except Exception as exc:
                    reject(as_refusal(exc, event=event))
                    continue
                key = (event.model_id, array.shape)
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = ScoringBatch(event.model_id)
                batch.messages.append(message)
                batch.events.append(event)
                batch.inputs.append(array)
                batch.rows.append(row)
        decoded.batches.extend(batches.values())
        return decoded

    def _half(self, message: InputMessage, model: ModelConfig) -> tuple[OutputRecord, str]:
        """An OIP v2 record, checked, as a record for the join topic keyed by its id.

        The half carries the whole record (base64, a third larger): a record whose half
        would outgrow what the producer may send is refused (``too_large``) here, rather
        than refused by the broker on the way to the join.
        """
        carried = len(message.value) + len(message.key or b"")
        carried += sum(len(name) + len(value) for name, value in message.headers)
        if 4 * carried // 3 + _HALF_OVERHEAD_BYTES > self.max_half_bytes:
            raise InvalidRecordError(
                "too_large",
                f"an OIP v2 record of {carried} bytes cannot be forwarded to the join: its "
                f"half would exceed the producer's {self.max_half_bytes} bytes "
                "(ADVMON_KAFKA__MAX_REQUEST_BYTES)",
            )
        half = oip_half(message.value, message.headers)
        record = OipHalf(
            id=half.id,
            kind=half.kind,
            model_id=model.id,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key_b64=b64(message.key),
            value_b64=base64.b64encode(message.value).decode(),
            headers=[(name, base64.b64encode(value).decode()) for name, value in message.headers],
            timestamp=message.timestamp,
            received_at=datetime.now(UTC),
        )
        return OutputRecord.of(self.config.topics.oip_halves, half.id, record), half.kind

    def _accept(
        self, message: InputMessage, event: InferenceEvent, unchecked: np.ndarray | None = None
    ) -> np.ndarray:
        """The event's model input (``unchecked``, when the fast path decoded it already),
        checked against its model's detector."""
        model = monitored(event, self.models)
        if message.topic != self.config.topics.joined:
            check_topic(event, message.topic, model.config.topics)
        detector = model.detector
        if unchecked is not None:
            return checked_input(event, unchecked, detector.input_shape, detector.accepted_range)
        return event_input(event, detector.input_shape, detector.accepted_range)

    def decide(
        self, batch: ScoringBatch, verdict: DetectorScores, now: datetime | None = None
    ) -> DecidedBatch:
        """Decisions for every event of ``batch``, plus detections and source flags for the
        flagged ones."""
        now = now or datetime.now(UTC)
        model = self.models[batch.model_id]
        threshold = model.detector.threshold
        topics = self.config.topics
        squeezers = [s.spec for s in model.detector.squeezers]
        scores = verdict.scores.score.tolist()
        flagged = verdict.flagged.tolist()
        predictions = verdict.scores.prediction.tolist()
        distances = verdict.scores.squeezer_distances[verdict.flagged].tolist()
        policy = model.config.policy
        actions = [request_action(f, policy) for f in flagged]
        out = [
            OutputRecord(topics.decisions, key.encode(), value)
            for key, value in request_decisions(batch.events, actions, scores, threshold, now)
        ]
        # Distances are read for the flagged rows only: distances[k] is the k-th flagged.
        for k, i in enumerate(i for i, f in enumerate(flagged) if f):
            event, score = batch.events[i], scores[i]
            detection = adversarial_detection(
                event,
                batch.messages[i],
                score,
                threshold,
                predictions[i],
                model.detector_sha256,
                dict(zip(squeezers, distances[k], strict=True)),
                now,
            )
            out.append(OutputRecord.of(topics.detections, event.model_id, detection))
            if event.source:
                flag = source_flag(event, event.source, score, threshold, policy == "enforce", now)
                out.append(OutputRecord.of(topics.source_flags, event.source, flag))
        return DecidedBatch(out, actions)


def _timed_score(detector: Detector, inputs: np.ndarray) -> tuple[DetectorScores, float]:
    """The detector's verdict on ``inputs``, and how long the graph took (seconds)."""
    started = time.perf_counter()
    verdict = detector.score(inputs)
    return verdict, time.perf_counter() - started


def event_time(event: InferenceEvent, message: InputMessage) -> float | None:
    """When the event happened, in epoch seconds: its ``ts``, else the Kafka timestamp."""
    if event.ts is not None:
        return event.ts.timestamp()
    return message.timestamp


class ScoringStage(mode.Service):
    """Decode, score and decide for batches of inference messages.

    Scoring runs in a single worker thread so that the event loop keeps serving Kafka
    fetches, heartbeats and the web server while ONNX Runtime works; ONNX Runtime itself
    parallelises each run over its intra-op threads. A batch whose model scores it, by
    its recent cost per event, in less than :data:`INLINE_SCORING_S` is scored on the
    event loop instead: handing it to the thread and back would cost more than that.
    """

    def __init__(
        self,
        config: MonitorConfig,
        models: dict[str, ModelDetector],
        metrics: Metrics,
        publish: Publish,
        *,
        publish_in_order: PublishInOrder | None = None,
        device: Device = "auto",
        intra_op_threads: int | None = None,
        spin_wait: bool = False,
        drift: Mapping[str, DriftPlan] | None = None,
        queries: Mapping[str, QueryPlan] | None = None,
        max_request_bytes: int = 1_048_576,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = ScoringPipeline(config, models, max_half_bytes=max_request_bytes)
        self.drift = dict(drift or {})
        self.queries = dict(queries or {})
        self.metrics = metrics
        self.publish = publish
        self.publish_in_order = publish_in_order
        self._last_queued: asyncio.Future[None] | None = None
        """Done once the latest batch's records are with the producer."""
        self.device: Device = device
        self.intra_op_threads = intra_op_threads
        self.spin_wait = spin_wait
        self.detectors: dict[str, Detector] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="advmon-score")
        self._cost: dict[str, float] = {}
        """Each model's recent graph time per event, in seconds (a moving average of the
        time the graph itself took, without the hand-off to the scoring thread)."""
        self._ready = asyncio.Event()
        for model_id, model in self.pipeline.models.items():
            metrics.detector_target_fpr.labels(model_id).set(model.detector.target_fpr)

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        for model_id, model in self.pipeline.models.items():
            self.detectors[model_id] = await loop.run_in_executor(
                self._executor, self._build_detector, model
            )
            logger.info(
                "model %s: %s on %s, threshold %.6g, policy %s",
                model_id,
                model.detector.squeezer_spec,
                self.detectors[model_id].provider,
                model.detector.threshold,
                model.config.policy,
            )
        self._ready.set()

    def _build_detector(self, model: ModelDetector) -> Detector:
        return Detector(
            model.detector,
            load_model(model.detector.model_path),
            device=self.device,
            intra_op_threads=self.intra_op_threads,
            spin_wait=self.spin_wait,
        )

    async def on_stop(self) -> None:
        self._executor.shutdown(wait=True)

    async def wait_ready(self) -> None:
        """Wait until every detector's ONNX Runtime session is built."""
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        """Whether every detector's ONNX Runtime session is built."""
        return self._ready.is_set()

    async def process(self, messages: Sequence[InputMessage]) -> None:
        """Handle one batch; returns once every output is acknowledged by the broker.

        Metrics are updated once per batch, and the wall time of each step is added to
        ``advmon_pipeline_seconds`` (decode, score, decide, publish).
        """
        # Batches are processed concurrently (monitor.worker.intake), but their records
        # reach the producer in the order the batches came: the drift stage applies a
        # partition's signals in offset order, and skips what it takes for a replay.
        after, queued = self._last_queued, asyncio.get_running_loop().create_future()
        self._last_queued = queued
        try:
            await self._process(messages, after, queued)
        finally:
            if not queued.done():
                queued.set_result(None)

    async def _process(
        self,
        messages: Sequence[InputMessage],
        after: asyncio.Future[None] | None,
        queued: asyncio.Future[None],
    ) -> None:
        await self.wait_ready()
        metrics = self.metrics
        steps = metrics.pipeline_seconds
        clock = time.perf_counter
        started = clock()
        for topic, count in Counter(m.topic for m in messages).items():
            metrics.events_consumed.labels(topic).inc(count)
        decoded = self.pipeline.decode(messages)
        for reason, count in Counter(decoded.invalid_reasons).items():
            metrics.events_invalid.labels(reason).inc(count)
        outputs: list[OutputRecord] = [*decoded.dead_letters, *decoded.halves]
        for (model_id, kind), count in Counter(decoded.half_kinds).items():
            metrics.oip_halves.labels(model_id, kind).inc(count)
        for batch in decoded.batches:
            metrics.events_decoded.labels(batch.model_id).inc(len(batch.events))
        steps.labels("decode").inc(clock() - started)
        loop = asyncio.get_running_loop()
        timed: list[tuple[str, list[float | None]]] = []
        actions: list[Action] = []
        pending = list(decoded.batches)
        scoring = deciding = fingerprinting = 0.0
        while pending:
            batch = pending.pop(0)
            detector = self.detectors[batch.model_id]
            metrics.batch_size.observe(len(batch.events))
            started = clock()
            inputs = batch.stacked()
            try:
                expected = self._cost.get(batch.model_id, INLINE_SCORING_S) * len(inputs)
                if expected < INLINE_SCORING_S:
                    verdict, cost = _timed_score(detector, inputs)
                else:
                    verdict, cost = await loop.run_in_executor(
                        self._executor, _timed_score, detector, inputs
                    )
            except Exception as exc:  # ONNX Runtime refused an input the checks let through
                scoring += clock() - started
                outputs.extend(self._unscored(batch, exc, pending))
                continue
            scored = clock()
            scoring += scored - started
            known = self._cost.get(batch.model_id)
            per_event = cost / len(inputs)
            self._cost[batch.model_id] = (
                per_event if known is None else 0.8 * known + 0.2 * per_event
            )
            metrics.scoring_seconds.labels(batch.model_id).observe(scored - started)
            metrics.events_scored.labels(batch.model_id).inc(len(batch.events))
            metrics.events_flagged.labels(batch.model_id).inc(int(verdict.flagged.sum()))
            decided = self.pipeline.decide(batch, verdict)
            outputs.extend(decided.records)
            actions.extend(decided.actions)
            times = [event_time(e, m) for e, m in zip(batch.events, batch.messages, strict=True)]
            timed.append((batch.model_id, times))
            plan = self.drift.get(batch.model_id)
            if plan is not None:
                now = time.time()
                signals = signal_batch(
                    plan,
                    batch.messages,
                    batch.rows,
                    batch.events,
                    [now if t is None else t for t in times],
                    inputs,
                    verdict.scores,
                )
                outputs.append(
                    OutputRecord.of(self.pipeline.config.topics.signals, plan.model_id, signals)
                )
            done = clock()
            deciding += done - scored
            watched = self.queries.get(batch.model_id)
            if watched is not None:
                now = time.time()
                outputs.extend(
                    query_records(
                        watched,
                        self.pipeline.config.topics.query_prints,
                        batch.events,
                        batch.messages,
                        # An event time ahead of the clock would age out the source's
                        # history: the clock bounds it.
                        [now if t is None else min(t, now) for t in times],
                        inputs,
                    )
                )
                fingerprinting += clock() - done
        steps.labels("score").inc(scoring)
        steps.labels("decide").inc(deciding)
        steps.labels("fingerprint").inc(fingerprinting)
        started = clock()
        if self.publish_in_order is not None:
            await self.publish_in_order(outputs, after, queued)
        else:
            if after is not None:
                await after
            await self.publish(outputs)
        steps.labels("publish").inc(clock() - started)
        for action, count in Counter(actions).items():
            metrics.decisions.labels(action.value, Scope.REQUEST.value).inc(count)
        now = time.time()
        for model_id, times in timed:
            observe_many(
                metrics.event_to_decision_seconds.labels(model_id),
                [max(0.0, now - when) for when in times if when is not None],
            )

    def _unscored(
        self, batch: ScoringBatch, error: Exception, pending: list[ScoringBatch]
    ) -> list[OutputRecord]:
        """After ``batch`` failed to score: its events one by one (put back on
        ``pending``), or, for a single event, its dead letter."""
        if len(batch.events) > 1:
            logger.warning(
                "model %s: a batch failed to score (%s); retrying its events one by one",
                batch.model_id,
                error,
            )
            pending[:0] = batch.split()
            return []
        event = batch.events[0]
        logger.warning(
            "model %s: event %s failed to score: %s", batch.model_id, event.event_id, error
        )
        self.metrics.events_invalid.labels("scoring_error").inc()
        refusal = InvalidRecordError(
            "scoring_error",
            f"scoring failed: {error}",
            event_id=event.event_id,
            model_id=event.model_id,
        )
        return [
            dead_letter(
                self.pipeline.config.topics.dead_letter,
                batch.messages[0],
                refusal,
                copy_bytes=self.pipeline.config.dead_letters.copy_bytes,
            )
        ]
