"""What happens to a batch of inference messages, as pure functions over plain data.

The agents in :mod:`monitor.worker.agents` only move messages: they hand a batch to
:meth:`ScoringPipeline.decode`, score each model's inputs, pass the verdicts to
:meth:`ScoringPipeline.decide`, and publish the records it returns. Everything here is
testable without a broker.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from detectors import DetectorConfig, DetectorScores, InvalidInputError
from monitor.config import ModelConfig, MonitorConfig
from monitor.event_files import event_input
from monitor.formats import FormatError, decode_oip_v2, mapped_event, sagemaker_events
from monitor.worker.policy import request_action
from schemas import (
    Action,
    DeadLetter,
    Decision,
    Detection,
    DetectionKind,
    InferenceEvent,
    InvalidEventError,
    OipHalf,
    Reason,
    Scope,
    SourceFlag,
    decode_event,
)

__all__ = [
    "DETECTOR_NAME",
    "DecidedBatch",
    "DecodedMessages",
    "InputMessage",
    "ModelDetector",
    "OutputRecord",
    "ScoringBatch",
    "ScoringPipeline",
    "event_time",
]

DETECTOR_NAME = "feature_squeezing"


@dataclass(frozen=True)
class InputMessage:
    """One message read from an inference topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float | None = None
    """Kafka timestamp, seconds since the epoch."""
    headers: tuple[tuple[str, bytes], ...] = ()
    """Kafka headers, in order."""


@dataclass(frozen=True)
class OutputRecord:
    """A record to publish: topic, key and JSON value."""

    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class ModelDetector:
    """What the pipeline knows of one model's detector."""

    config: ModelConfig
    detector: DetectorConfig
    detector_sha256: str


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


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode() if value is not None else None


