"""The client serving uses to follow advmon's decisions: a local cache, answered without I/O.

:class:`DecisionClient` reads the decisions topic in the background with its own
consumer (no consumer group: every serving replica needs every decision), keeps the
decisions that matter in memory, and answers serving's questions synchronously:

- :meth:`~DecisionClient.is_quarantined`: is a source under a quarantine in force?
- :meth:`~DecisionClient.decision_for`: the latest decision about one request.

advmon is not in the serving path: a decision arrives after its request was served, and
is published at least once. See ``docs/serving-client.md``.

Importing this module does not import Faust; serving needs only aiokafka and pydantic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from ssl import SSLContext
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, UnsupportedVersionError
from aiokafka.helpers import create_ssl_context
from pydantic import ValidationError

from monitor.errors import DecisionClientError, validation_problem
from monitor.kafka.metadata import topic_partitions
from monitor.retry import retrying
from schemas import Action, Decision, Scope

if TYPE_CHECKING:
    from monitor.settings import Settings

__all__ = [
    "DEFAULT_DECISIONS_TOPIC",
    "DEFAULT_LOOKBACK",
    "DecisionClient",
    "DecisionClientError",
    "SecurityProtocol",
    "StartFrom",
]

logger = logging.getLogger(__name__)

DEFAULT_DECISIONS_TOPIC = "advmon-decisions"
"""The decisions topic of advmon's default worker config."""

DEFAULT_LOOKBACK = timedelta(hours=1)
"""How far back a client starts reading: four times the default quarantine TTL (900 s)."""

StartFrom = Literal["lookback", "earliest", "latest"]
"""Where a new client starts reading: ``lookback`` (decisions published within
``lookback`` of start), ``earliest`` (everything the topic still holds) or ``latest``
(only decisions published after start)."""

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
"""Kafka security protocols, as aiokafka names them."""

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# Records handed over per poll: bounds how long one poll blocks the event loop while
# catching up (decoding a decision takes microseconds).
_MAX_RECORDS_PER_POLL = 500
# How long one poll waits for records. Stopping the client cancels a waiting poll, so this
# only bounds how often the loop below wakes up when the topic is idle.
_POLL_TIMEOUT_MS = 1000
# How often expired source decisions are dropped from the cache.
_SWEEP_INTERVAL_S = 60.0
# Back-off after a failed poll: doubles up to the maximum, reset by a good poll.
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30.0


_SEVERITY = {Action.ALLOW: 0, Action.FLAG: 1, Action.QUARANTINE: 2}


