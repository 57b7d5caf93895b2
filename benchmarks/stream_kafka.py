"""The Kafka side of :mod:`benchmarks.worker_throughput`: topics, producing the streams,
the two baselines (bare consumer, bare pipeline), reading decisions, CPU accounting."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import resource
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.stream_results import IDLE_SLEEP_S, POLL_MS, CpuSeconds
from benchmarks.stream_traffic import Stream, with_ts
from detectors import Detector

__all__ = [
    "STALL_TIMEOUT_S",
    "CpuMeter",
    "DecisionWatcher",
    "Seen",
    "bare_consume",
    "bare_pipeline",
    "create_topics",
    "decode_input",
    "fill_topic",
    "offer_load",
    "rfc3339",
    "stamped",
]

#: A consumer that has read nothing for this long while it still expects records fails.
STALL_TIMEOUT_S = 60.0
#: How long a new topic may take to get its partition leaders.
LEADER_TIMEOUT_S = 10.0


# -- process accounting ----------------------------------------------------------------


def _process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a process so far; 0 when it cannot be read."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """Busy CPU seconds of all CPUs since boot (``/proc/stat``: all but idle and iowait)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    ticks = [int(f) for f in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Wall time and CPU seconds of the workers (summed), the broker and this process."""

    def __init__(self, workers: Sequence[int], broker: int | None) -> None:
        self.workers, self.broker = list(workers), broker
        self._start = self._now()

    def _now(self) -> tuple[float, float, float, float, float]:
        return (
            time.perf_counter(),
            sum(_process_cpu(pid) for pid in self.workers),
            _process_cpu(self.broker) if self.broker else 0.0,
            _process_cpu(None),
            _machine_busy(),
        )

    def restart(self) -> None:
        self._start = self._now()

    def read(self) -> CpuSeconds:
        now = self._now()
        wall, worker, broker, bench, machine = (
            b - a for a, b in zip(self._start, now, strict=True)
        )
        return CpuSeconds(wall, worker, broker, bench, machine)


# -- topics and traffic ----------------------------------------------------------------


def rfc3339(epoch_seconds: float) -> str:
    """``2026-01-02T03:04:05.678901+00:00``."""
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat()


def stamped(event: bytes, epoch_seconds: float) -> bytes:
    """The event with ``ts`` = ``epoch_seconds``."""
    return with_ts(event, rfc3339(epoch_seconds))


async def create_topics(bootstrap: str, partitions: Mapping[str, int]) -> None:
    """Create topics with the given partition counts (replication factor 1) and wait, up
    to :data:`LEADER_TIMEOUT_S`, until the metadata gives every partition a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in partitions.items()])
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if _led(await admin.describe_topics(list(partitions)), partitions):
                    break
            except Exception:  # a broker without this metadata: the clients retry anyway
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


def _led(topics: list[Any], partitions: Mapping[str, int]) -> bool:
    """Whether metadata (``describe_topics``) lists every partition with a leader."""
    led = {
        t.get("topic"): sum(1 for p in t.get("partitions", []) if p.get("leader", -1) >= 0)
        for t in topics
        if isinstance(t, dict) and t.get("error_code", 0) == 0
    }
    return all(led.get(name, 0) >= n for name, n in partitions.items())


async def fill_topic(
    bootstrap: str, topic: str, stream: Stream, prefix: str, events: int, partitions: int = 1
) -> tuple[float, float]:
    """Produce events ``0 … events - 1`` of ``stream`` (``ts`` = now), event ``i`` to
    partition ``i % partitions``; return (seconds, mean value bytes).

    The values are built before the clock starts; sending yields to the event loop every
    100 events, so that a consumer in this process keeps reading meanwhile.
    """
    bodies = [stream.event(prefix, i) for i in range(events)]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    size = 0
    started = time.perf_counter()
    try:
        for i, body in enumerate(bodies):
            value = stamped(body, time.time())
            size += len(value)
            await producer.send(topic, value, partition=i % partitions)
            if i % 100 == 99:
                await asyncio.sleep(0)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started, size / max(1, events)


def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )


async def bare_consume(bootstrap: str, topic: str, events: int) -> tuple[float, float]:
    """Read and ``orjson.loads`` the whole single-partition topic once; return (from the
    first fetch, from the first record) seconds to the N-th record."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        count = 0
        started = time.perf_counter()
        first = 0.0
        while count < events:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches and time.perf_counter() - started > STALL_TIMEOUT_S:
                raise RuntimeError(f"bare consumer: only {count} of {events} records arrived")
            for records in batches.values():
                if not first:
                    first = time.perf_counter()
                for record in records:
                    orjson.loads(record.value or b"")
                count += len(records)
        ended = time.perf_counter()
    finally:
        # Stop at once: an idle consumer busy-polls this broker.
        await consumer.stop()
    return ended - started, ended - first


def decode_input(value: bytes) -> np.ndarray:
    """An event's input as float32: nested lists through ``np.asarray``, a tensor payload
    through base64 → ``np.frombuffer`` → ``astype(float32)``. No validation."""
    event = orjson.loads(value)
    data = event["input"]
    if isinstance(data, dict):
        raw = base64.b64decode(data["data_b64"])
        wire = np.dtype(data["dtype"]).newbyteorder("<")
        return np.frombuffer(raw, dtype=wire).astype(np.float32).reshape(data["shape"])
    return np.asarray(data, dtype=np.float32)


async def bare_pipeline(
    bootstrap: str, topic: str, events: int, detector: Detector, max_events: int
) -> tuple[float, int]:
    """Read the whole single-partition topic once, decoding each value into a float32
    batch array and scoring every ``max_events`` with ``detector`` (and the rest at the
    end), in the event loop, producing nothing; return (seconds from the first fetch to
    the N-th event scored, events flagged)."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    batch: np.ndarray | None = None
    filled = count = flagged = 0
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        started = time.perf_counter()
        while count < events:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches and time.perf_counter() - started > STALL_TIMEOUT_S:
                raise RuntimeError(f"bare pipeline: only {count} of {events} records arrived")
            for records in batches.values():
                for record in records:
                    x = decode_input(record.value or b"")
                    if batch is None:
                        batch = np.empty((max_events, *x.shape), dtype=np.float32)
                    batch[filled] = x
                    filled += 1
                    count += 1
                    if filled == max_events:
                        flagged += int(detector.score(batch).flagged.sum())
                        filled = 0
        if filled and batch is not None:
            flagged += int(detector.score(batch[:filled]).flagged.sum())
        ended = time.perf_counter()
    finally:
        await consumer.stop()
    return ended - started, flagged


