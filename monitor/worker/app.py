"""Build the Faust app: broker connection, topics, tables and stages.

The agents that feed the stages are attached by :func:`monitor.worker.agents.register`.

Nothing is built at import time: :func:`create_app` is called by ``advmon worker`` (and
by tests) with the settings and the worker config.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.partitioner import DefaultPartitioner
from faust.exceptions import AlreadyConfiguredWarning, ProducerSendError
from faust.types import TP, ConsumerT
from faust.web import Web
from faust.web.base import BlueprintManager
from mode import ServiceT
from prometheus_client import CollectorRegistry
from yarl import URL

from monitor.config import MonitorConfig
from monitor.incidents.storage.incidents import IncidentStore
from monitor.retry import retrying
from monitor.settings import KafkaSettings, Settings
from monitor.worker.consumer import GaplessConsumer
from monitor.worker.intake import InferenceIntake
from monitor.worker.metrics import Metrics
from monitor.worker.models import ModelDetector
from monitor.worker.queries import query_plans
from monitor.worker.records import OutputRecord
from monitor.worker.signals import drift_plans
from monitor.worker.stages.alerts import AlertingStage
from monitor.worker.stages.drift import DriftStage
from monitor.worker.stages.incidents import IncidentStage
from monitor.worker.stages.join import JoinStage
from monitor.worker.stages.quarantine import QuarantineStage
from monitor.worker.stages.queries import QueryStage
from monitor.worker.stages.scoring import ScoringStage

__all__ = [
    "BATCHED_RECORD_BYTES",
    "AdvmonApp",
    "broker_credentials",
    "create_app",
]

logger = logging.getLogger(__name__)

BATCHED_RECORD_BYTES = 65_536
"""Records up to this size (key and value) are published in record batches; larger ones
(dead letters, OIP v2 halves) one by one."""


def broker_credentials(kafka: KafkaSettings) -> Any:
    """Faust credentials for the configured security protocol (``None`` for PLAINTEXT)."""
    ssl_context = kafka.ssl_context()
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


class _FaustApp(faust.App):
    """Faust's app; a static group member's canonical URL is its instance id.

    A static member that rejoins gets its previous assignment back from the broker, and
    Faust's assignor refuses it unless it names the member's current canonical URL: an
    ``AssertionError`` that ends the consumer's group coordination for good and leaves
    the worker "starting" forever. Faust builds that URL from the web host and port (its
    worker command sets it from ``--web-host``/``--web-port``), which change when a pod
    comes back on another node or a process restarts on another port; the instance id
    does not. It is set here, once the command line has been applied.

    Its web server serves only the pages advmon registers (:mod:`monitor.worker.web`):
    Faust's built-in ones would give anyone who reaches the port the tables' contents
    (``/table/oip-pending/<id>/`` is a pending request body), the cluster's workers
    (``/router``), the service graph and sensor statistics, without authentication.
    """

    static_url: URL | None = None
    #: Called with (topic, partition) when the consumer reads a skipped message again.
    on_hole_repaired: Callable[[str, int], None] | None = None
    #: Services stopped before anything of Faust's: they publish through its producer.
    stopped_first: tuple[ServiceT, ...] = ()

    async def on_stop(self) -> None:
        # mode stops children in reverse order of addition, and Faust adds its producer
        # at start, after the services create_app added: the producer would stop first,
        # while the intake still drains the batches in hand.
        for service in self.stopped_first:
            await service.stop()
        await super().on_stop()

    def _new_web(self) -> Web:
        web = super()._new_web()
        # Faust's blueprints (/table, /router, /graph, /assignment, /performance and its
        # index at /) are applied when the server starts: none are.
        web.blueprints = BlueprintManager()
        return web

    def _new_consumer(self) -> ConsumerT:
        # Faust's own consumer can commit over a message no agent processed; see
        # monitor.worker.consumer.
        self.transport.Consumer = GaplessConsumer  # type: ignore[misc]
        consumer = super()._new_consumer()
        if isinstance(consumer, GaplessConsumer):
            consumer.on_hole_repaired = self.on_hole_repaired
            consumer.queued = self._queued
        return consumer

    def _queued(self, topic: str) -> bool:
        """Whether a channel reading ``topic`` still holds messages for its agent."""
        return any(topic in channel.topics and channel.queue.qsize() > 0 for channel in self.topics)

    async def on_first_start(self) -> None:
        if self.static_url is not None:
            with warnings.catch_warnings():
                # Faust warns when a setting changes after it was read; this one must.
                warnings.simplefilter("ignore", AlreadyConfiguredWarning)
                self.conf.canonical_url = self.static_url
        await super().on_first_start()


@dataclass
class AdvmonApp:
    """The Faust app and what the agents need from it."""

    app: faust.App
    config: MonitorConfig
    metrics: Metrics
    registry: CollectorRegistry
    inference: faust.TopicT
    source_flags: faust.TopicT
    signals: faust.TopicT
    query_prints: faust.TopicT
    halves: faust.TopicT
    joined: faust.TopicT
    outputs: dict[str, faust.TopicT]
    scoring: ScoringStage
    intake: InferenceIntake
    quarantine: QuarantineStage
    queries: QueryStage
    drift: DriftStage
    join: JoinStage | None
    incidents: IncidentStage | None
    alerting: AlertingStage | None
    _declared: bool = False
    _changelogs_known: bool = False

    async def know_changelogs(self) -> None:
        """Wait until the producer has metadata for every table's changelog topic.

        A table write outside an event's context (a batch, a timer) leaves the partition
        to the producer, which picks it synchronously from the metadata it holds and
        fails with a ``TypeError`` for a topic it has not seen yet: on a real cluster, a
        changelog created at this start. The embedded broker's metadata always lists
        every topic, which hid this.
        """
        if self._changelogs_known:
            return
        producer = await self.app.maybe_start_producer()
        client: Any = producer._ensure_producer()
        for table in self.app.tables.values():
            topic = table.changelog_topic
            await topic.maybe_declare()
            await client.partitions_for(topic.get_topic_name())
        self._changelogs_known = True

    @contextmanager
    def finishing(self, events: Iterable[faust.EventT[Any] | None]) -> Iterator[None]:
        """Keep ``events`` out of any commit until the block has finished them.

        When the worker stops mid-batch, Faust acknowledges the agent's batch before it
        cancels the agent; held back, the unfinished events stay uncommitted and the next
        worker reads them again (see :meth:`GaplessConsumer.withhold`). The block's
        normal end lets them be acknowledged as usual.
        """
        consumer = self.app.consumer
        if not isinstance(consumer, GaplessConsumer):
            yield
            return
        messages = [event.message for event in events if event is not None]
        consumer.withhold(messages)
        yield  # an exception here leaves them withheld
        consumer.release(messages)

    async def publish(
        self,
        records: Sequence[OutputRecord],
        *,
        after: asyncio.Future[None] | None = None,
        queued: asyncio.Future[None] | None = None,
    ) -> None:
        """Send records and return once the broker acknowledged all of them.

        While the broker refuses them the whole batch is sent again with back-off
        (at-least-once: a record may be written twice, never lost), and the caller's
        input offsets stay uncommitted.
        """

        def report(error: BaseException, delay: float) -> None:
            logger.error(
                "publishing %d records failed, retrying in %.1f s: %r", len(records), delay, error
            )

        await retrying((KafkaError, TimeoutError), first_s=0.5, most_s=30.0, on_retry=report)(
            self._send, records, after, queued
        )

    async def _send(
        self,
        records: Sequence[OutputRecord],
        after: asyncio.Future[None] | None = None,
        queued: asyncio.Future[None] | None = None,
    ) -> None:
        """Send ``records``; a record the broker refuses for good is set aside.

        A retriable error (broker away, leader moving, timeout) raises, so that the whole
        batch is sent again; a record refused for what it is (too large, an invalid topic)
        would be refused forever, so it is logged and counted as set aside, and the batch
        goes on without it.

        Records go straight to aiokafka in record batches, one per partition (as many as
        its ``max_batch_size`` needs): ``Topic.send`` costs several event-loop round trips
        per record, and even aiokafka's ``send`` a future and a queue slot per record. A
        record batch the broker refuses for good is sent again record by record, so that
        only the refused records are set aside; a record larger than
        :data:`BATCHED_RECORD_BYTES` (dead letters, OIP v2 halves) is sent on its own.
        """
        if not self._declared:
            # Create missing output topics once (Topic.send would do it per call).
            await asyncio.gather(*(t.maybe_declare() for t in self.outputs.values()))
            self._declared = True
        if after is not None:
            await asyncio.shield(after)
        faust_producer = await self.app.maybe_start_producer()
        producer: Any = faust_producer._ensure_producer()  # aiokafka's AIOKafkaProducer
        by_partition: dict[tuple[str, int], list[OutputRecord]] = {}
        alone: list[OutputRecord] = []
        known: set[str] = set()
        for record in records:
            if len(record.value) + len(record.key) > BATCHED_RECORD_BYTES:
                alone.append(record)
                continue
            if record.topic not in known:
                await producer.partitions_for(record.topic)  # waits for its metadata
                known.add(record.topic)
            # aiokafka's own choice for a keyed record (murmur2, as Kafka's Java client).
            partition = producer._partition(
                record.topic, None, record.key, record.value, record.key, record.value
            )
            by_partition.setdefault((record.topic, partition), []).append(record)
        batches: list[tuple[list[OutputRecord], Awaitable[Any]]] = []
        for (topic, partition), members in by_partition.items():
            builder = producer.create_batch()
            chunk: list[OutputRecord] = []
            for record in members:
                if builder.append(key=record.key, value=record.value, timestamp=None) is None:
                    if chunk:
                        sent = await producer.send_batch(builder, topic, partition=partition)
                        batches.append((chunk, sent))
                    builder, chunk = producer.create_batch(), []
                    if builder.append(key=record.key, value=record.value, timestamp=None) is None:
                        alone.append(record)  # larger than a record batch may be
                        continue
                chunk.append(record)
            if chunk:
                batches.append(
                    (chunk, await producer.send_batch(builder, topic, partition=partition))
                )
        pending, refused = await self._queue_alone(faust_producer, alone)
        if queued is not None and not queued.done():
            queued.set_result(None)
        refused.extend(await self._acknowledged(pending))
        results = await asyncio.gather(*(sent for _, sent in batches), return_exceptions=True)
        for (chunk, _), result in zip(batches, results, strict=True):
            if isinstance(result, BaseException):
                _permanent(result)  # raises a retriable error: the whole batch is retried
                refused.extend(await self._send_one_by_one(faust_producer, chunk))
        for record, error in refused:
            reason = type(error).__name__
            logger.error(
                "the broker refused a record for %s (%d bytes) for good, left out: %r",
                record.topic,
                len(record.value),
                error,
            )
            self.metrics.records_set_aside.labels(record.topic, reason).inc()

    async def _send_one_by_one(
        self, producer: Any, records: Sequence[OutputRecord]
    ) -> list[tuple[OutputRecord, BaseException]]:
        """Send each record on its own; return those refused for good, with the error.

        Each record's acknowledgement is awaited before the next is sent, so that each
        travels in a record batch of its own: the broker judges a batch as a whole
        (``max.message.bytes``), and one refused record would take the others down.
        """
        pending, refused = await self._queue_alone(producer, records, one_by_one=True)
        refused.extend(await self._acknowledged(pending))
        return refused

    async def _queue_alone(
        self, producer: Any, records: Sequence[OutputRecord], *, one_by_one: bool = False
    ) -> tuple[list[tuple[OutputRecord, Awaitable[Any]]], list[tuple[OutputRecord, BaseException]]]:
        """Hand each record to the producer on its own (``one_by_one``: each only once the
        one before was acknowledged): the records sent, with their acknowledgements to
        wait for, and those refused for good."""
        pending: list[tuple[OutputRecord, Awaitable[Any]]] = []
        refused: list[tuple[OutputRecord, BaseException]] = []
        for record in records:
            try:
                sent = await producer.send(record.topic, record.key, record.value, None, None, None)
                if one_by_one:
                    await asyncio.gather(sent)
            except ProducerSendError as exc:
                refused.append((record, _permanent(exc.__cause__ or exc)))
                continue
            except KafkaError as exc:
                refused.append((record, _permanent(exc)))
                continue
            pending.append((record, sent))
        return pending, refused

    @staticmethod
    async def _acknowledged(
        pending: Sequence[tuple[OutputRecord, Awaitable[Any]]],
    ) -> list[tuple[OutputRecord, BaseException]]:
        """Wait for the acknowledgements; return the records refused for good."""
        results = await asyncio.gather(*(sent for _, sent in pending), return_exceptions=True)
        return [
            (record, _permanent(result))
            for (record, _), result in zip(pending, results, strict=True)
            if isinstance(result, BaseException)
        ]


_REFUSED_RECORD = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTopicError,
)
"""The broker's refusals of a record for what it is: sending it again cannot help."""


