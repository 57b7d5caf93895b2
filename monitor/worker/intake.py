"""The worker's hot path: inference topics read in record batches, straight from aiokafka.

Faust hands an agent one event at a time: per message it builds an event, runs it
through the stream's machinery, buffers it for ``take_events`` and acknowledges it on
its own, which cost more than decoding, scoring and deciding the event together (see
``docs/architecture.md``, *The hot path*). The inference topics are the worker's whole
load, so they are read here instead, by an :class:`aiokafka.AIOKafkaConsumer` that the
Faust app starts and stops with itself; everything else (internal topics, tables, timers,
the web server) stays Faust's.

The loop, :meth:`InferenceIntake.run`::

    getmany (max_events records, or what came within max_wait_ms)
      → process (decode, score, decide, publish; done once the broker acknowledged
        every output), up to MAX_BATCHES_IN_FLIGHT batches (MAX_BYTES_IN_FLIGHT of
        values) at once, so that one batch's wait for acknowledgements overlaps the
        next one's decoding and scoring
      → batches finish in the order they were fetched; every COMMIT_INTERVAL_S the
        offsets after the finished ones are committed

Delivery is at-least-once, as it is for Faust's agents:

- an offset is committed only after everything its batch (and every batch before it)
  produced is acknowledged; a worker that stops or dies before that leaves the batch
  uncommitted, and the next owner of the partition reads it again (its decisions may be
  written twice, never lost);
- before the group takes partitions away, the rebalance listener waits for every batch
  in hand and commits them (:meth:`InferenceIntake.drain`), under a lock that keeps new
  batches from starting meanwhile: a revoked partition's last batch is committed before
  its next owner reads it. Records fetched for a partition that was revoked meanwhile
  are left to that owner;
- a stopping worker drains the same way, for up to STOP_GRACE_S, and abandons what is
  still unfinished uncommitted;
- a commit the group refuses (this worker was dropped from the group) is logged and
  counted: the partitions' next owner starts from the last committed offset;
- a batch that fails unexpectedly stops the process at once, without a commit.

Two gauges tell how far behind the worker is: ``advmon_consumer_lag{topic,partition}``
(the high watermark the last fetch reported minus the offset the group resumes the
partition from; updated every LAG_INTERVAL_S and at each commit, from what the consumer
knows already, and removed when the partition is revoked) and
``advmon_undecided_event_age_seconds`` (the age of the oldest record in hand, read at
scrape time, so that it grows while a batch is stuck).

The consumer group is ``<app_id>-inference`` (:func:`inference_group`): a group's members
must agree on one assignor, and Faust's own group uses its own. A group that has committed
nothing yet for a partition starts where the Faust app's group (``<app_id>``, which read
the inference topics before) left it, if it committed there, else at the earliest offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import mode
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from monitor.settings import Settings
from monitor.worker.metrics import Metrics
from monitor.worker.records import InputMessage

__all__ = ["InferenceIntake", "exit_without_commit", "inference_group", "input_messages"]

logger = logging.getLogger(__name__)

Process = Callable[[Sequence[InputMessage]], Awaitable[None]]


def inference_group(app_id: str) -> str:
    """The consumer group that reads the inference topics of app ``app_id``.

    >>> inference_group("advmon")
    'advmon-inference'
    """
    return f"{app_id}-inference"


def input_messages(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[InputMessage]:
    """aiokafka's records as the scoring stage reads them (timestamps in seconds)."""
    return [
        InputMessage(
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value or b"",
            record.timestamp / 1000 if record.timestamp is not None else None,
            tuple((str(name), bytes(value or b"")) for name, value in record.headers)
            if record.headers
            else (),
        )
        for record in records
    ]


def exit_without_commit(doing: str) -> NoReturn:
    """End the process at once after an unexpected error, committing nothing more.

    Faust acknowledges a batch taken with ``take_events`` even when its handler raises,
    and would commit that offset on the way down; exiting here instead keeps the batch
    uncommitted, so a restarted worker processes it again (at-least-once).
    """
    logger.critical("unexpected error while %s; exiting without committing", doing, exc_info=True)
    logging.shutdown()
    os._exit(70)


MAX_BATCHES_IN_FLIGHT = 4
"""Batches processed at once: one is scored while others wait for their acknowledgements
(the producer sends what they queued meanwhile in one request per broker)."""

MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024
"""At most this much of the inference messages' values is held by batches in hand (a
batch that alone holds more is still taken, alone): memory is bounded by bytes, not only
by the record count, whatever size the messages are."""

COMMIT_INTERVAL_S = 0.5
"""Finished batches are committed together, at most this often (and before partitions
are revoked or the worker stops): a commit per batch would be a request to the group
coordinator per batch. After a crash, at most this much more is read again."""

IDLE_POLL_MS = 100
"""How long one fetch waits while nothing comes (finished batches are committed between)."""

