"""The OIP v2 join: a request and its response, logged as two records, become events.

KServe's payload logger writes a request and its response as two CloudEvents with the
same id, possibly on different partitions and in either order. The scoring agent checks
each record and forwards it, re-keyed by that id, to the internal halves topic, so both
halves of an inference reach the same worker. There the first half waits in the Faust
table ``oip-pending`` (keyed by id, so it moves with its partition and survives
restarts) until the other arrives; the pair becomes native events on the internal
joined topic, which the scoring agent reads like any inference topic.

Clients choose CloudEvent ids (KServe copies the client's ``Ce-Id``), so one id may
carry many requests: an entry keeps every half still waiting under its id, oldest first,
and pairs a new half with the oldest waiting half of the other kind. A request is never
dropped: one still alone after the model's ``join_timeout_seconds`` (timed from when it
was read), or pushed out by :data:`MAX_WAITING_PER_ID` newer requests of the same id, is
scored without its output (the model is run again anyway); a response alone that long is
dropped and counted. A half read again after a restart is recognised by the position of
its original record (topic, partition, offset), remembered for another timeout (at most
:data:`MAX_HANDLED_PER_ID` per id), and joined nothing twice.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from detectors import DetectorConfig
from monitor.config import MonitorConfig
from monitor.decoding import RecordFormat, event_input, joined_events, oip_half
from monitor.errors import InvalidRecordError
from monitor.formats import OipMessage
from monitor.worker.metrics import Metrics
from monitor.worker.records import OutputRecord, Publish, dead_letter
from schemas import OipHalf

__all__ = ["MAX_HANDLED_PER_ID", "MAX_WAITING_PER_ID", "JoinStage", "PendingJoin", "WaitingHalf"]

logger = logging.getLogger(__name__)

MAX_WAITING_PER_ID = 64
"""Halves of one kind that may wait under one CloudEvent id; the oldest beyond it goes on
alone (a request is scored without its output, a response dropped)."""
MAX_HANDLED_PER_ID = 1024
"""Positions of joined halves remembered per id to recognise replays."""

Position = tuple[str, int, int]
"""Where a half's original record is: topic, partition, offset."""


class WaitingHalf(BaseModel):
    """A half waiting for its other half, and since when (epoch seconds)."""

    model_config = ConfigDict(frozen=True)

    half: OipHalf
    since: float


class PendingJoin(BaseModel):
    """A table entry: the halves waiting under one CloudEvent id, oldest first, and the
    positions of the halves already joined under it, with when they were joined."""

    waiting: list[WaitingHalf] = Field(default_factory=list)
    handled: list[tuple[str, int, int, float]] = Field(default_factory=list)

    def seen(self, position: Position) -> bool:
        """Whether the half at ``position`` is waiting or was joined already."""
        return any(p[:3] == position for p in self.handled) or any(
            _position(w.half) == position for w in self.waiting
        )

    def take(self, kind: str, model_id: str) -> OipHalf | None:
        """The oldest waiting half of ``kind`` and model, removed from the entry."""
        for index, waiting in enumerate(self.waiting):
            if waiting.half.kind == kind and waiting.half.model_id == model_id:
                del self.waiting[index]
                return waiting.half
        return None

    def deadline(self, timeout: float) -> float:
        """When the next waiting half is due, or the oldest joined position forgotten."""
        times = [w.since for w in self.waiting] + [p[3] for p in self.handled]
        return min(times) + timeout if times else 0.0


def _position(half: OipHalf) -> Position:
    return (half.topic, half.partition, half.offset)


