"""The query stage: each source's query fingerprints → its history → query-attack decisions.

The scoring stage publishes the fingerprints of every scored event that names a source,
re-keyed by model and source (:func:`schemas.query_key`), so that each source's queries
reach one worker, in the order they were read. That worker keeps the source's
:class:`detectors.QueryHistory` in a Faust table under the same key: it moves with the
partition on a rebalance and a restarted worker recovers it from the table's changelog,
so an attack that goes on across a restart keeps its history.

When a query is linked to at least ``min_linked`` of the source's held queries
(:mod:`detectors.queries`), the stage publishes a ``query_attack`` detection (an incident
per source) and a source-scoped decision: ``quarantine`` under ``enforce``, ``flag``
under ``observe``, until ``decision_seconds`` later. While a decision is in force no
other is published for the source; its queries are still matched and held.

Replays cost nothing: a record read again after a crash holds the same inputs, which the
history takes as repeats and never counts twice. A stored history that cannot be read
(another version, or bytes written into the changelog by anyone else) is replaced by an
empty one, logged and counted in ``advmon_query_history_resets_total``; a malformed
fingerprints record is skipped and logged.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
from pydantic import ValidationError

from detectors import QueryHistory, QueryObservation, QueryStateError
from detectors.queries import BITMAP_WORDS
from monitor.config import MonitorConfig
from monitor.errors import validation_problem
from monitor.worker.decisions import query_attack_decision, query_attack_detection
from monitor.worker.metrics import Metrics
from monitor.worker.queries import QueryPlan
from monitor.worker.records import OutputRecord, Publish
from schemas import QueryPrints, Scope

__all__ = ["QueryStage", "QueryState"]

logger = logging.getLogger(__name__)

_STATE_MAGIC = b"advmon-query-state 1\n"
_HEADER = struct.Struct("<dd")
"""The decision's end and the newest query's time (epoch seconds), before the history."""
_CACHE_SIZE = 4096
"""Histories kept decoded between batches (their stored bytes are what counts)."""


@dataclass
class QueryState:
    """One source's history for one model and the end of its decision in force."""

    history: QueryHistory
    decided_until: float = 0.0
    """Epoch seconds until which the source's last decision is in force."""

    def dumps(self, max_bytes: int | None = None) -> bytes:
        """The table record (at most ``max_bytes``: the newest queries that fit)."""
        header = _HEADER.pack(self.decided_until, self.history.newest)
        room = None if max_bytes is None else max_bytes - len(_STATE_MAGIC) - _HEADER.size
        return _STATE_MAGIC + header + self.history.dumps(room)


def _header(raw: bytes) -> tuple[float, float] | None:
    """A stored state's decision end and newest query time; ``None`` if it has none."""
    if not raw.startswith(_STATE_MAGIC) or len(raw) < len(_STATE_MAGIC) + _HEADER.size:
        return None
    decided_until, newest = _HEADER.unpack_from(raw, len(_STATE_MAGIC))
    return float(decided_until), float(newest)


@dataclass(frozen=True)
class _Alarm:
    prints: QueryPrints
    row: int
    seen: QueryObservation
    plan: QueryPlan
    expires: datetime


