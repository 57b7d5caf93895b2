"""The worker's stages: scoring (with its detectors) and per-source quarantine.

Each stage is a :class:`mode.Service`, so its start-up work (building ONNX Runtime
sessions) runs in Faust's event loop when the worker starts, never at import time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import mode

from detectors import Detector, DetectorConfig, Device, file_sha256, load_model
from monitor.config import MonitorConfig
from monitor.worker.metrics import Metrics
from monitor.worker.policy import quarantine_due, source_action
from monitor.worker.stages.drift import DriftPlan, signal_batch
from monitor.worker.stages.scoring_pipeline import (
    InputMessage,
    ModelDetector,
    OutputRecord,
    ScoringPipeline,
    event_time,
)
from schemas import Action, Decision, Detection, DetectionKind, Reason, Scope, SourceFlag

__all__ = ["Publish", "QuarantineStage", "ScoringStage", "load_model_detectors"]

logger = logging.getLogger(__name__)

Publish = Callable[[Sequence[OutputRecord]], Awaitable[None]]
"""Publishes records and returns once the broker has acknowledged every one of them."""


def load_model_detectors(config: MonitorConfig) -> dict[str, ModelDetector]:
    """Read every model's detector file (checking model hashes); no ONNX sessions yet."""
    return {
        model.id: ModelDetector(
            config=model,
            detector=DetectorConfig.load(model.detector),
            detector_sha256=file_sha256(model.detector),
        )
        for model in config.models
    }


class ScoringStage(mode.Service):
    """Decode, score and decide for batches of inference messages.

    Scoring runs in a single worker thread so that the event loop keeps serving Kafka
    fetches, heartbeats and the web server while ONNX Runtime works; ONNX Runtime itself
    parallelises each run over its intra-op threads.
    """

    def __init__(
        self,
        config: MonitorConfig,
        models: dict[str, ModelDetector],
        metrics: Metrics,
        publish: Publish,
        *,
        device: Device = "auto",
        intra_op_threads: int | None = None,
        drift: Mapping[str, DriftPlan] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = ScoringPipeline(config, models)
        self.drift = dict(drift or {})
        self.metrics = metrics
        self.publish = publish
        self.device: Device = device
        self.intra_op_threads = intra_op_threads
        self.detectors: dict[str, Detector] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="advmon-score")
        self._ready = asyncio.Event()

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
        """Handle one batch; returns once every output is acknowledged by the broker."""
        await self.wait_ready()
        metrics = self.metrics
        for message in messages:
            metrics.events_consumed.labels(message.topic).inc()
        decoded = self.pipeline.decode(messages)
        for reason in decoded.invalid_reasons:
            metrics.events_invalid.labels(reason).inc()
        outputs: list[OutputRecord] = [*decoded.dead_letters, *decoded.halves]
        for model_id, kind in decoded.half_kinds:
            metrics.oip_halves.labels(model_id, kind).inc()
        loop = asyncio.get_running_loop()
        timed: list[tuple[str, list[float | None]]] = []
        actions: list[Action] = []
        pending = list(decoded.batches)
        for batch in decoded.batches:
            metrics.events_decoded.labels(batch.model_id).inc(len(batch.events))
        while pending:
            batch = pending.pop(0)
            detector = self.detectors[batch.model_id]
            metrics.batch_size.observe(len(batch.events))
            started = time.perf_counter()
            inputs = batch.stacked()
            try:
                verdict = await loop.run_in_executor(self._executor, detector.score, inputs)
            except Exception as exc:  # ONNX Runtime refused an input the checks let through
                if len(batch.events) > 1:
                    logger.warning(
                        "model %s: a batch failed to score (%s); retrying its events one by one",
                        batch.model_id,
                        exc,
                    )
                    pending[:0] = batch.split()
                else:
                    logger.warning(
                        "model %s: event %s failed to score: %s",
                        batch.model_id,
                        batch.events[0].event_id,
                        exc,
                    )
                    metrics.events_invalid.labels("scoring_error").inc()
                    outputs.append(
                        self.pipeline.dead_letter(
                            batch.messages[0],
                            "scoring_error",
                            f"scoring failed: {exc}",
                            batch.events[0],
                        )
                    )
                continue
            metrics.scoring_seconds.labels(batch.model_id).observe(time.perf_counter() - started)
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
                    OutputRecord(
                        self.pipeline.config.topics.signals,
                        plan.model_id.encode(),
                        signals.model_dump_json().encode(),
                    )
                )
        await self.publish(outputs)
        for action in actions:
            metrics.decisions.labels(action.value, Scope.REQUEST.value).inc()
        now = time.time()
        for model_id, times in timed:
            histogram = metrics.event_to_decision_seconds.labels(model_id)
            for when in times:
                if when is not None:
                    histogram.observe(max(0.0, now - when))


class QuarantineStage:
    """Count flagged events per source in a window and quarantine sources past the limit.

    ``counts`` is a windowed Faust table and ``in_force`` a table of quarantine expiry
    times (epoch seconds), both keyed by source: the flags topic is keyed by source, so
    each source's state lives on exactly one worker and moves with its partition.
    """

    def __init__(
        self,
        config: MonitorConfig,
        counts: Any,
        in_force: Any,
        metrics: Metrics,
        publish: Publish,
    ) -> None:
        self.config = config
        self.counts = counts
        self.in_force = in_force
        self.metrics = metrics
        self.publish = publish

    async def observe(self, raw: bytes) -> None:
        """Count one flagged event; publish a source decision when the limit is crossed."""
        flag = SourceFlag.model_validate_json(raw)
        policy = self.config.quarantine
        self.counts[flag.source] += 1
        count = int(self.counts[flag.source].current())
        now = datetime.now(UTC)
        if not quarantine_due(
            count, policy.limit, float(self.in_force[flag.source]), now.timestamp()
        ):
            return
        expires = now + timedelta(seconds=policy.ttl_seconds)
        action = source_action(flag.enforce)
        decision = Decision(
            event_id=flag.event_id,
            source=flag.source,
            model_id=flag.model_id,
            model_version=flag.model_version,
            action=action,
            scope=Scope.SOURCE,
            reasons=[
                Reason(detector="flagged_events_per_source", score=count, threshold=policy.limit)
            ],
            expires_at=expires,
            decided_at=now,
        )
        detection = Detection(
            event_id=flag.event_id,
            model_id=flag.model_id,
            model_version=flag.model_version,
            source=flag.source,
            kind=DetectionKind.QUARANTINE,
            score=count,
            threshold=policy.limit,
            expires_at=expires,
            detected_at=now,
            details={"enforced": 1.0 if flag.enforce else 0.0},
        )
        topics = self.config.topics
        records = [
            OutputRecord(
                topics.decisions, decision.key.encode(), decision.model_dump_json().encode()
            )
        ]
        if flag.enforce:
            # A quarantine incident only when the source really was quarantined.
            records.append(
                OutputRecord(
                    topics.detections, flag.model_id.encode(), detection.model_dump_json().encode()
                )
            )
        await self.publish(records)
        self.in_force[flag.source] = expires.timestamp()
        self.metrics.decisions.labels(action.value, Scope.SOURCE.value).inc()
        logger.warning(
            "source %s: %s until %s (%d flagged events in %ds)",
            flag.source,
            action.value,
            expires.isoformat(),
            count,
            policy.window_seconds,
        )

    def sources_in_force(self) -> int:
        """Quarantines in force among the sources this worker holds."""
        now = time.time()
        return sum(1 for expires in self.in_force.values() if float(expires) > now)