LAG_INTERVAL_S = 1.0
"""``advmon_consumer_lag`` is updated at least this often while the loop runs (and at each
commit)."""

STOP_GRACE_S = 10.0
"""How long a stopping worker waits for its batches in hand before it abandons them."""


@dataclass
class _InFlight:
    """A batch being processed: the offsets to commit once it has finished."""

    offsets: dict[TopicPartition, int]
    task: asyncio.Future[None]
    size: int = 0
    """Bytes of the batch's message values."""
    oldest: float | None = None
    """Wall-clock time (seconds) of its oldest record (:func:`oldest_time`)."""


def oldest_time(records: Iterable[ConsumerRecord[bytes, bytes]], fetched_at: float) -> float | None:
    """The earliest time among the records' Kafka timestamps, in seconds, or None for
    no records.

    Timestamps come from producers and are not trusted: a missing or non-positive one
    counts as ``fetched_at`` (the record is at least as old as its fetch), and none counts
    as later than ``fetched_at``, so an age measured from the result is never negative.

    >>> r = ConsumerRecord("t", 0, 5, 2_000, 0, None, b"", None, 0, 0, ())
    >>> oldest_time([r], fetched_at=10.0), oldest_time([r], fetched_at=1.0)
    (2.0, 1.0)
    >>> no_time = ConsumerRecord("t", 0, 6, -1, 0, None, b"", None, 0, 0, ())
    >>> oldest_time([r, no_time], fetched_at=10.0), oldest_time([no_time], 10.0)
    (2.0, 10.0)
    >>> print(oldest_time([], 10.0))
    None
    """
    oldest: float | None = None
    for record in records:
        timestamp = record.timestamp
        seconds = timestamp / 1000 if isinstance(timestamp, int) and timestamp > 0 else fetched_at
        seconds = min(seconds, fetched_at)
        if oldest is None or seconds < oldest:
            oldest = seconds
    return oldest


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, intake: InferenceIntake) -> None:
        self.intake = intake

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.intake.joined = False
        # The batches in hand are finished and committed before the partitions go.
        async with self.intake.batch_lock:
            await self.intake.drain()
            if revoked:
                logger.info("inference partitions revoked: %s", _named(revoked))
            self.intake.forget_partitions(set(revoked or ()))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            logger.info("inference partitions assigned: %s", _named(assigned))
            async with self.intake.batch_lock:
                await self.intake.resume_legacy_positions(set(assigned))
        self.intake.joined = True


def _named(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))


