"""The worker's hot path: inference topics read in record batches, straight from aiokafka.

Faust hands an agent one event at a time: per message it builds an event, runs it
through the stream's machinery, buffers it for ``take_events`` and acknowledges it on
its own, which cost more than decoding, scoring and deciding the event together (see
``docs/architecture.md``, *The hot path*). The inference topics are the worker's whole
load, so they are read here instead, by an :class:`aiokafka.AIOKafkaConsumer` that the
Faust app starts and stops with itself; everything else (internal topics, tables, timers,
the web server) stays Faust's.

The loop, :meth:`InferenceIntake.run`::

    getmany (≤ max_events records, waits ≤ max_wait_ms only while nothing is there)
      → process (decode, score, decide, publish; returns once the broker acknowledged
        every output)
      → commit, per partition, the offset after the batch's last record

Delivery is at-least-once, as it is for Faust's agents:

- an offset is committed only after everything its batch produced is acknowledged; a
  worker that stops or dies before that leaves the batch uncommitted, and the next owner
  of the partition reads it again (its decisions may be written twice, never lost);
- a batch is processed and committed under a lock that the rebalance listener also takes
  before the group takes partitions away: a revoked partition's last batch is committed
  before its next owner reads it. Records fetched for a partition that was revoked
  meanwhile are left to that owner;
- a commit the group refuses (this worker was dropped from the group) is logged and
  counted: the partitions' next owner starts from the last committed offset.

The consumer group is ``<app_id>-inference`` (:func:`inference_group`): a group's members
must agree on one assignor, and Faust's own group uses its own. A group that has committed
nothing yet for a partition starts where the Faust app's group (``<app_id>``, which read
the inference topics before) left it, if it committed there, else at the earliest offset.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn

import mode
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
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


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, intake: InferenceIntake) -> None:
        self.intake = intake

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.intake.joined = False
        # Wait for the batch in hand: it is committed before the partitions go.
        async with self.intake.batch_lock:
            if revoked:
                logger.info("inference partitions revoked: %s", _named(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            logger.info("inference partitions assigned: %s", _named(assigned))
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
        self.consumer: AIOKafkaConsumer | None = None
        self.joined = False
        """Whether the consumer holds its group's current assignment (none is one)."""

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
        self.add_future(self._run())

    async def on_stop(self) -> None:
        # Futures added with add_future are cancelled before this runs: a batch in hand
        # is abandoned uncommitted, and read again by the partition's next owner.
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
        """Fetch, process and commit batches until the service stops."""
        consumer = self.consumer
        assert consumer is not None
        pipeline = self.metrics.pipeline_seconds
        fetching = pipeline.labels("fetch")
        committing = pipeline.labels("commit")
        while not self.should_stop:
            started = time.perf_counter()
            fetched = await consumer.getmany(
                timeout_ms=self.max_wait_ms, max_records=self.max_events
            )
            fetching.inc(time.perf_counter() - started)
            if not fetched:
                continue
            async with self.batch_lock:
                owned = consumer.assignment()
                batch = {tp: records for tp, records in fetched.items() if tp in owned and records}
                if not batch:
                    continue
                await self.process(input_messages(r for records in batch.values() for r in records))
                started = time.perf_counter()
                await self.commit(consumer, batch)
                committing.inc(time.perf_counter() - started)

    async def commit(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        """Commit the offset after each partition's last processed record."""
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batch.items()
        }
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # Dropped from the group (or the partitions moved): the next owner reads the
            # batch again from the last committed offset.
            logger.warning(
                "could not commit %s (%s); the next owner processes them again",
                _named(offsets),
                exc,
            )
            self.metrics.commits_refused.inc()

    async def resume_legacy_positions(self, assigned: set[TopicPartition]) -> None:
        """Start partitions this group never committed where the app's group left them."""
        consumer = self.consumer
        if consumer is None:
            return
        try:
            fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
            if not fresh:
                return
            admin = AIOKafkaAdminClient(**self.settings.kafka.client_options())
            await admin.start()
            try:
                legacy = await admin.list_consumer_group_offsets(
                    self.legacy_group_id, partitions=fresh
                )
            finally:
                await admin.close()
        except KafkaError as exc:
            logger.warning("could not read group %s's offsets: %s", self.legacy_group_id, exc)
            return
        for tp in fresh:
            offset = legacy.get(tp)
            if offset is not None and offset.offset >= 0:
                logger.info(
                    "%s[%d]: starting at offset %d, where group %s left it",
                    tp.topic,
                    tp.partition,
                    offset.offset,
                    self.legacy_group_id,
                )
                consumer.seek(tp, offset.offset)