class _RejectedError(Exception):
    def __init__(self, reason: str, message: str, event: InferenceEvent | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.event = event


class ScoringPipeline:
    """Decode, validate and decide for the configured models.

    Parameters
    ----------
    config
        The worker config (topics, models, policy).
    models
        Each monitored model's detector, by model id.
    """

    def __init__(self, config: MonitorConfig, models: Mapping[str, ModelDetector]) -> None:
        self.config = config
        self.models = dict(models)
        self.topic_models = {
            topic: model
            for model in config.models
            if model.format != "native"
            for topic in model.topics
        }

    def decode(self, messages: Sequence[InputMessage]) -> DecodedMessages:
        """Split messages into per-model scoring batches, dead letters and OIP v2 halves."""
        batches: dict[tuple[str, tuple[int, ...]], ScoringBatch] = {}
        decoded = DecodedMessages([], [], [])
        for message in messages:

            def reject(rejected: _RejectedError, message: InputMessage = message) -> None:
                decoded.invalid_reasons.append(rejected.reason)
                decoded.dead_letters.append(
                    self.dead_letter(message, rejected.reason, str(rejected), rejected.event)
                )

            model = self.topic_models.get(message.topic)
            try:
                if model is not None and model.format == "oip-v2":
                    record, kind = self._half(message, model)
                    decoded.halves.append(record)
                    decoded.half_kinds.append((model.id, kind))
                    continue
                events = self._events(message, model)
            except _RejectedError as rejected:
                reject(rejected)
                continue
            for row, event in enumerate(events):
                try:
                    array = self._accept(message, event)
                except _RejectedError as rejected:
                    reject(rejected)
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

    def _events(self, message: InputMessage, model: ModelConfig | None) -> list[InferenceEvent]:
        """The events a message holds, in its topic's format."""
        try:
            if model is None:
                return [decode_event(message.value)]
            if model.format == "sagemaker":
                return sagemaker_events(message.value, model_id=model.id)
            if model.mapping is None:  # pragma: no cover - the config guarantees one
                raise _RejectedError("invalid_config", f"model {model.id!r} has no mapping")
            return [mapped_event(message.value, model.mapping, model_id=model.id)]
        except InvalidEventError as exc:
            raise _RejectedError("invalid_event", str(exc)) from None
        except FormatError as exc:
            raise _RejectedError(exc.reason.value, str(exc)) from None

    def _half(self, message: InputMessage, model: ModelConfig) -> tuple[OutputRecord, str]:
        """An OIP v2 record, checked, as a record for the join topic keyed by its id."""
        try:
            half = decode_oip_v2(message.value, message.headers)
        except FormatError as exc:
            raise _RejectedError(exc.reason.value, str(exc)) from None
        record = OipHalf(
            id=half.id,
            kind=half.kind,
            model_id=model.id,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key_b64=_b64(message.key),
            value_b64=base64.b64encode(message.value).decode(),
            headers=[(name, base64.b64encode(value).decode()) for name, value in message.headers],
            timestamp=message.timestamp,
            received_at=datetime.now(UTC),
        )
        topic = self.config.topics.oip_halves
        return OutputRecord(topic, half.id.encode(), record.model_dump_json().encode()), half.kind

    def _accept(self, message: InputMessage, event: InferenceEvent) -> np.ndarray:
        """The event's model input, checked against its model's detector."""
        model = self.models.get(event.model_id)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise _RejectedError(
                "unknown_model",
                f"model_id {event.model_id!r} is not monitored (configured: {known})",
                event,
            )
        joined = message.topic == self.config.topics.joined
        if not joined and message.topic not in model.config.topics:
            raise _RejectedError(
                "unknown_model",
                f"model {event.model_id!r} is not configured for topic {message.topic!r}",
                event,
            )
        detector = model.detector
        try:
            return event_input(event, detector.input_shape, detector.accepted_range)
        except InvalidInputError as exc:
            raise _RejectedError(exc.reason, str(exc), event) from None

    def dead_letter(
        self, message: InputMessage, reason: str, error: str, event: InferenceEvent | None
    ) -> OutputRecord:
        """The dead-letter record for ``message``: original bytes, coordinates, reason."""
        record = DeadLetter(
            reason=reason,
            error=error,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key_b64=_b64(message.key),
            value_b64=base64.b64encode(message.value).decode(),
            event_id=event.event_id if event else None,
            model_id=event.model_id if event else None,
            failed_at=datetime.now(UTC),
        )
        key = message.key if message.key is not None else f"{message.topic}/{message.partition}"
        return OutputRecord(
            self.config.topics.dead_letter,
            key if isinstance(key, bytes) else key.encode(),
            record.model_dump_json().encode(),
        )

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
        distances = verdict.scores.squeezer_distances.tolist()
        out: list[OutputRecord] = []
        actions: list[Action] = []
        for i, event in enumerate(batch.events):
            score = scores[i]
            actions.append(request_action(flagged[i], model.config.policy))
            decision = Decision(
                event_id=event.event_id,
                request_id=event.request_id,
                source=event.source,
                model_id=event.model_id,
                model_version=event.model_version,
                action=actions[-1],
                scope=Scope.REQUEST,
                reasons=[Reason(detector=DETECTOR_NAME, score=score, threshold=threshold)],
                decided_at=now,
            )
            out.append(
                OutputRecord(
                    topics.decisions, decision.key.encode(), decision.model_dump_json().encode()
                )
            )
            if not flagged[i]:
                continue
            message = batch.messages[i]
            detection = Detection(
                event_id=event.event_id,
                model_id=event.model_id,
                model_version=event.model_version,
                request_id=event.request_id,
                source=event.source,
                kind=DetectionKind.ADVERSARIAL,
                score=score,
                threshold=threshold,
                prediction=predictions[i],
                detector_sha256=model.detector_sha256,
                event_ts=event.ts,
                detected_at=now,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                details=dict(zip(squeezers, distances[i], strict=True)),
            )
            out.append(
                OutputRecord(
                    topics.detections, event.model_id.encode(), detection.model_dump_json().encode()
                )
            )
            if event.source:
                flag = SourceFlag(
                    source=event.source,
                    event_id=event.event_id,
                    model_id=event.model_id,
                    model_version=event.model_version,
                    score=score,
                    threshold=threshold,
                    enforce=model.config.policy == "enforce",
                    flagged_at=now,
                )
                out.append(
                    OutputRecord(
                        topics.source_flags, event.source.encode(), flag.model_dump_json().encode()
                    )
                )
        return DecidedBatch(out, actions)


def event_time(event: InferenceEvent, message: InputMessage) -> float | None:
    """When the event happened, in epoch seconds: its ``ts``, else the Kafka timestamp."""
    if event.ts is not None:
        return event.ts.timestamp()
    return message.timestamp