class InferenceIntake(mode.Service):
    """Reads the inference topics in batches and hands each one to ``process``.

    Parameters
    ----------
    settings
        Broker connection, app id (the group) and static membership id.
    topics
        The inference topics.
    process
        Handles a batch; returns once its outputs are acknowledged.
    ready
        Awaited before the first fetch (the detectors' sessions are built).
    max_events, max_wait_ms
        The largest batch, and how long a fetch waits while nothing is there.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        process: Process,
        metrics: Metrics,
        *,
        ready: Callable[[], Awaitable[None]],
        max_events: int,
        max_wait_ms: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topics = list(dict.fromkeys(topics))
        self.process = process
        self.metrics = metrics
        self.ready = ready
        self.max_events = max_events
        self.max_wait_ms = max_wait_ms
        self.group_id = inference_group(settings.worker.app_id)
        self.legacy_group_id = settings.worker.app_id
        self.batch_lock = asyncio.Lock()
        self._fetching: asyncio.Future[None] | None = None
        self._in_flight: deque[_InFlight] = deque()
        self._finished: dict[TopicPartition, int] = {}
        """Next offset of each partition whose batches have finished, not yet committed."""
        self._committing: asyncio.Task[None] | None = None
        self._committed_at = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        self.joined = False
        """Whether the consumer holds its group's current assignment (none is one)."""
        self._floors: dict[TopicPartition, int] = {}
        """Where the app's group left a partition this group had never committed: the
        records before it were decided already."""
        self._committed: dict[TopicPartition, int] = {}
        """The offset the group resumes each owned partition from: its last commit (read
        at assignment, then this worker's own), else the first record this worker took."""
        self._lag_partitions: set[TopicPartition] = set()
        """Partitions with an ``advmon_consumer_lag`` series."""
        self._lag_updated_at = 0.0
        self._oldest_in_hand: float | None = None
        """Wall-clock time of the oldest record of the batches in hand, None for none."""
        self.clock: Callable[[], float] = time.time
        """Wall clock (seconds since the epoch) that Kafka timestamps are compared with."""
        metrics.undecided_event_age.set_function(self.undecided_age)

    def _new_consumer(self) -> AIOKafkaConsumer:
        kafka = self.settings.kafka
        return AIOKafkaConsumer(
            **kafka.client_options(),
            group_id=self.group_id,
            group_instance_id=self.settings.worker.instance_id,
            client_id=f"{self.settings.worker.app_id}-inference",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=max(100, kafka.session_timeout_ms // 3),
            # New topics and partitions are seen within this (aiokafka's default: 5 min).
            metadata_max_age_ms=10_000,
            max_partition_fetch_bytes=kafka.max_request_bytes,
            fetch_max_bytes=max(kafka.max_request_bytes, 52_428_800),
        )

    def assignment(self) -> set[TopicPartition]:
        """The inference partitions this worker reads now."""
        if self.consumer is None:
            return set()
        partitions: set[TopicPartition] = self.consumer.assignment()
        return partitions

    async def on_start(self) -> None:
        self.consumer = self._new_consumer()
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        self._fetching = self.add_future(self._run())

    async def on_stop(self) -> None:
        # mode calls this before it cancels the service's futures: stop fetching first.
        if self._fetching is not None:
            self._fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetching
        # Commit what is finished; what is not, after a grace, is abandoned uncommitted
        # and read again by the partition's next owner.
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                async with self.batch_lock:
                    await self.drain()
        except TimeoutError:
            logger.warning(
                "%d batches unfinished after %.0f s; the next owner processes them again",
                len(self._in_flight),
                STOP_GRACE_S,
            )
        for batch in self._in_flight:
            batch.task.cancel()
        self._in_flight.clear()
        self._oldest_in_hand = None
        self.forget_partitions(set(self._lag_partitions) | set(self._committed))
        if self.consumer is not None:
            await self.consumer.stop()

    async def _run(self) -> None:
        try:
            await self.ready()
            await self.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            exit_without_commit("scoring a batch of inference messages")

    async def run(self) -> None:
        """Fetch batches and start processing each, until the service stops.

        Up to :data:`MAX_BATCHES_IN_FLIGHT` batches (and :data:`MAX_BYTES_IN_FLIGHT`) are
        processed at once, so that one batch's wait for the broker's acknowledgement
        overlaps the next batch's decoding and scoring. They finish, and are committed,
        in the order they were fetched.
        """
        consumer = self.consumer
        assert consumer is not None
        fetching = self.metrics.pipeline_seconds.labels("fetch")
        while not self.should_stop:
            while self._in_flight and (
                len(self._in_flight) >= MAX_BATCHES_IN_FLIGHT
                or sum(b.size for b in self._in_flight) >= MAX_BYTES_IN_FLIGHT
            ):
                await asyncio.wait([self._in_flight[0].task])
                self._finish()
            self._finish()
            if time.monotonic() - self._lag_updated_at >= LAG_INTERVAL_S:
                self.update_lag()
            started = time.perf_counter()
            fetched = await self._take(consumer)
            fetching.inc(time.perf_counter() - started)
            fetched_at = self.clock()
            if not fetched:
                continue
            async with self.batch_lock:
                owned = consumer.assignment()
                batch = {
                    tp: self._above_floor(tp, records)
                    for tp, records in fetched.items()
                    if tp in owned
                }
                batch = {tp: records for tp, records in batch.items() if records}
                if not batch:
                    continue
                messages = input_messages(r for records in batch.values() for r in records)
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                for tp, records in batch.items():
                    # Nothing committed known: the group would resume from here.
                    self._committed.setdefault(tp, records[0].offset)
                oldest = oldest_time((r for rs in batch.values() for r in rs), fetched_at)
                task = asyncio.ensure_future(self.process(messages))
                size = sum(len(m.value) for m in messages)
                self._in_flight.append(_InFlight(offsets, task, size, oldest))
                self._track_oldest()

    def _above_floor(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        floor = self._floors.get(tp)
        if floor is None or not records or records[0].offset >= floor:
            return records
        return [record for record in records if record.offset >= floor]

    async def _take(
        self, consumer: AIOKafkaConsumer
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """The next batch: ``max_events`` records, or what came within ``max_wait_ms`` of
        asking (at once when records are waiting); empty after :data:`IDLE_POLL_MS`
        without any."""
        deadline = time.monotonic() + self.max_wait_ms / 1000
        fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await consumer.getmany(
            timeout_ms=IDLE_POLL_MS, max_records=self.max_events
        )
        count = sum(len(records) for records in fetched.values())
        while 0 < count < self.max_events:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = await consumer.getmany(timeout_ms=left_ms, max_records=self.max_events - count)
            for tp, records in more.items():
                fetched.setdefault(tp, []).extend(records)
                count += len(records)
        return fetched

    def _finish(self) -> None:
        """Take the finished batches at the head of the line; start committing them."""
        while self._in_flight and self._in_flight[0].task.done():
            batch = self._in_flight.popleft()
            if batch.task.cancelled() or batch.task.exception() is not None:
                error = batch.task.exception() if not batch.task.cancelled() else None
                logger.critical("a batch failed", exc_info=error)
                exit_without_commit("scoring a batch of inference messages")
            self._finished.update(batch.offsets)
        self._track_oldest()
        now = time.monotonic()
        if (
            self._finished
            and (self._committing is None or self._committing.done())
            and now - self._committed_at >= COMMIT_INTERVAL_S
        ):
            offsets, self._finished = self._finished, {}
            self._committed_at = now
            self._committing = asyncio.create_task(self.commit(offsets))

    async def drain(self) -> None:
        """Wait for every batch in hand and commit them all."""
        if self._in_flight:
            await asyncio.wait([batch.task for batch in self._in_flight])
        self._finish()
        if self._committing is not None:
            await self._committing
        if self._finished:
            offsets, self._finished = self._finished, {}
            await self.commit(offsets)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit, for each partition still assigned, the offset after its last finished
        record."""
        consumer = self.consumer
        assert consumer is not None
        owned = consumer.assignment()
        committed = {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items() if tp in owned}
        if not committed:
            return
        started = time.perf_counter()
        try:
            await consumer.commit(committed)
            for tp, offset in committed.items():
                self._committed[tp] = offset.offset
            self.update_lag()
        except KafkaError as exc:
            # Dropped from the group, the partitions moved, the coordinator gone: the
            # partitions' next owner (this worker, too) reads them again from the last
            # committed offset.
            logger.warning(
                "could not commit %s (%r); they are processed again from the last commit",
                _named(committed),
                exc,
            )
            self.metrics.commits_refused.inc()
        finally:
            self.metrics.pipeline_seconds.labels("commit").inc(time.perf_counter() - started)

    async def resume_legacy_positions(self, assigned: set[TopicPartition]) -> None:
        """Start partitions this group never committed where the app's group left them."""
        consumer = self.consumer
        if consumer is None:
            return
        try:
            await self._resume_legacy_positions(consumer, assigned)
        except (KafkaError, OSError, TimeoutError) as exc:
            # The partitions start where this group's own commits (or none) say.
            logger.warning("could not read group %s's offsets: %r", self.legacy_group_id, exc)

    async def _resume_legacy_positions(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> None:
        fresh = []
        for tp in assigned:
            offset = await consumer.committed(tp)
            if offset is None:
                fresh.append(tp)
            else:
                self._committed[tp] = offset
        if not fresh:
            return
        admin = AIOKafkaAdminClient(**self.settings.kafka.client_options())
        await admin.start()
        try:
            legacy = await admin.list_consumer_group_offsets(self.legacy_group_id, partitions=fresh)
        finally:
            await admin.close()
        for tp in fresh:
            offset = legacy.get(tp)
            if offset is None or offset.offset < 0:
                continue
            logger.info(
                "%s[%d]: starting at offset %d, where group %s left it",
                tp.topic,
                tp.partition,
                offset.offset,
                self.legacy_group_id,
            )
            # Records before it may have been fetched already: they are skipped (the
            # floor), and the position is moved forward, never back.
            self._floors[tp] = offset.offset
            if await consumer.position(tp) < offset.offset:
                consumer.seek(tp, offset.offset)

    def _track_oldest(self) -> None:
        """Note the oldest record of the batches in hand, for the scrape to read."""
        times = [b.oldest for b in self._in_flight if b.oldest is not None]
        self._oldest_in_hand = min(times) if times else None

    def undecided_age(self) -> float:
        """Seconds since the oldest record in hand (``advmon_undecided_event_age_seconds``),
        0 with none; called at scrape time, possibly from another thread."""
        oldest = self._oldest_in_hand
        if oldest is None:
            return 0.0
        return max(0.0, self.clock() - oldest)

    def update_lag(self) -> None:
        """Set ``advmon_consumer_lag`` of each owned partition from the high watermark its
        last fetch reported and the offset the group resumes it from (no broker request);
        partitions that are not owned any more lose their series."""
        self._lag_updated_at = time.monotonic()
        owned = self.assignment()
        self.forget_partitions(self._lag_partitions - owned)
        consumer = self.consumer
        if consumer is None:
            return
        for tp in owned:
            highwater = consumer.highwater(tp)
            committed = self._committed.get(tp)
            if highwater is None or committed is None:
                continue  # not fetched yet, or nothing known of where the group resumes
            lag = max(0, highwater - committed)
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            self._lag_partitions.add(tp)

    def forget_partitions(self, partitions: set[TopicPartition]) -> None:
        """Drop what is known of partitions this worker no longer owns, their
        ``advmon_consumer_lag`` series with it (another worker reports them now)."""
        for tp in partitions:
            self._committed.pop(tp, None)
            if tp in self._lag_partitions:
                self._lag_partitions.discard(tp)
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