class QueryStage:
    """Match each source's queries against its history and decide on query attacks.

    Parameters
    ----------
    config
        The worker config (topic names).
    plans
        Each watched model's plan, by model id.
    table
        Stored states by :func:`schemas.query_key` (a Faust table in the worker; any
        mapping in tests).
    metrics, publish
        Where the stage reports, and how it sends records (returns once acknowledged).
    owns
        Whether this worker holds a key's partition of the fingerprints topic.
    max_record_bytes
        The producer's largest record (``ADVMON_KAFKA__MAX_REQUEST_BYTES``).
    """

    def __init__(
        self,
        config: MonitorConfig,
        plans: Mapping[str, QueryPlan],
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        publish: Publish,
        owns: Callable[[str], bool] = lambda _key: True,
        *,
        max_record_bytes: int = 1_048_576,
    ) -> None:
        self.config = config
        self.max_record_bytes = max_record_bytes
        """The largest table record (the producer's limit): a history that would outgrow
        half of it keeps its newest queries only."""
        self.plans = dict(plans)
        self.table = table
        self.metrics = metrics
        self.publish = publish
        self.owns = owns
        self._cache: OrderedDict[str, tuple[bytes, QueryState]] = OrderedDict()

    def load(self, key: str, plan: QueryPlan) -> QueryState:
        """The source's stored state, or a fresh one (also when it cannot be read)."""
        raw = self.table.get(key)
        if not raw:
            return QueryState(self._fresh(plan))
        raw = bytes(raw)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == raw:
            self._cache.move_to_end(key)
            return cached[1]
        try:
            header = _header(raw)
            if header is None:
                raise QueryStateError("not a query state")
            decided_until = header[0]
            if not np.isfinite(decided_until):
                raise QueryStateError("impossible decision time")
            history = QueryHistory.loads(
                raw[len(_STATE_MAGIC) + _HEADER.size :],
                plan.history_size,
                plan.max_age_seconds,
                plan.match_bits,
            )
        except QueryStateError as exc:
            logger.warning(
                "model %s: a stored query history cannot be read (%s); the source starts afresh",
                plan.model_id,
                exc,
            )
            self.metrics.query_resets.labels(plan.model_id, "unreadable").inc()
            return QueryState(self._fresh(plan))
        return QueryState(history, float(decided_until))

    @staticmethod
    def _fresh(plan: QueryPlan) -> QueryHistory:
        return QueryHistory(plan.history_size, plan.max_age_seconds, plan.match_bits)

    def _store(self, key: str, state: QueryState) -> None:
        raw = state.dumps(self.max_record_bytes // 2)
        self.table[key] = raw
        self._cache[key] = (raw, state)
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def _records(
        self, raw_records: Sequence[bytes]
    ) -> dict[str, list[tuple[QueryPrints, np.ndarray]]]:
        """Valid records, with their bit maps, by key, in order; malformed ones logged and
        skipped."""
        pending: dict[str, list[tuple[QueryPrints, np.ndarray]]] = {}
        for raw in raw_records:
            try:
                prints = QueryPrints.model_validate_json(raw)
                bitmaps = prints.bitmap_bytes()
            except ValidationError as exc:
                logger.error(
                    "skipping a malformed query fingerprints record: %s", validation_problem(exc)
                )
                continue
            except ValueError as exc:
                logger.error("skipping a malformed query fingerprints record: %s", exc)
                continue
            if prints.model_id not in self.plans:
                logger.warning(
                    "skipping query fingerprints of model %s: query-attack detection is off for it",
                    prints.model_id,
                )
                continue
            maps = np.frombuffer(bitmaps, dtype="<u8").reshape(-1, BITMAP_WORDS)
            pending.setdefault(prints.key, []).append((prints, maps))
        return pending

    async def process(self, raw_records: Sequence[bytes]) -> None:
        """Apply fingerprints records in order; returns once the detections and decisions
        are acknowledged and the new states are written to the table.

        Should anything fail first (the stage stopped while publishing), the histories it
        changed are forgotten with the table left as it was, so that the records, read
        again, are applied again to the stored histories.
        """
        pending = self._records(raw_records)
        try:
            await self._apply(pending)
        except BaseException:
            for key in pending:
                self._cache.pop(key, None)
            raise

    async def _apply(self, pending: Mapping[str, list[tuple[QueryPrints, np.ndarray]]]) -> None:
        now = datetime.now(UTC)
        states: dict[str, QueryState] = {}
        alarms: list[_Alarm] = []
        outcomes: dict[tuple[str, str], int] = {}
        for key, taken in pending.items():
            plan = self.plans[taken[0][0].model_id]
            state = self.load(key, plan)
            states[key] = state
            for prints, bitmaps in taken:
                for row in range(len(prints.event_ids)):
                    seen = state.history.observe(
                        bitmaps[row],
                        prints.windows[row],
                        prints.digests[row],
                        prints.times[row],
                        prints.event_ids[row],
                        prints.request_digests[row],
                    )
                    counted = (plan.model_id, str(seen.outcome))
                    outcomes[counted] = outcomes.get(counted, 0) + 1
                    if seen.linked >= plan.min_linked and state.decided_until <= now.timestamp():
                        expires = now + timedelta(seconds=plan.decision_seconds)
                        alarms.append(_Alarm(prints, row, seen, plan, expires))
                        state.decided_until = expires.timestamp()
            # A take can hold thousands of queries: the scoring stage and the broker's
            # heartbeats get the event loop between sources.
            await asyncio.sleep(0)
        records: list[OutputRecord] = []
        topics = self.config.topics
        for alarm in alarms:
            decision = query_attack_decision(
                alarm.prints, alarm.row, alarm.seen, alarm.plan.min_linked, alarm.expires, now
            )
            detection = query_attack_detection(
                alarm.prints, alarm.row, alarm.seen, alarm.plan.min_linked, alarm.expires, now
            )
            records.append(OutputRecord.of(topics.decisions, decision.key, decision))
            records.append(OutputRecord.of(topics.detections, detection.model_id, detection))
        if records:
            await self.publish(records)
        for key, state in states.items():
            self._store(key, state)
        for (model_id, outcome), count in outcomes.items():
            self.metrics.query_fingerprints.labels(model_id, outcome).inc(count)
        for alarm in alarms:
            self.metrics.query_attacks.labels(alarm.plan.model_id).inc()
            self.metrics.decisions.labels(
                "quarantine" if alarm.prints.enforce else "flag", Scope.SOURCE.value
            ).inc()
            logger.warning(
                "model %s: source %s: query attack: query %s linked to %d of its held "
                "queries (threshold %d); %s until %s",
                alarm.plan.model_id,
                alarm.prints.source,
                alarm.prints.event_ids[alarm.row],
                alarm.seen.linked,
                alarm.plan.min_linked,
                "quarantined" if alarm.prints.enforce else "flagged",
                alarm.expires.isoformat(),
            )

    def expire(self, now: float | None = None) -> int:
        """Forget the sources of this worker whose newest query is older than their
        model's ``max_age_seconds`` and whose decision has lapsed; return how many.

        Also sets the gauges of sources held and decisions in force.
        """
        now = time.time() if now is None else now
        ages = {plan.model_id: plan.max_age_seconds for plan in self.plans.values()}
        longest = max(ages.values(), default=0.0)
        held = in_force = 0
        stale: list[str] = []
        for key, raw in list(self.table.items()):
            if not self.owns(key):
                continue
            header = _header(bytes(raw))
            if header is None:
                stale.append(key)
                continue
            decided_until, newest = header
            if decided_until <= now and newest < now - _max_age(key, ages, longest):
                stale.append(key)
                continue
            held += 1
            in_force += decided_until > now
        for key in stale:
            del self.table[key]
            self._cache.pop(key, None)
        self.metrics.query_sources_held.set(held)
        self.metrics.query_decisions_in_force.set(in_force)
        return len(stale)


def _max_age(key: str, ages: Mapping[str, float], longest: float) -> float:
    """The max age of the model a stored key belongs to (the longest when unknown)."""
    try:
        model_id = orjson.loads(key)[0]
    except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
        return longest
    return ages.get(model_id, longest) if isinstance(model_id, str) else longest
