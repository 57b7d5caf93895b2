"""The worker's consumer never commits over a message that no agent processed."""

from __future__ import annotations

import time

import pytest
from aiokafka.errors import IllegalStateError
from faust.types import TP, Message

from monitor.worker.app import _FaustApp
from monitor.worker.consumer import HOLE_GRACE_S, GaplessConsumer

TOPIC = "inference"
PARTITION = TP(TOPIC, 0)


@pytest.fixture
def consumer() -> GaplessConsumer:
    app = _FaustApp("consumer-test", broker="kafka://127.0.0.1:9", autodiscover=False)
    built = app.consumer
    assert isinstance(built, GaplessConsumer)
    return built


def _acknowledge(consumer: GaplessConsumer, committed: int | None, offsets: list[int]) -> None:
    consumer._committed_offset[PARTITION] = committed
    consumer._acked[PARTITION] = list(offsets)
    consumer._acked_index[PARTITION] = set(offsets)


def test_a_run_of_acknowledged_offsets_from_the_committed_one_is_committed(
    consumer: GaplessConsumer,
) -> None:
    _acknowledge(consumer, 10, [10, 11, 12, 14])
    assert consumer._new_offset(PARTITION) == 13


def test_a_single_missing_message_after_the_committed_offset_is_not_committed_over(
    consumer: GaplessConsumer,
) -> None:
    # Faust alone would commit 15 here: its check lets one missing offset pass.
    _acknowledge(consumer, 10, [11, 12, 13, 14])
    assert consumer._new_offset(PARTITION) is None
    assert consumer._holes[PARTITION][0] == 10


def test_offsets_faust_recorded_as_absent_do_not_hold_the_commit(
    consumer: GaplessConsumer,
) -> None:
    _acknowledge(consumer, 10, [12, 13])
    consumer._gap[PARTITION].addi(10, 12)
    assert consumer._new_offset(PARTITION) == 14


