"""Kafka for the worker tests: unique topics, producing events, reading topics to the end.

Every client here is created and stopped inside the awaiting coroutine (see
``tests/conftest.py``); readers pause their partitions between polls, because the
embedded broker answers empty fetches at once and an idle consumer would otherwise spin
a CPU core that the workers under test need (Apache Kafka holds them).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from monitor.kafka.metadata import topic_partitions
from tests.kafka import create_topics

__all__ = [
    "OutputTopics",
    "Produced",
    "Record",
    "committed_offsets",
    "create_topics",
    "end_offsets",
    "produce",
    "read_topic",
    "unique_name",
]

_POLL_MS = 200
_PAUSE_S = 0.25


def unique_name(stem: str) -> str:
    """A topic or group name no other test uses: ``stem`` plus a random suffix."""
    return f"{stem}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class OutputTopics:
    """The topics one worker config writes to, with names unique to one test."""

    decisions: str
    dead_letter: str
    detections: str
    source_flags: str
    signals: str
    oip_halves: str = ""
    joined: str = ""

    @classmethod
    async def create(cls, bootstrap: str, stem: str) -> OutputTopics:
        """Name them after ``stem`` and create all but the internal topics.

        The worker declares the source-flags and signals topics itself, with its own
        partition count.
        """
        topics = cls(
            decisions=unique_name(f"{stem}-decisions"),
            dead_letter=unique_name(f"{stem}-dead-letter"),
            detections=unique_name(f"{stem}-detections"),
            source_flags=unique_name(f"{stem}-source-flags"),
            signals=unique_name(f"{stem}-signals"),
            oip_halves=unique_name(f"{stem}-oip-halves"),
            joined=unique_name(f"{stem}-joined"),
        )
        await create_topics(
            bootstrap, {topics.decisions: 2, topics.dead_letter: 1, topics.detections: 1}
        )
        return topics


@dataclass(frozen=True)
class Produced:
    """A message as sent, with where the broker put it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    partitions: Sequence[int | None] | None = None,
    headers: Sequence[Sequence[tuple[str, bytes]]] | None = None,
    delay_s: float = 0.0,
) -> list[Produced]:
    """Send ``values`` in order and wait for every acknowledgement.

    ``keys``, ``partitions`` and ``headers`` (``(name, value)`` pairs per record) go with
    the value of the same index; ``delay_s`` spaces the sends out to make a steady stream
    instead of one burst.
    """
    keys = keys if keys is not None else [None] * len(values)
    partitions = partitions if partitions is not None else [None] * len(values)
    record_headers = headers if headers is not None else [()] * len(values)
    assert len(keys) == len(values) == len(partitions) == len(record_headers)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        pending = []
        for key, value, partition, pairs in zip(
            keys, values, partitions, record_headers, strict=True
        ):
            pending.append(
                await producer.send(
                    topic, value, key=key, partition=partition, headers=list(pairs) or None
                )
            )
            if delay_s:
                await asyncio.sleep(delay_s)
        sent = await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return [
        Produced(key, value, meta.topic, meta.partition, meta.offset)
        for key, value, meta in zip(keys, values, sent, strict=True)
    ]


@dataclass(frozen=True)
class Record:
    """A message read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


async def _topic_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    # A topic just created (by a test or by a worker) may be missing from a broker's
    # metadata for a moment, or listed without its partitions.
    for _ in range(100):
        found = await topic_partitions(topic, bootstrap_servers=bootstrap)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic!r} does not exist or has no partitions")


async def read_topic(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Record]], bool] = lambda _records: True,
    *,
    timeout_s: float = 60.0,
) -> list[Record]:
    """Read ``topic`` from the beginning until ``done(records)`` or ``timeout_s``.

    Once ``done`` holds, reading goes on to the end offsets of that moment, so that a
    record already written behind the ones ``done`` waited for (a duplicate) is seen too.
    On timeout the records read so far are returned: the caller's assertions say what
    is missing. No consumer group is used, so nothing is committed.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[Record] = []

    async def poll() -> None:
        consumer.resume(*assigned)
        batches = await consumer.getmany(timeout_ms=_POLL_MS)
        consumer.pause(*assigned)
        for messages in batches.values():
            records.extend(
                Record(m.topic, m.partition, m.offset, m.key, m.value or b"") for m in messages
            )

    try:
        assigned = await _topic_partitions(bootstrap, topic)
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + timeout_s
        while True:
            await poll()
            if done(records) or time.monotonic() > deadline:
                break
            await asyncio.sleep(_PAUSE_S)
        ends = await consumer.end_offsets(assigned)
        settle_deadline = time.monotonic() + 10.0
        while time.monotonic() < settle_deadline:
            positions = {tp: await consumer.position(tp) for tp in assigned}
            if all(positions[tp] >= ends[tp] for tp in assigned):
                break
            await poll()
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = await _topic_partitions(bootstrap, topic)
        ends = await consumer.end_offsets(assigned)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """The offsets ``group_id`` committed on ``topic``, by partition (absent: none yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