def _load(stored: bytes) -> PendingJoin:
    """An entry of the table, also as written before several halves could share an id.

    The table's changelog is a topic like any other: an entry that does not read is
    logged and dropped (its halves are lost, the worker goes on), never raised.
    """
    try:
        data = orjson.loads(stored)
        if isinstance(data, dict) and "half" in data:
            half = OipHalf.model_validate(data["half"])
            since = float(data.get("waiting_since", 0.0))
            if data.get("done"):
                return PendingJoin(handled=[(*_position(half), since)])
            return PendingJoin(waiting=[WaitingHalf(half=half, since=since)])
        entry = PendingJoin.model_validate(data)
    except (ValueError, TypeError) as exc:  # orjson's and pydantic's errors are ValueErrors
        logger.error("dropping an unreadable entry of the OIP v2 join table: %s", exc)
        return PendingJoin()
    del entry.handled[:-MAX_HANDLED_PER_ID]
    return entry


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
        self._deadlines: dict[str, tuple[float, int]] = {}
        """When each pending id is next due, and how many halves wait under it: the timer
        reads this index instead of every entry of the table each second."""

    def _timeout(self, model_id: str) -> float:
        model = self.models.get(model_id)
        return model.oip_v2.join_timeout_seconds if model is not None else 0.0

    def _remember(self, key: str, entry: PendingJoin) -> None:
        model_ids = {w.half.model_id for w in entry.waiting} or set(self.models)
        timeout = min((self._timeout(m) for m in model_ids), default=0.0)
        self._deadlines[key] = (entry.deadline(timeout), len(entry.waiting))

    def _write(self, key: str, entry: PendingJoin) -> None:
        if not entry.waiting and not entry.handled:
            self.pending.pop(key, None)
            self._deadlines.pop(key, None)
            return
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
        entry = _load(stored) if stored is not None else PendingJoin()
        position = _position(half)
        if entry.seen(position):
            # Read again after a restart (at-least-once): joined or waiting already.
            self.metrics.oip_joins.labels(half.model_id, "duplicate").inc()
            return
        other = entry.take("response" if half.kind == "request" else "request", half.model_id)
        records: list[OutputRecord] = []
        outcomes: list[str] = []
        if other is not None:
            request, response = (half, other) if half.kind == "request" else (other, half)
            records.extend(self._events(request, response))
            outcomes.append("joined")
            entry.handled.extend([(*_position(request), now), (*_position(response), now)])
            del entry.handled[:-MAX_HANDLED_PER_ID]
        else:
            entry.waiting.append(WaitingHalf(half=half, since=now))
            same_kind = [
                w
                for w in entry.waiting
                if w.half.kind == half.kind and w.half.model_id == half.model_id
            ]
            if len(same_kind) > MAX_WAITING_PER_ID:
                oldest = same_kind[0]
                entry.waiting.remove(oldest)
                records.extend(self._alone(oldest.half, outcomes))
                entry.handled.append((*_position(oldest.half), now))
                del entry.handled[:-MAX_HANDLED_PER_ID]
        if records:
            await self.publish(records)
        self._write(half.id, entry)
        for outcome in outcomes:
            self.metrics.oip_joins.labels(half.model_id, outcome).inc()

    def _alone(self, half: OipHalf, outcomes: list[str]) -> list[OutputRecord]:
        """A half whose other half did not come: a request is scored without its output,
        a response dropped."""
        if half.kind == "request":
            outcomes.append("request_alone")
            return self._events(half, None)
        logger.info(
            "model %s: dropping the response %s: no request within %gs",
            half.model_id,
            half.id,
            self._timeout(half.model_id),
        )
        outcomes.append("response_dropped")
        return []

    async def expire(self, now: float | None = None) -> None:
        """Score requests whose response did not come in time; drop such responses; forget
        joined positions older than the timeout."""
        now = time.time() if now is None else now
        if len(self._deadlines) != len(self.pending):
            # Recovered from the changelog at start, or partitions came with a rebalance.
            self._deadlines.clear()
            for key, stored in list(self.pending.items()):
                self._remember(key, _load(stored))
        due_keys: list[str] = []
        waiting = 0
        for key, (deadline, count) in self._deadlines.items():
            if not self.owns(key):
                continue
            if deadline <= now:
                due_keys.append(key)
            else:
                waiting += count
        records: list[OutputRecord] = []
        outcomes: list[tuple[str, str]] = []
        updated: dict[str, PendingJoin] = {}
        for key in due_keys:
            entry = _load(self.pending[key])
            still: list[WaitingHalf] = []
            for item in entry.waiting:
                if item.since + self._timeout(item.half.model_id) <= now:
                    alone: list[str] = []
                    records.extend(self._alone(item.half, alone))
                    outcomes.extend((item.half.model_id, outcome) for outcome in alone)
                else:
                    still.append(item)
            timeout = min((self._timeout(m) for m in self.models), default=0.0)
            entry.waiting = still
            entry.handled = [p for p in entry.handled if p[3] + timeout > now]
            updated[key] = entry
            waiting += len(still)
        self.metrics.oip_pending.set(waiting)
        if records:
            await self.publish(records)
        for key, entry in updated.items():
            self._write(key, entry)
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
            copy_bytes=self.config.dead_letters.copy_bytes,
        )


def _decode(half: OipHalf) -> OipMessage:
    headers = [(name, base64.b64decode(value)) for name, value in half.headers]
    return oip_half(base64.b64decode(half.value_b64), headers)


def _dump(entry: PendingJoin) -> bytes:
    # A table value, not a record to publish: OutputRecord does not apply.
    return entry.model_dump_json().encode()