def _permanent(error: BaseException) -> BaseException:
    """``error`` when it refuses the record for good (:data:`_REFUSED_RECORD`); raises it
    otherwise, for ``publish`` to retry the batch. A timeout, an authorization failure or
    an unknown server error says nothing about the record: it is retried until it passes,
    with the input uncommitted, rather than counted as set aside and lost."""
    if isinstance(error, _REFUSED_RECORD):
        permanent: BaseException = error
        return permanent
    raise error


def create_app(
    settings: Settings,
    config: MonitorConfig,
    models: dict[str, ModelDetector],
    store: IncidentStore | None,
    *,
    registry: CollectorRegistry | None = None,
) -> AdvmonApp:
    """Build the worker's Faust app for ``config`` (see :func:`monitor.worker.agents.register`).

    Without a ``store`` the worker keeps no incidents and sends no alerts: detections stay
    on their topic for whoever consumes them.
    """
    kafka = settings.kafka
    config = config.for_app(settings.worker.app_id)
    app = _FaustApp(
        settings.worker.app_id,
        broker=[f"kafka://{host.strip()}" for host in kafka.bootstrap.split(",")],
        broker_credentials=broker_credentials(kafka),
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        producer_acks=-1,
        topic_partitions=settings.worker.internal_partitions,
        table_standby_replicas=0,
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # Stop promptly even while a stage is retrying (database down): events it did not
        # finish are uncommitted and processed again after the restart.
        stream_wait_empty=False,
        # The worker creates its internal topics as it starts; when the group is assigned
        # before the cluster's metadata lists one of them, the consumer joins the group
        # again only at its next metadata refresh (five minutes by default).
        consumer_metadata_max_age_ms=10_000,
        producer_max_request_size=kafka.max_request_bytes,
        # Room for a scoring batch's decisions to one partition in one record batch.
        producer_max_batch_size=min(kafka.max_request_bytes, 262_144),
        autodiscover=False,
        # Faust binds to every interface unless told; --web-bind still overrides this.
        web_bind=settings.worker.web_bind,
    )
    if settings.worker.data_dir is not None:
        app.conf.datadir = settings.worker.data_dir
    if settings.worker.instance_id is not None:
        app.conf.consumer_group_instance_id = settings.worker.instance_id
        app.static_url = URL.build(scheme="http", host=settings.worker.instance_id)
    registry = registry or CollectorRegistry()
    metrics = Metrics.create(registry)
    app.on_hole_repaired = lambda topic, _partition: metrics.messages_reread.labels(topic).inc()
    topics = config.topics

    def raw_topic(*names: str, internal: bool = False) -> faust.TopicT:
        return app.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            internal=internal,
            partitions=settings.worker.internal_partitions if internal else None,
        )

    outputs = {
        name: raw_topic(name) for name in (topics.decisions, topics.dead_letter, topics.detections)
    }
    source_flags = raw_topic(topics.source_flags, internal=True)
    outputs[topics.source_flags] = source_flags
    counts = app.Table(
        "source-flag-counts", default=int, partitions=settings.worker.internal_partitions
    ).tumbling(config.quarantine.window_seconds, expires=2 * config.quarantine.window_seconds)
    in_force = app.Table(
        "source-quarantines",
        default=float,
        key_type=str,
        value_type=float,
        partitions=settings.worker.internal_partitions,
    )
    signals = raw_topic(topics.signals, internal=True)
    outputs[topics.signals] = signals

    def keyed_table(name: str) -> Any:
        """A table of bytes by key, written outside Faust's per-event context (per batch
        of a ``take_events`` agent, or by a timer): its changelog partition comes from
        the key, as the partition of the internal topic it is keyed like does."""
        return app.Table(
            name,
            key_type=str,
            value_type=bytes,
            partitions=settings.worker.internal_partitions,
            use_partitioner=True,
        )

    drift_states = keyed_table("drift-states")
    plans = drift_plans(models)
    watched = query_plans(models)
    query_prints = raw_topic(topics.query_prints, internal=True)
    if watched:
        outputs[topics.query_prints] = query_prints
    query_states = keyed_table("query-histories")
    joining = any(m.format == "oip-v2" for m in config.models)
    halves = raw_topic(topics.oip_halves, internal=True)
    joined = raw_topic(topics.joined, internal=True)
    if joining:
        outputs[topics.oip_halves] = halves
        outputs[topics.joined] = joined
    pending = keyed_table("oip-pending")

    wiring: AdvmonApp

    async def publish(records: Sequence[OutputRecord]) -> None:
        await wiring.publish(records)

    async def publish_in_order(
        records: Sequence[OutputRecord],
        after: asyncio.Future[None] | None,
        queued: asyncio.Future[None],
    ) -> None:
        await wiring.publish(records, after=after, queued=queued)

    scoring = ScoringStage(
        config,
        models,
        metrics,
        publish,
        publish_in_order=publish_in_order,
        device=settings.scoring.device,
        intra_op_threads=settings.scoring.intra_op_threads,
        spin_wait=settings.scoring.spin_wait,
        drift=plans,
        queries=watched,
        max_request_bytes=kafka.max_request_bytes,
    )
    partitioner = DefaultPartitioner()
    every_partition = list(range(settings.worker.internal_partitions))

    def owner_check(topic: str) -> Callable[[str], bool]:
        """Whether this worker holds the partition of ``topic`` a key goes to."""

        def owns(key: str) -> bool:
            # The producer's partitioner, as the topic and its table's changelog use it.
            partition = partitioner(key.encode(), every_partition, every_partition)
            return TP(topic, partition) in app.consumer.assignment()

        return owns

    drift = DriftStage(
        config,
        plans,
        drift_states,
        metrics,
        publish,
        owner_check(topics.signals),
        checkpoint_key=settings.drift.checkpoint_key_bytes(),
    )
    join = (
        JoinStage(
            config,
            pending,
            metrics,
            publish,
            owner_check(topics.oip_halves),
            {model_id: model.detector for model_id, model in models.items()},
        )
        if joining
        else None
    )
    quarantine = QuarantineStage(config, counts, in_force, metrics, publish)
    queries = QueryStage(
        config,
        watched,
        query_states,
        metrics,
        publish,
        owner_check(topics.query_prints),
        max_record_bytes=kafka.max_request_bytes,
    )
    intake = InferenceIntake(
        settings,
        config.inference_topics,
        scoring.process,
        metrics,
        ready=scoring.wait_ready,
        max_events=config.batching.max_events,
        max_wait_ms=config.batching.max_wait_ms,
    )
    new_incident = asyncio.Event()
    wiring = AdvmonApp(
        app=app,
        config=config,
        metrics=metrics,
        registry=registry,
        inference=raw_topic(*config.inference_topics),
        source_flags=source_flags,
        signals=signals,
        query_prints=query_prints,
        halves=halves,
        joined=joined,
        outputs=outputs,
        scoring=scoring,
        intake=intake,
        quarantine=quarantine,
        queries=queries,
        drift=drift,
        join=join,
        incidents=(
            IncidentStage(
                store,
                metrics,
                publish,
                dead_letter_topic=topics.dead_letter,
                dead_letter_copy_bytes=config.dead_letters.copy_bytes,
                retry_max_seconds=settings.database.retry_max_seconds,
                on_new_incident=new_incident,
            )
            if store is not None
            else None
        ),
        alerting=(
            AlertingStage(store, settings.alerting, new_incident, metrics)
            if store is not None
            else None
        ),
    )
    app.add_dependency(scoring)
    app.add_dependency(intake)
    app.stopped_first = (intake,)
    return wiring