class DecisionClient:
    """Follow advmon's decisions topic and answer serving's questions from memory.

    Parameters
    ----------
    bootstrap
        Comma-separated ``host:port`` list of Kafka brokers.
    topic
        The decisions topic (``topics.decisions`` of the worker config).
    start_from
        Where to start reading (see :data:`StartFrom`). ``lookback`` finds the first
        offset of each partition with a timestamp at or after ``now - lookback``; a
        broker without timestamp look-ups (Kafka < 0.10.1) is read from the earliest
        offset instead.
    lookback
        How far back ``start_from="lookback"`` starts. Make it at least the worker's
        ``quarantine.ttl_seconds``, so that every quarantine still in force is read.
    max_request_decisions
        How many request-scoped decisions are kept; the least recently used (written or
        read) is dropped first.
    security_protocol, sasl_mechanism, sasl_plain_username, sasl_plain_password, ssl_context
        Passed to aiokafka. SASL needs a username and password (SCRAM too). SSL without
        an ``ssl_context`` uses the system's default CA bundle.
    client_id
        Kafka client id, shown in broker logs and quotas.
    metadata_max_age_ms
        How often topic metadata is refreshed: a topic created, or partitions added,
        after start are followed (from their earliest offset) within this time.

    The cache is updated on the event loop that started the client. The query methods
    never block or await; other threads (a sync handler's thread pool) may call them too.

    Examples
    --------
    >>> async def serve() -> None:  # doctest: +SKIP
    ...     async with DecisionClient("broker:9092", "advmon-decisions") as decisions:
    ...         try:
    ...             await decisions.wait_until_caught_up(timeout=10)
    ...         except TimeoutError:
    ...             logging.warning("serving before all recent decisions were read")
    ...         if decisions.is_quarantined("api-key-42"):
    ...             ...  # reject the request
    ...         decision = decisions.decision_for("req-123")
    ...         if decision is not None and decision.action is Action.QUARANTINE:
    ...             ...  # e.g. hold back the response of a later step
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_DECISIONS_TOPIC,
        *,
        start_from: StartFrom = "lookback",
        lookback: timedelta = DEFAULT_LOOKBACK,
        max_request_decisions: int = 100_000,
        security_protocol: SecurityProtocol = "PLAINTEXT",
        sasl_mechanism: SaslMechanism = "PLAIN",
        sasl_plain_username: str | None = None,
        sasl_plain_password: str | None = None,
        ssl_context: SSLContext | None = None,
        client_id: str = "advmon-decision-client",
        metadata_max_age_ms: int = 60_000,
    ) -> None:
        if not bootstrap.strip():
            raise ValueError("bootstrap must name at least one broker, e.g. 'kafka:9092'")
        if not topic:
            raise ValueError("topic must not be empty")
        if start_from not in ("lookback", "earliest", "latest"):
            raise ValueError(
                f"start_from must be 'lookback', 'earliest' or 'latest', got {start_from!r}"
            )
        if lookback < timedelta(0):
            raise ValueError(f"lookback must not be negative, got {lookback}")
        if max_request_decisions < 1:
            raise ValueError(
                f"max_request_decisions must be at least 1, got {max_request_decisions}"
            )
        if security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(
                "security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, "
                f"got {security_protocol!r}"
            )
        if security_protocol.startswith("SASL") and (
            sasl_plain_username is None or sasl_plain_password is None
        ):
            raise ValueError(
                f"security_protocol {security_protocol} needs sasl_plain_username and "
                "sasl_plain_password"
            )
        if metadata_max_age_ms < 1:
            raise ValueError(f"metadata_max_age_ms must be positive, got {metadata_max_age_ms}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.start_from = start_from
        self.lookback = lookback
        self.max_request_decisions = max_request_decisions
        self.security_protocol = security_protocol
        self.sasl_mechanism = sasl_mechanism
        self.sasl_plain_username = sasl_plain_username
        self.sasl_plain_password = sasl_plain_password
        self.ssl_context = ssl_context
        self.client_id = client_id
        self.metadata_max_age_ms = metadata_max_age_ms
        self._reset()

    def _reset(self) -> None:
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._sources: dict[str, Decision] = {}
        self._requests: OrderedDict[str, Decision] = OrderedDict()
        self._assigned: list[TopicPartition] = []
        # End offsets seen at start, and how far each partition has been read.
        self._targets: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._caught_up = asyncio.Event()
        self._ssl_context: SSLContext | None = None
        self._next_lookup = 0.0
        self._decisions_applied = 0
        self._records_skipped = 0
        self._next_sweep = 0.0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        topic: str = DEFAULT_DECISIONS_TOPIC,
        *,
        start_from: StartFrom = "lookback",
        lookback: timedelta = DEFAULT_LOOKBACK,
        max_request_decisions: int = 100_000,
        client_id: str = "advmon-decision-client",
    ) -> DecisionClient:
        """A client for the brokers and security settings of advmon's ``settings.kafka``.

        >>> from monitor.settings import KafkaSettings, Settings
        >>> settings = Settings(kafka=KafkaSettings(bootstrap="kafka-1:9092,kafka-2:9092"))
        >>> client = DecisionClient.from_settings(settings)
        >>> client.bootstrap, client.topic, client.security_protocol
        ('kafka-1:9092,kafka-2:9092', 'advmon-decisions', 'PLAINTEXT')
        """
        kafka = settings.kafka
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        return cls(
            kafka.bootstrap,
            topic,
            start_from=start_from,
            lookback=lookback,
            max_request_decisions=max_request_decisions,
            security_protocol=kafka.security_protocol,
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=password,
            ssl_context=kafka.ssl_context(),
            client_id=client_id,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _client_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
            "ssl_context": self._ssl_context,
        }

    async def start(self) -> None:
        """Connect, assign every partition of the topic, seek, and start reading.

        Raises :class:`DecisionClientError` when the brokers cannot be reached or refuse
        the client. A topic that does not exist yet is not an error: the client reads it
        from its earliest offset once it appears (advmon creates it on its first decision).
        """
        if self._started:
            raise RuntimeError("this DecisionClient was already started; make a new one")
        self._started = True
        self._caught_up = asyncio.Event()
        ssl_context = self.ssl_context
        if ssl_context is None and self.security_protocol in ("SSL", "SASL_SSL"):
            ssl_context = create_ssl_context()
        self._ssl_context = ssl_context
        consumer = AIOKafkaConsumer(
            **self._client_options(),
            group_id=None,
            enable_auto_commit=False,
            # Where a position lost to retention resumes: the oldest decision kept.
            auto_offset_reset="earliest",
            metadata_max_age_ms=self.metadata_max_age_ms,
        )
        self._consumer = consumer
        try:
            await consumer.start()
            await self._follow_partitions(initial=True)
        except KafkaError as error:
            await self._close_consumer()
            raise DecisionClientError(
                f"could not read decisions topic {self.topic!r} from {self.bootstrap}: "
                f"{error!r}. Check that the brokers are reachable and that "
                f"security_protocol ({self.security_protocol}) and credentials match them."
            ) from error
        except BaseException:
            await self._close_consumer()
            raise
        self._task = asyncio.create_task(self._read_forever(), name=f"decisions:{self.topic}")

    async def stop(self) -> None:
        """Stop reading and close the consumer; the cache stays readable."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_consumer()

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def wait_until_caught_up(self, timeout: float | None = None) -> None:
        """Return once every partition is read up to the end offset it had at start.

        Raises :class:`TimeoutError` after ``timeout`` seconds (``None``: wait forever),
        saying how many records are still unread.
        """
        if not self._started:
            raise RuntimeError("start the client first: `async with DecisionClient(...)`")
        if self._caught_up.is_set():
            # wait_for(timeout=0) times out even on a set event: it never runs the wait.
            return
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"decisions topic {self.topic!r}: not caught up after {timeout} s, "
                f"{self.records_behind()} records still unread"
            ) from None

    @property
    def caught_up(self) -> bool:
        """Whether every partition was read up to the end offset it had at start."""
        return self._caught_up.is_set()

    def records_behind(self) -> int:
        """Records between the positions read so far and the end offsets seen at start."""
        return sum(
            max(0, target - self._positions.get(tp, 0)) for tp, target in self._targets.items()
        )

    @property
    def decisions_applied(self) -> int:
        """Decisions read and applied to the cache (duplicates and stale ones included)."""
        return self._decisions_applied

    @property
    def records_skipped(self) -> int:
        """Records that were not valid decisions: logged and skipped."""
        return self._records_skipped

    # --- queries (synchronous, no I/O) ------------------------------------------------

    def is_quarantined(self, source: str, *, now: datetime | None = None) -> bool:
        """Whether ``source`` is under a quarantine in force at ``now`` (default: now).

        True when the latest source-scoped decision for ``source`` has action
        ``quarantine`` and expires after ``now`` (or never: ``expires_at`` null). A later
        decision for the source, of any action, replaces an earlier one. Request-scoped
        decisions never quarantine a source.
        """
        decision = self._sources.get(source)
        return decision is not None and _in_force(decision, now or datetime.now(UTC))

    def quarantined_sources(self, *, now: datetime | None = None) -> dict[str, Decision]:
        """Every source under a quarantine in force at ``now``, with its decision."""
        at = now or datetime.now(UTC)
        # list() copies in one step, so a concurrent update cannot break the iteration.
        return {source: d for source, d in list(self._sources.items()) if _in_force(d, at)}

    def decision_for(self, request_id: str) -> Decision | None:
        """The latest request-scoped decision keyed ``request_id``, if still cached.

        The key is the request's ``request_id``, or its ``event_id`` when serving sent no
        request id. ``None`` means no decision was read yet (it may still come: advmon
        decides after the request was served) or it was dropped from the bounded cache.
        """
        decision = self._requests.get(request_id)
        if decision is not None:
            # Another thread's write may have evicted it in between; a miss is harmless.
            with contextlib.suppress(KeyError):
                self._requests.move_to_end(request_id)
        return decision

    # --- reading --------------------------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Add one decision to the cache, as if read from the topic.

        A decision replaces the one held for its key unless it was decided strictly
        earlier, so a duplicate or a replayed older decision changes nothing. Rows of one
        batched request (same ``request_id``, event ids ``id#0``, ``id#1`` …) share a key:
        the most severe of their actions answers for the request.
        """
        self._decisions_applied += 1
        if decision.scope is Scope.SOURCE:
            held = self._sources.get(decision.key)
            if held is None or decision.decided_at >= held.decided_at:
                self._sources[decision.key] = decision
            return
        requests = self._requests
        held = requests.get(decision.key)
        if held is not None:
            if held.event_id != decision.event_id and held.request_id == decision.request_id:
                if _SEVERITY[decision.action] < _SEVERITY[held.action]:
                    return
            elif decision.decided_at < held.decided_at:
                return
        requests[decision.key] = decision
        requests.move_to_end(decision.key)
        while len(requests) > self.max_request_decisions:
            requests.popitem(last=False)

    def _apply_record(self, record: Any) -> None:
        value = record.value
        if value is None:
            self._skip(record, "no value (tombstone)")
            return
        try:
            decision = Decision.model_validate_json(value)
        except ValidationError as error:
            self._skip(record, f"{error.error_count()} error(s), first {validation_problem(error)}")
            return
        self.apply(decision)

    def _skip(self, record: Any, why: str) -> None:
        self._records_skipped += 1
        logger.warning(
            "skipped record %s[%d]@%d: not a decision: %s",
            record.topic,
            record.partition,
            record.offset,
            why,
        )

    async def _read_forever(self) -> None:
        def report(error: BaseException, delay: float) -> None:
            # The cache must outlive a broker outage: log, back off, read on.
            level = logging.WARNING if isinstance(error, KafkaError) else logging.ERROR
            logger.log(
                level,
                "reading decisions topic %r failed (%r); retrying in %.1f s",
                self.topic,
                error,
                delay,
                exc_info=error if level == logging.ERROR else None,
            )

        while True:
            # A fresh back-off for every read: it grows only while reads keep failing.
            await retrying(
                Exception, first_s=_BACKOFF_MIN_S, most_s=_BACKOFF_MAX_S, on_retry=report
            )(self._read_once)

    async def _read_once(self) -> None:
        """Read what the decisions topic holds now and apply it."""
        consumer = self._consumer
        await self._follow_partitions(initial=False)
        if not self._assigned:
            await asyncio.sleep(_POLL_TIMEOUT_MS / 1000)
            return
        batches = await consumer.getmany(
            timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_RECORDS_PER_POLL
        )
        for records in batches.values():
            for record in records:
                self._apply_record(record)
        await self._note_positions()
        self._sweep_expired()

    async def _follow_partitions(self, *, initial: bool) -> None:
        """Assign the topic's partitions: all of them at start, then any that appear."""
        consumer = self._consumer
        # Once assigned, the consumer tracks the topic and refreshes its partitions every
        # metadata_max_age_ms; until then, ask the cluster at start and at that interval.
        known: Collection[int] = consumer.partitions_for_topic(self.topic) or ()
        now = time.monotonic()
        if not known and (initial or now >= self._next_lookup):
            self._next_lookup = now + self.metadata_max_age_ms / 1000
            known = await topic_partitions(self.topic, **self._client_options()) or ()
        partitions = [TopicPartition(self.topic, p) for p in sorted(known)]
        new = [tp for tp in partitions if tp not in self._assigned]
        if not new:
            if initial:
                logger.warning(
                    "decisions topic %r does not exist yet on %s; it will be read once "
                    "advmon creates it",
                    self.topic,
                    self.bootstrap,
                )
                self._caught_up.set()
            return
        # Reassigning drops the positions of the partitions already held; keep them.
        held = {tp: await consumer.position(tp) for tp in self._assigned}
        consumer.assign(partitions)
        self._assigned = partitions
        for tp, offset in held.items():
            consumer.seek(tp, offset)
        if initial:
            self._targets = await consumer.end_offsets(new)
            await self._seek_start(new)
        else:
            logger.info("decisions topic %r: reading new partitions %s", self.topic, new)
            await consumer.seek_to_beginning(*new)
        await self._note_positions()

    async def _seek_start(self, partitions: list[TopicPartition]) -> None:
        consumer = self._consumer
        if self.start_from == "earliest":
            await consumer.seek_to_beginning(*partitions)
            return
        if self.start_from == "latest":
            for tp in partitions:
                consumer.seek(tp, self._targets[tp])
            return
        since_ms = max(0, int((time.time() - self.lookback.total_seconds()) * 1000))
        try:
            found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
        except UnsupportedVersionError:
            logger.info(
                "the brokers cannot look up offsets by time; reading %r from its earliest offset",
                self.topic,
            )
            await consumer.seek_to_beginning(*partitions)
            return
        for tp in partitions:
            hit = found.get(tp)
            # No record at or after the time: nothing recent, start at the end.
            consumer.seek(tp, hit.offset if hit is not None else self._targets[tp])

    async def _note_positions(self) -> None:
        consumer = self._consumer
        for tp in self._assigned:
            self._positions[tp] = await consumer.position(tp)
        if not self._caught_up.is_set() and self.records_behind() == 0:
            self._caught_up.set()

    def _sweep_expired(self) -> None:
        """Drop source decisions past their expiry, so the cache does not grow forever."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL_S
        at = datetime.now(UTC)
        expired = [
            source
            for source, d in self._sources.items()
            if d.expires_at is not None and d.expires_at <= at
        ]
        for source in expired:
            del self._sources[source]


def _in_force(decision: Decision, now: datetime) -> bool:
    return decision.action is Action.QUARANTINE and (
        decision.expires_at is None or decision.expires_at > now
    )