async def test_a_hole_older_than_the_grace_is_read_again_from_the_committed_offset(
    consumer: GaplessConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sought: list[tuple[TP, int]] = []
    repaired: list[tuple[str, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "assignment", lambda: {PARTITION})
    consumer.on_hole_repaired = lambda topic, partition: repaired.append((topic, partition))
    _acknowledge(consumer, 10, [11, 12])
    assert consumer._new_offset(PARTITION) is None

    await consumer.repair_holes()
    assert sought == []  # still within the grace

    consumer._holes[PARTITION] = (10, time.monotonic() - HOLE_GRACE_S - 1)
    await consumer.repair_holes()
    assert sought == [(PARTITION, 10)]
    assert repaired == [(TOPIC, 0)]
    assert consumer._holes == {}


async def test_a_hole_on_a_partition_given_away_is_forgotten(
    consumer: GaplessConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "assignment", set)
    consumer._holes[PARTITION] = (10, time.monotonic() - HOLE_GRACE_S - 1)
    await consumer.repair_holes()
    assert sought == []
    assert consumer._holes == {}


def test_the_repair_runs_as_one_of_the_consumers_timers(consumer: GaplessConsumer) -> None:
    own = f"{GaplessConsumer.__module__}.{GaplessConsumer.__qualname__}"
    tasks = type(consumer)._tasks or {}
    assert "_repair_holes_every_second" in tasks[own]


async def _stall_setup(
    consumer: GaplessConsumer,
    monkeypatch: pytest.MonkeyPatch,
    *,
    position: int,
    queued: bool = False,
) -> list[tuple[TP, int]]:
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    async def at(tp: TP) -> int:
        return position

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "position", at)
    monkeypatch.setattr(consumer, "assignment", lambda: {PARTITION})
    monkeypatch.setattr(consumer.app.topics, "acks_enabled_for", lambda topic: topic == TOPIC)
    consumer.queued = lambda topic: queued
    consumer._committed_offset[PARTITION] = 35
    return sought


def _age_notes(consumer: GaplessConsumer) -> None:
    for notes in (consumer._stalls, consumer._holes):
        for tp, (offset, _since) in list(notes.items()):
            notes[tp] = (offset, time.monotonic() - HOLE_GRACE_S - 1)


async def test_a_partition_read_past_its_commit_with_nothing_pending_is_read_again(
    consumer: GaplessConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sought = await _stall_setup(consumer, monkeypatch, position=50)
    await consumer.repair_holes()
    _age_notes(consumer)
    await consumer.repair_holes()  # the stall has lasted the grace: it becomes a hole
    _age_notes(consumer)
    await consumer.repair_holes()
    assert sought == [(PARTITION, 35)]


@pytest.mark.parametrize(
    ("position", "queued"),
    [(35, False), (50, True)],
    ids=["caught-up", "messages-queued-for-a-busy-agent"],
)
async def test_an_idle_or_busy_partition_is_left_alone(
    consumer: GaplessConsumer, monkeypatch: pytest.MonkeyPatch, position: int, queued: bool
) -> None:
    sought = await _stall_setup(consumer, monkeypatch, position=position, queued=queued)
    for _ in range(3):
        await consumer.repair_holes()
        _age_notes(consumer)
    assert sought == []
    assert consumer._stalls == {}


async def test_a_partition_never_committed_is_read_again_from_its_earliest_offset(
    consumer: GaplessConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker died before the group's first commit of the partition; its successor
    # fetched from the earliest offset, and those messages went missing.
    sought = await _stall_setup(consumer, monkeypatch, position=32)
    consumer._committed_offset[PARTITION] = None

    async def earliest(*partitions: TP) -> dict[TP, int]:
        return dict.fromkeys(partitions, 0)

    monkeypatch.setattr(consumer, "earliest_offsets", earliest)
    for _ in range(3):
        await consumer.repair_holes()
        _age_notes(consumer)
    assert sought == [(PARTITION, 0)]


def test_before_the_first_commit_a_missing_first_message_is_not_committed_over(
    consumer: GaplessConsumer,
) -> None:
    consumer._starts[PARTITION] = 0
    _acknowledge(consumer, None, [1, 2, 3])
    assert consumer._new_offset(PARTITION) is None
    _acknowledge(consumer, None, [0, 1, 2])
    assert consumer._new_offset(PARTITION) == 3


def _message(offset: int) -> Message:
    return Message(TOPIC, 0, offset, time.time(), 0, [], b"k", b"v", None)


def test_messages_withheld_by_a_stopped_agent_are_never_acknowledged_or_committed(
    consumer: GaplessConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer.app.topics, "acks_enabled_for", lambda _topic: True)
    consumer._committed_offset[PARTITION] = 10
    done, stopped = [_message(10), _message(11)], [_message(12), _message(13)]
    consumer.withhold(done)
    consumer.release(done)  # its agent finished the first batch
    consumer.withhold(stopped)  # and was stopped in the middle of the second
    # Faust acknowledges the whole batch on the way out of take_events.
    for message in [*done, *stopped]:
        consumer.ack(message)
    assert [m.acked for m in stopped] == [False, False]
    assert consumer._acked[PARTITION] == [10, 11]
    assert consumer._new_offset(PARTITION) == 12


async def test_a_partition_revoked_while_the_repair_looks_at_it_is_skipped(
    consumer: GaplessConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance between reading the assignment and asking a position: aiokafka
    refuses the position of a partition no longer assigned, which must not crash the
    consumer (it did, stopping the worker, while a member rejoined its group)."""
    sought = await _stall_setup(consumer, monkeypatch, position=50)

    async def revoked(tp: TP) -> int:
        raise IllegalStateError(f"Partition {tp} is not assigned")

    monkeypatch.setattr(consumer, "position", revoked)
    for _ in range(3):
        await consumer.repair_holes()
        _age_notes(consumer)
    assert sought == []
    assert consumer._stalls == {}