# -- decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    received: float
    """time.time() when this process got the record."""
    created: float
    """The record's timestamp (CreateTime, set by the worker's producer), epoch seconds."""


def prefix_of(event_id: str) -> str:
    """``fill-123`` → ``fill-``: the part of an event id that names its phase."""
    return event_id.rsplit("-", 1)[0] + "-"


class DecisionWatcher:
    """Reads a single-partition decisions topic from the beginning in a task of its own,
    from :meth:`start` to :meth:`stop`, noting when each request decision arrived and its
    action.

    It polls for at most :data:`POLL_MS` and, after an empty poll, pauses its partition
    and sleeps :data:`IDLE_SLEEP_S`: the local broker answers empty fetches at once, and
    an unpaused idle consumer would spin a core that the worker needs.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.partition = TopicPartition(topic, 0)
        self.consumer = _consumer(bootstrap)
        self.seen: dict[str, Seen] = {}
        self.duplicates = 0
        self.source_decisions = 0
        self.actions: Counter[tuple[str, str]] = Counter()
        """Request decisions by (event id prefix, action)."""
        self._counts: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign([self.partition])
        await self.consumer.seek_to_beginning(self.partition)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()

    async def _poll(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=POLL_MS)
            now = time.time()
            if not batches:
                self.consumer.pause(self.partition)
                await asyncio.sleep(IDLE_SLEEP_S)
                self.consumer.resume(self.partition)
                continue
            for records in batches.values():
                for record in records:
                    self._note(record.value or b"", record.timestamp / 1000, now)

    def count(self, prefix: str) -> int:
        """Request decisions so far of event ids starting with ``prefix``."""
        return self._counts[prefix]

    async def wait_for(
        self,
        prefix: str,
        count: int,
        stall_s: float = STALL_TIMEOUT_S,
        timeout_s: float = math.inf,
    ) -> int:
        """Wait until ``count`` request decisions whose event id starts with ``prefix``
        have arrived, none has for ``stall_s`` or ``timeout_s`` passed; return how many
        did."""
        started = progress = time.monotonic()
        last = self._counts[prefix]
        while self._counts[prefix] < count:
            if self._task is not None and self._task.done():
                self._task.result()  # raises what stopped the polling
                raise RuntimeError("the decisions consumer stopped")
            now = time.monotonic()
            if self._counts[prefix] != last:
                last, progress = self._counts[prefix], now
            elif now - progress > stall_s or now - started > timeout_s:
                break
            await asyncio.sleep(0.005)
        return self._counts[prefix]

    def of(self, prefix: str) -> list[Seen]:
        """When each decision of an event id starting with ``prefix`` arrived."""
        return [s for e, s in self.seen.items() if e.startswith(prefix)]

    def actions_of(self, prefix: str) -> tuple[tuple[str, int], ...]:
        return tuple(sorted((a, n) for (p, a), n in self.actions.items() if p == prefix))

    def _note(self, value: bytes, created: float, now: float) -> None:
        decision = orjson.loads(value)
        if decision.get("scope") != "request":
            self.source_decisions += 1
            return
        event_id = decision["event_id"]
        if event_id in self.seen:
            self.duplicates += 1
            return
        self.seen[event_id] = Seen(now, created)
        prefix = prefix_of(event_id)
        self._counts[prefix] += 1
        self.actions[prefix, str(decision.get("action"))] += 1


async def offer_load(
    bootstrap: str, topic: str, stream: Stream, prefix: str, rate: float, seconds: float
) -> dict[str, float]:
    """Send events at ``rate``/s for ``seconds``, one by one, each with its send time in
    ``ts``; return the send time (epoch seconds) of each event id."""
    total = max(1, round(rate * seconds))
    bodies = [stream.event(prefix, i) for i in range(total)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    try:
        started = time.monotonic()
        i = 0
        while i < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while i < due:
                now = time.time()
                await producer.send(topic, stamped(bodies[i], now))
                sent[f"{prefix}{i}"] = now
                i += 1
            await asyncio.sleep(max(0.0005, started + i / rate - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()
    return sent
