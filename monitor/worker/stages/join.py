"""The OIP v2 join: a request and its response, logged as two records, become events.

KServe's payload logger writes a request and its response as two CloudEvents with the
same id, possibly on different partitions and in either order. The scoring agent checks
each record and forwards it, re-keyed by that id, to the internal halves topic, so both
halves of an inference reach the same worker. There the first half waits in the Faust
table ``oip-pending`` (keyed by id, so it moves with its partition and survives
restarts) until the other arrives; the pair becomes native events on the internal
joined topic, which the scoring agent reads like any inference topic.

A request still alone after the model's ``join_timeout_seconds`` is scored without its
output (the model is run again anyway); a response alone that long is dropped and
counted. The timeout runs from when the first half was read. A joined id is remembered
for another timeout, so a half read again after a restart is not joined twice.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping

from pydantic import BaseModel, ConfigDict, ValidationError

from detectors import DetectorConfig
from monitor.config import MonitorConfig
from monitor.decoding import RecordFormat, event_input, joined_events
from monitor.errors import InvalidRecordError
from monitor.formats import OipMessage, decode_oip_v2
from monitor.worker.metrics import Metrics
from monitor.worker.records import OutputRecord, Publish, dead_letter
from schemas import OipHalf

__all__ = ["JoinStage", "PendingHalf"]

logger = logging.getLogger(__name__)


class PendingHalf(BaseModel):
    """A table entry: the half waiting for its other half, or the mark of a finished join."""

    model_config = ConfigDict(frozen=True)

    half: OipHalf
    waiting_since: float
    """Wall-clock time (epoch seconds) the entry was written."""
    done: bool = False


class JoinStage:
    """Join OIP v2 requests with their responses into native events.

    Parameters
    ----------
    config
        The worker config (models' join settings, topic names).
    pending
        The waiting halves by CloudEvent id (a Faust table in the worker; a dict in tests).
    metrics, publish
        Where the stage reports, and how it sends records (returns once acknowledged).
    detectors
        Each model's detector: joined events whose input it would refuse are dead-lettered
        here, with the original request record, instead of after the join.
    owns
        Whether this worker holds the partition of a pending id: Faust's in-memory tables
        keep the entries of partitions given away in a rebalance, which only their new
        owner may expire.
    """

    def __init__(
        self,
        config: MonitorConfig,
        pending: MutableMapping[str, bytes],
        metrics: Metrics,
        publish: Publish,
        owns: Callable[[str], bool] = lambda _key: True,
        detectors: Mapping[str, DetectorConfig] | None = None,
    ) -> None:
        self.config = config
        self.detectors = dict(detectors or {})
        self.pending = pending
        self.metrics = metrics
        self.publish = publish
        self.owns = owns
        self.models = {m.id: m for m in config.models if m.format == "oip-v2"}
        self._deadlines: dict[str, tuple[float, bool]] = {}
        """When each pending id is due, and whether it is a finished join: the timer reads
        this index instead of every entry of the table each second."""

    def _remember(self, key: str, entry: PendingHalf) -> None:
        model = self.models.get(entry.half.model_id)
        timeout = model.oip_v2.join_timeout_seconds if model is not None else 0.0
        self._deadlines[key] = (entry.waiting_since + timeout, entry.done)

    def _write(self, key: str, entry: PendingHalf) -> None:
        self.pending[key] = _dump(entry)
        self._remember(key, entry)

    async def observe(self, raw: bytes, now: float | None = None) -> None:
        """Take one half from the halves topic: wait for its other half, or join them."""
        now = time.time() if now is None else now
        try:
            half = OipHalf.model_validate_json(raw)
        except ValidationError as exc:
            logger.error("skipping a malformed OIP v2 half: %s", exc)
            return
        if half.model_id not in self.models:
            logger.warning("skipping an OIP v2 half of model %s: not oip-v2", half.model_id)
            return
        stored = self.pending.get(half.id)
        if stored is None:
            self._write(half.id, PendingHalf(half=half, waiting_since=now))
            return
        waiting = PendingHalf.model_validate_json(stored)
        if waiting.done or waiting.half.kind == half.kind:
            # Read again after a restart (at-least-once): joined or waiting already.
            self.metrics.oip_joins.labels(half.model_id, "duplicate").inc()
            return
        request, response = (
            (waiting.half, half) if waiting.half.kind == "request" else (half, waiting.half)
        )
        await self.publish(self._events(request, response))
        self.metrics.oip_joins.labels(half.model_id, "joined").inc()
        self._write(half.id, PendingHalf(half=request, waiting_since=now, done=True))

    async def expire(self, now: float | None = None) -> None:
        """Score requests whose response did not come in time; drop such responses; forget
        finished joins."""
        now = time.time() if now is None else now
        if len(self._deadlines) != len(self.pending):
            # Recovered from the changelog at start, or partitions came with a rebalance.
            self._deadlines.clear()
            for key, stored in list(self.pending.items()):
                self._remember(key, PendingHalf.model_validate_json(stored))
        due_keys: list[str] = []
        waiting = 0
        for key, (deadline, done) in self._deadlines.items():
            if deadline <= now:
                if self.owns(key):
                    due_keys.append(key)
            elif not done and self.owns(key):
                waiting += 1
        self.metrics.oip_pending.set(waiting)
        due = [(key, PendingHalf.model_validate_json(self.pending[key])) for key in due_keys]
        if not due:
            return
        records: list[OutputRecord] = []
        outcomes: list[tuple[str, str]] = []
        for _, entry in due:
            if entry.done:
                continue
            if entry.half.kind == "request":
                records.extend(self._events(entry.half, None))
                outcomes.append((entry.half.model_id, "request_alone"))
            else:
                logger.info(
                    "model %s: dropping the response %s: no request within %gs",
                    entry.half.model_id,
                    entry.half.id,
                    self.models[entry.half.model_id].oip_v2.join_timeout_seconds,
                )
                outcomes.append((entry.half.model_id, "response_dropped"))
        if records:
            await self.publish(records)
        for key, _ in due:
            del self.pending[key]
            del self._deadlines[key]
        for model_id, outcome in outcomes:
            self.metrics.oip_joins.labels(model_id, outcome).inc()

    def _events(self, request: OipHalf, response: OipHalf | None) -> list[OutputRecord]:
        """The joined events on the joined topic, or the request's dead letter."""
        model = self.models[request.model_id]
        records: list[OutputRecord] = []
        try:
            events = joined_events(
                _decode(request),
                _decode(response) if response is not None else None,
                RecordFormat.of(model),
            )
        except InvalidRecordError as error:
            self.metrics.events_invalid.labels(error.reason).inc()
            return [self._dead_letter(request, error, request.id)]
        detector = self.detectors.get(model.id)
        for event in events:
            if detector is not None:
                try:
                    event_input(event, detector.input_shape, detector.accepted_range)
                except InvalidRecordError as error:
                    self.metrics.events_invalid.labels(error.reason).inc()
                    records.append(self._dead_letter(request, error, event.event_id))
                    continue
            key = event.request_id or event.event_id
            records.append(OutputRecord.of(self.config.topics.joined, key, event))
        return records

    def _dead_letter(
        self, request: OipHalf, error: InvalidRecordError, event_id: str
    ) -> OutputRecord:
        """A dead letter pointing at the original request record."""
        return dead_letter(
            self.config.topics.dead_letter,
            request,
            error,
            key=request.id.encode(),
            event_id=event_id,
            model_id=request.model_id,
        )


def _decode(half: OipHalf) -> OipMessage:
    headers = [(name, base64.b64decode(value)) for name, value in half.headers]
    return decode_oip_v2(base64.b64decode(half.value_b64), headers)


def _dump(entry: PendingHalf) -> bytes:
    # A table value, not a record to publish: OutputRecord does not apply.
    return entry.model_dump_json().encode()
