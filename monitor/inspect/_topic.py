"""Reading a topic's records as a plain consumer: no group, no commits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from monitor.errors import InspectError
from monitor.inspect._reports import KafkaRecord
from monitor.kafka.metadata import topic_partitions
from monitor.settings import KafkaSettings

__all__ = ["TopicRead", "read_records"]

_POLL_MS = 200
_EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True)
class TopicRead:
    """The records read from a topic, in (partition, offset) order."""

    records: list[KafkaRecord]
    partitions: list[int]
    """The partitions read."""
    complete: bool
    """False when the timeout passed before every record asked for arrived."""


def read_records(
    kafka: KafkaSettings,
    topic: str,
    count: int,
    *,
    latest: bool = True,
    partition: int | None = None,
    timeout_s: float = 10.0,
) -> TopicRead:
    """Read up to ``count`` records of ``topic`` with a plain consumer: no group, no commits.

    ``latest``: the last ``count`` records (by Kafka timestamp) among the last ``count``
    of each partition; otherwise the first. Raises :class:`InspectError` when the topic or
    partition does not exist or the broker fails.
    """
    try:
        return asyncio.run(_read(kafka, topic, count, latest, partition, timeout_s))
    except (KafkaError, OSError, TimeoutError) as exc:
        raise InspectError(
            f"reading topic {topic!r} from the Kafka cluster at {kafka.bootstrap} failed: "
            f"{exc!r}; check ADVMON_KAFKA__BOOTSTRAP and the ADVMON_KAFKA__ security settings"
        ) from None


async def _read(
    kafka: KafkaSettings,
    topic: str,
    count: int,
    latest: bool,
    partition: int | None,
    timeout_s: float,
) -> TopicRead:
    consumer = AIOKafkaConsumer(
        **kafka.client_options(),
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000),
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        known = await topic_partitions(
            topic, **kafka.client_options(), request_timeout_ms=int(timeout_s * 1000)
        )
        if known is None:
            raise InspectError(
                f"topic {topic!r} does not exist on the Kafka cluster at {kafka.bootstrap}"
            )
        found = sorted(known)
        if partition is not None:
            if partition not in found:
                raise InspectError(
                    f"topic {topic!r} has no partition {partition} (its partitions: "
                    f"{', '.join(map(str, found))})"
                )
            found = [partition]
        assigned = [TopicPartition(topic, p) for p in found]
        consumer.assign(assigned)
        begins = await consumer.beginning_offsets(assigned)
        ends = await consumer.end_offsets(assigned)
        pending: set[Any] = set()
        stops: dict[Any, int] = {}
        for tp in assigned:
            start = max(begins[tp], ends[tp] - count) if latest else begins[tp]
            stops[tp] = min(ends[tp], start + count)
            consumer.seek(tp, start)
            if stops[tp] > start:
                pending.add(tp)
            else:
                consumer.pause(tp)
        records: list[KafkaRecord] = []
        while pending and loop.time() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=_POLL_MS)
            for tp, messages in batches.items():
                records.extend(
                    _record(message) for message in messages if message.offset < stops[tp]
                )
            for tp in list(pending):
                if await consumer.position(tp) >= stops[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    ordered = sorted(records, key=lambda r: (r.timestamp or _EPOCH, r.partition, r.offset))
    chosen = ordered[-count:] if latest else ordered[:count]
    return TopicRead(
        sorted(chosen, key=lambda r: (r.partition, r.offset)), found, complete=not pending
    )


def _record(message: Any) -> KafkaRecord:
    timestamp = (
        datetime.fromtimestamp(message.timestamp / 1000, UTC)
        if message.timestamp is not None and message.timestamp >= 0
        else None
    )
    return KafkaRecord(
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value or b"",
        headers=tuple((name, bytes(value or b"")) for name, value in message.headers or ()),
        timestamp=timestamp,
    )
