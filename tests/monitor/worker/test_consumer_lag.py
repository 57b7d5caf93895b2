"""advmon_consumer_lag and advmon_undecided_event_age_seconds, from the intake's loop run
against a consumer stand-in (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CollectorRegistry

from monitor.settings import Settings
from monitor.worker.intake import InferenceIntake, _Listener
from monitor.worker.metrics import Metrics
from monitor.worker.records import InputMessage

NOW = 1_700_000_000.0
TP0 = TopicPartition("inference", 0)
TP1 = TopicPartition("inference", 1)
AGE = "advmon_undecided_event_age_seconds"


def _record(tp: TopicPartition, offset: int, timestamp: int | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, timestamp, 0, b"k", b"{}", None, 1, 2, ())


class FakeConsumer:
    """What the intake asks of an AIOKafkaConsumer, in memory."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = set(assigned)
        self.highwaters: dict[TopicPartition, int] = {}
        self.group_offsets: dict[TopicPartition, int] = {}
        self.batches: list[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]] = []
        self.refuse_commits = False

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        assert tp in self.assigned, "Partition is not assigned"
        return self.highwaters.get(tp)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.group_offsets.get(tp)

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.refuse_commits:
            raise CommitFailedError("dropped from the group")
        self.group_offsets.update({tp: o.offset for tp, o in offsets.items()})

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.001)
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.registry = CollectorRegistry()
        self.release = asyncio.Event()
        self.processed: list[Sequence[InputMessage]] = []
        self.consumer = FakeConsumer(assigned)
        self.clock = Clock()

        async def process(messages: Sequence[InputMessage]) -> None:
            self.processed.append(messages)
            await self.release.wait()

        async def ready() -> None:
            return None

        self.intake = InferenceIntake(
            Settings(),
            ["inference"],
            process,
            Metrics.create(self.registry),
            ready=ready,
            max_events=3,
            max_wait_ms=5,
        )
        self.intake.consumer = self.consumer
        self.intake.clock = self.clock

    def lag(self, tp: TopicPartition) -> float | None:
        labels = {"topic": tp.topic, "partition": str(tp.partition)}
        return self.registry.get_sample_value("advmon_consumer_lag", labels)

    def age(self) -> float | None:
        return self.registry.get_sample_value(AGE)


async def _until(condition: Callable[[], object], *, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.fixture
async def harness() -> Harness:
    return Harness({TP0, TP1})


async def test_no_series_before_anything_is_known(harness: Harness) -> None:
    harness.intake.update_lag()
    assert harness.lag(TP0) is None
    assert harness.age() == 0.0


async def test_lag_is_the_high_watermark_minus_the_commits(harness: Harness) -> None:
    consumer = harness.consumer
    consumer.group_offsets = {TP0: 30, TP1: 5}
    await _Listener(harness.intake).on_partitions_assigned({TP0, TP1})
    consumer.highwaters = {TP0: 100}
    harness.intake.update_lag()
    assert harness.lag(TP0) == 70.0
    assert harness.lag(TP1) is None  # nothing fetched yet: no high watermark

    consumer.highwaters[TP1] = 5
    await harness.intake.commit({TP0: 90})
    assert consumer.group_offsets[TP0] == 90
    assert harness.lag(TP0) == 10.0
    assert harness.lag(TP1) == 0.0

    # A refused commit leaves the lag where the group's commits are.
    consumer.refuse_commits = True
    await harness.intake.commit({TP0: 100})
    assert harness.lag(TP0) == 10.0

    # A high watermark behind the commit (a stale fetch response) reads 0, not less.
    consumer.refuse_commits = False
    await harness.intake.commit({TP0: 120})
    assert harness.lag(TP0) == 0.0


async def test_revoked_partitions_lose_their_series(harness: Harness) -> None:
    consumer = harness.consumer
    consumer.group_offsets = {TP0: 1, TP1: 2}
    consumer.highwaters = {TP0: 11, TP1: 12}
    listener = _Listener(harness.intake)
    await listener.on_partitions_assigned({TP0, TP1})
    harness.intake.update_lag()
    assert (harness.lag(TP0), harness.lag(TP1)) == (10.0, 10.0)

    await listener.on_partitions_revoked({TP0, TP1})
    assert (harness.lag(TP0), harness.lag(TP1)) == (None, None)
    consumer.assigned = {TP1}
    await listener.on_partitions_assigned({TP1})
    harness.intake.update_lag()
    assert harness.lag(TP0) is None
    assert harness.lag(TP1) == 10.0

    # A partition that went without the listener (the consumer stopped) goes too.
    consumer.assigned = set()
    harness.intake.update_lag()
    assert harness.lag(TP1) is None


async def test_the_loop_reports_lag_and_the_age_of_what_is_in_hand(harness: Harness) -> None:
    consumer, clock = harness.consumer, harness.clock
    sent_ms = int((NOW - 30) * 1000)
    consumer.highwaters = {TP0: 50}
    consumer.batches.append({TP0: [_record(TP0, o, sent_ms + o) for o in (10, 11, 12)]})
    loop = asyncio.create_task(harness.intake.run())
    try:
        await _until(lambda: harness.processed)
        # Never committed: the group resumes from the first record taken.
        harness.intake.update_lag()
        assert harness.lag(TP0) == 40.0
        assert harness.age() == pytest.approx(30 - 0.010)
        # Read at scrape time: it grows while the batch is stuck.
        clock.now += 45
        assert harness.age() == pytest.approx(75 - 0.010)

        harness.release.set()
        await _until(lambda: consumer.group_offsets.get(TP0) == 13)
        await _until(lambda: harness.lag(TP0) == 37.0)
        assert harness.age() == 0.0
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


@pytest.mark.parametrize(
    ("timestamp", "age_at_fetch"),
    [
        (None, 0.0),  # no timestamp: as old as its fetch
        (-1, 0.0),
        (0, 0.0),  # the epoch: not a real time
        (int((NOW + 3600) * 1000), 0.0),  # an hour in the future
    ],
)
async def test_hostile_timestamps_count_from_the_fetch(
    harness: Harness, timestamp: int | None, age_at_fetch: float
) -> None:
    consumer, clock = harness.consumer, harness.clock
    consumer.batches.append({TP1: [_record(TP1, 0, timestamp)]})
    loop = asyncio.create_task(harness.intake.run())
    try:
        await _until(lambda: harness.processed)
        assert harness.age() == age_at_fetch
        clock.now += 20
        assert harness.age() == 20.0
        clock.now -= 3600  # the wall clock stepped back
        assert harness.age() == 0.0
    finally:
        harness.release.set()
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
