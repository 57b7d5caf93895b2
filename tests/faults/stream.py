"""A stream of inference events under fault, and the decisions it got.

:class:`EventStream` sends events round-robin over an inference topic's partitions at a
steady rate and remembers where each landed; :class:`DecisionTally` reads the decisions
topic as the workers write it and counts the decisions of each event id, so a scenario can
wait for progress, inject a fault, and at the end tell lost events from late ones.
Both survive a broker restart: their clients reconnect and go on where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from monitor.worker.intake import inference_group
from tests.integration.kafka_io import committed_offsets, end_offsets
from tests.integration.traffic import DemoDetector, inference_event

__all__ = ["DecisionTally", "EventStream", "Missing", "Traffic", "demo_traffic"]

logger = logging.getLogger(__name__)

_CHUNK = 250


@dataclass(frozen=True)
class Traffic:
    """Events to send, and their ids in the same order."""

    values: list[bytes]
    event_ids: list[str]


def demo_traffic(detector: DemoDetector, model_id: str, count: int) -> Traffic:
    """``count`` native events cycling through the demo's clean test images.

    The detector flags about one in twenty of them, so detections flow to the incident
    stage alongside the decisions.
    """
    images = detector.clean.images
    ids = [f"{model_id}-{i}" for i in range(count)]
    values = [
        inference_event(event_id, images[i % len(images)], model_id=model_id)
        for i, event_id in enumerate(ids)
    ]
    return Traffic(values, ids)


@dataclass
class EventStream:
    """Sends events round-robin over ``partitions`` partitions at ``rate`` events/s.

    ``placed[i]`` is ``(partition, offset)`` of ``values[i]`` once acknowledged.
    """

    bootstrap: str
    topic: str
    partitions: int
    rate: float
    placed: dict[int, tuple[int, int]] = field(default_factory=dict)

    async def send(self, values: list[bytes]) -> None:
        """Send ``values``, waiting for every acknowledgement."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=120_000,
            linger_ms=5,
        )
        await producer.start()
        started = time.monotonic()
        try:
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                pending = []
                for offset, value in enumerate(chunk):
                    index = start + offset
                    partition = index % self.partitions
                    sent = await producer.send(self.topic, value, partition=partition)
                    pending.append((index, sent))
                for index, future in pending:
                    meta = await future
                    self.placed[index] = (meta.partition, meta.offset)
                due = started + (start + len(chunk)) / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            await producer.stop()


class DecisionTally:
    """Counts request decisions per event id on a decisions topic, from its beginning.

    Runs as a background task between :meth:`start` and :meth:`stop`.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.counts: Counter[str] = Counter()
        self._next: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def decided(self) -> int:
        """How many distinct events have at least one decision."""
        return len(self.counts)

    def start(self) -> None:
        """Start reading in the background."""
        self._task = asyncio.create_task(self._read_forever())

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, decided: int, *, timeout_s: float) -> bool:
        """Wait until ``decided`` events have a decision; False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.decided < decided:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def caught_up(self, *, timeout_s: float = 60.0) -> None:
        """Wait until everything on the topic now has been counted."""
        ends = await end_offsets(self.bootstrap, self.topic)
        deadline = time.monotonic() + timeout_s
        while any(self._next.get(p, 0) < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {self.topic} to {ends}: at {self._next}")
            await asyncio.sleep(0.2)

    async def _read_forever(self) -> None:
        while True:
            try:
                await self._read()
            except KafkaError as error:
                # A broker restart: read on from where this reader was.
                logger.warning("decision tally: %r; reconnecting", error)
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=200,
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in sorted(await self._partitions())]
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, self._next.get(tp.partition, 0))
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, messages in batches.items():
                    for message in messages:
                        decision = orjson.loads(message.value or b"{}")
                        if decision.get("scope") == "request":
                            self.counts[decision["event_id"]] += 1
                    if messages:
                        self._next[tp.partition] = messages[-1].offset + 1
        finally:
            await consumer.stop()

    async def _partitions(self) -> set[int]:
        return set(await end_offsets(self.bootstrap, self.topic))

    def duplicates(self) -> int:
        """Decisions beyond the first, summed over events."""
        return sum(n - 1 for n in self.counts.values() if n > 1)

    def most_decisions(self) -> int:
        """The most decisions any one event got."""
        return max(self.counts.values(), default=0)


@dataclass(frozen=True)
class Missing:
    """Events without a decision: lost (committed past) or late (not committed yet)."""

    lost: list[str]
    late: list[str]
    committed: dict[int, int]

    def describe(self, limit: int = 20) -> str:
        """A line for an assertion message."""
        return (
            f"lost (offset committed past them): {len(self.lost)} {self.lost[:limit]}; "
            f"late (not committed yet): {len(self.late)} {self.late[:limit]}; "
            f"committed offsets: {self.committed}"
        )

    @classmethod
    async def find(
        cls,
        bootstrap: str,
        group: str,
        topic: str,
        event_ids: list[str],
        placed: dict[int, tuple[int, int]],
        decided: Counter[str],
    ) -> Missing:
        """Classify each of ``event_ids`` that ``decided`` does not count."""
        # The worker's inference topics are read by its intake's group.
        committed = await committed_offsets(bootstrap, inference_group(group), topic)
        lost: list[str] = []
        late: list[str] = []
        for index, event_id in enumerate(event_ids):
            if decided[event_id]:
                continue
            partition, offset = placed[index]
            (lost if committed.get(partition, -1) > offset else late).append(event_id)
        return cls(lost, late, committed)
