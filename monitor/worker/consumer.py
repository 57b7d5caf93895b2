"""Faust's Kafka consumer, made to never commit past a message no agent has processed.

Faust commits, per partition, the longest run of acknowledged offsets that follows the
last commit (or, before the first commit, wherever the acknowledged offsets begin).
Two faults of faust-streaming 0.15 let a message slip through, both seen on Apache Kafka
when a worker with a static membership id is restarted, or takes over the partitions of
one that died:

- its recovery resumes fetching while it restores the tables' changelogs, before it
  seeks the stream partitions to their committed offsets; a message fetched in that race
  is marked read but never reaches an agent, so it is never acknowledged;
- its commit check lets one missing offset right after the committed one pass
  (``min(acked) - committed > 1``), so a single such message is committed over: lost.

:class:`GaplessConsumer` commits a partition only while its acknowledged offsets start
exactly at the committed offset (or after offsets Faust recorded as absent from the log,
such as compacted ones); before the group's first commit of a partition, at the offset
reading began. A partition whose head message is missing for
:data:`HOLE_GRACE_S` while later ones are acknowledged, and that no agent holds, is sought
back to its committed offset: the missing message is read again, the ones after it are
decided twice (at-least-once), and nothing is lost. The same is done for a partition that
has been fetched past its committed offset while, for :data:`HOLE_GRACE_S`, none of its
messages is acknowledged, held by an agent or waiting in an agent's queue: every message
read since the commit went missing.

An agent holds the messages it is working on back with :meth:`GaplessConsumer.withhold`
and lets them go with :meth:`GaplessConsumer.release` once it has finished them: when
the worker stops, Faust closes a ``take_events`` batch and acknowledges its messages
whether or not the agent finished them, and the consumer would commit them on its way
down. A withheld message is never acknowledged, so the commit stops before it and the
next worker reads it again.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message
from mode import Service

__all__ = ["HOLE_GRACE_S", "GaplessConsumer", "covered"]

#: How long a partition's next message may stay missing while later ones are acknowledged
#: before it is read again. Messages of one partition reach the agents in order, so a later
#: one acknowledged means the missing one was dropped, not delayed; the grace only covers
#: a batch still being acknowledged.
HOLE_GRACE_S = 5.0


def covered(tree: Any, low: int, high: int) -> bool:
    """Whether every offset in ``[low, high)`` lies in one of ``tree``'s intervals.

    >>> from intervaltree import IntervalTree
    >>> covered(IntervalTree.from_tuples([(3, 5), (5, 8)]), 3, 8)
    True
    >>> covered(IntervalTree.from_tuples([(3, 5), (6, 8)]), 3, 8)
    False
    """
    needed = low
    for interval in sorted(tree.overlap(low, high), key=lambda iv: iv.begin):
        if interval.begin > needed:
            return False
        needed = max(needed, interval.end)
        if needed >= high:
            return True
    return needed >= high


class GaplessConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer that never commits over a missing message."""

    #: Called with (topic, partition) each time a missing message is read again.
    on_hole_repaired: Callable[[str, int], None] | None = None

    #: Set by the app: whether an agent still has messages of a topic queued.
    queued: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._holes: dict[TP, tuple[int, float]] = {}
        self._stalls: dict[TP, tuple[int, float]] = {}
        self._starts: dict[TP, int] = {}
        self._withheld: weakref.WeakSet[Message] = weakref.WeakSet()

    def withhold(self, messages: Iterable[Message]) -> None:
        """Refuse to acknowledge ``messages`` until :meth:`release`: an agent is on them."""
        self._withheld.update(messages)

    def release(self, messages: Iterable[Message]) -> None:
        """Let ``messages`` be acknowledged again: their agent has finished them."""
        for message in messages:
            self._withheld.discard(message)

    def ack(self, message: Message) -> bool:
        if message in self._withheld:
            return False
        acked: bool = super().ack(message)
        return acked

    def _expected(self, tp: TP) -> int | None:
        """The offset the next commit of ``tp`` must start at, when known.

        The committed offset; before the group's first commit of the partition, where
        reading began (its earliest offset, as ``auto_offset_reset=earliest``), once
        :meth:`repair_holes` has looked it up.
        """
        committed = self._committed_offset.get(tp)
        return committed if committed is not None else self._starts.get(tp)

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        committed = self._expected(tp)
        if acked and committed is not None:
            head = min(acked)
            if head > committed and not covered(self._gap[tp], committed, head):
                # The message at `committed` was never acknowledged.
                self._holes.setdefault(tp, (committed, time.monotonic()))
                return None
        self._holes.pop(tp, None)
        offset: int | None = super()._new_offset(tp)
        return offset

    @Service.timer(1.0)
    async def _repair_holes_every_second(self) -> None:
        await self.repair_holes()

    async def _note_stalls(self, assigned: set[TP], in_flight: set[tuple[TP, int]]) -> None:
        """Note partitions fetched past their commit with nothing of theirs pending."""
        busy = {tp for tp, _offset in in_flight}
        now = time.monotonic()
        unknown = [
            tp
            for tp in assigned
            if self._committed_offset.get(tp) is None
            and tp not in self._starts
            and self.app.topics.acks_enabled_for(tp.topic)
        ]
        if unknown:
            self._starts.update(await self.earliest_offsets(*unknown))
        for tp in list(self._starts):
            if tp not in assigned:
                del self._starts[tp]
        for tp in assigned:
            committed = self._expected(tp)
            if (
                committed is None
                or tp in busy
                or self._acked.get(tp)
                or not self.app.topics.acks_enabled_for(tp.topic)
                or self.queued is None
                or self.queued(tp.topic)
            ):
                self._stalls.pop(tp, None)
                continue
            try:
                position = await self.position(tp)
            except IllegalStateError:
                # Revoked since the assignment was read (a rebalance is under way).
                self._stalls.pop(tp, None)
                continue
            if position is None or position <= committed:
                self._stalls.pop(tp, None)
                continue
            noted = self._stalls.get(tp)
            if noted is None or noted[0] != committed:
                self._stalls[tp] = (committed, now)
            elif now - noted[1] >= HOLE_GRACE_S:
                self._stalls.pop(tp, None)
                self._holes[tp] = (committed, noted[1])

    async def repair_holes(self) -> None:
        """Read each partition again from a message missing for longer than the grace."""
        now = time.monotonic()
        assigned = set(self.assignment())
        in_flight = {(message.tp, message.offset) for message in self._unacked_messages}
        await self._note_stalls(assigned, in_flight)
        if not self._holes:
            return
        for tp, (offset, since) in list(self._holes.items()):
            if tp not in assigned:
                self._holes.pop(tp, None)
                continue
            if now - since < HOLE_GRACE_S or (tp, offset) in in_flight:
                continue
            if self._expected(tp) != offset:
                self._holes.pop(tp, None)
                continue
            self.log.warning(
                "%s[%d]: the message at offset %d was read but never processed; reading "
                "the partition again from there (later messages are decided twice)",
                tp.topic,
                tp.partition,
                offset,
            )
            self._holes.pop(tp, None)
            try:
                await self.seek(tp, offset)
            except IllegalStateError:
                continue  # revoked meanwhile: its next owner reads from the commit
            if self.on_hole_repaired is not None:
                self.on_hole_repaired(tp.topic, tp.partition)
