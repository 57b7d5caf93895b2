"""Smoke tests: the session's Kafka-protocol broker and PostgreSQL database really work."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import DateTime, String, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests.conftest import KafkaTopicFactory

pytestmark = [pytest.mark.integration, pytest.mark.embedded_broker]

PARTITIONS = 3
MESSAGES_PER_PARTITION = 4
RECEIVE_TIMEOUT_S = 20.0

Record = tuple[int, int, bytes, bytes]  # partition, offset, key, value


def _consumer(bootstrap: str, topic: str, group_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,  # the broker's minimum
    )


async def _receive(consumer: AIOKafkaConsumer, count: int) -> list[Record]:
    """Read until ``count`` records arrived, then poll once more to catch any extras."""
    records: list[Record] = []

    async def fill() -> None:
        while len(records) < count:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                records.extend((m.partition, m.offset, m.key, m.value) for m in messages)

    await asyncio.wait_for(fill(), RECEIVE_TIMEOUT_S)
    for messages in (await consumer.getmany(timeout_ms=300)).values():
        records.extend((m.partition, m.offset, m.key, m.value) for m in messages)
    return records


async def test_kafka_round_trip_and_committed_offsets(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    topic = await kafka_topic_factory(PARTITIONS)
    group_id = f"smoke-{uuid.uuid4().hex[:12]}"
    expected: list[Record] = [
        (partition, offset, f"k{partition}".encode(), f"p{partition}-m{offset}".encode())
        for partition in range(PARTITIONS)
        for offset in range(MESSAGES_PER_PARTITION)
    ]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for partition, offset, key, value in expected:
            metadata = await producer.send_and_wait(topic, value, key=key, partition=partition)
            assert (metadata.partition, metadata.offset) == (partition, offset)
    finally:
        await producer.stop()

    consumer = _consumer(kafka_bootstrap, topic, group_id)
    await consumer.start()
    try:
        received = await _receive(consumer, len(expected))
        assert sorted(received) == expected
        for partition in range(PARTITIONS):
            in_partition = [r for r in received if r[0] == partition]
            assert in_partition == sorted(in_partition), "a partition was delivered out of order"
        partitions = {TopicPartition(topic, p) for p in range(PARTITIONS)}
        assert consumer.assignment() == partitions
        for tp in partitions:
            assert await consumer.committed(tp) is None
        await consumer.commit()
        for tp in partitions:
            assert await consumer.committed(tp) == MESSAGES_PER_PARTITION
    finally:
        await consumer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        group_offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    assert {tp: meta.offset for tp, meta in group_offsets.items()} == {
        TopicPartition(topic, p): MESSAGES_PER_PARTITION for p in range(PARTITIONS)
    }

    # A new member of the group resumes from the committed offsets: it sees only what
    # was produced after the commit.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"after-commit", key=b"k1", partition=1)
    finally:
        await producer.stop()
    consumer = _consumer(kafka_bootstrap, topic, group_id)
    await consumer.start()
    try:
        assert await _receive(consumer, 1) == [(1, MESSAGES_PER_PARTITION, b"k1", b"after-commit")]
    finally:
        await consumer.stop()


class _Base(DeclarativeBase):
    pass


class _SmokeReading(_Base):
    __tablename__ = "service_smoke_reading"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    squeeze_score: Mapped[float]
    observed_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


def test_postgres_round_trip(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    rows = [
        ("resnet50", 0.125, dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)),
        ("resnet50", 0.75, dt.datetime(2024, 5, 1, 12, 0, 1, 500, tzinfo=dt.UTC)),
        (
            "bert-base",
            0.0,
            dt.datetime(2024, 5, 2, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        ),
    ]
    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT current_database()")) == make_url(pg_url).database
        _Base.metadata.create_all(engine)
        try:
            with Session(engine) as session, session.begin():
                session.add_all(
                    _SmokeReading(model_name=name, squeeze_score=score, observed_at=at)
                    for name, score, at in rows
                )
            with Session(engine) as session:
                stored = session.execute(
                    select(
                        _SmokeReading.model_name,
                        _SmokeReading.squeeze_score,
                        _SmokeReading.observed_at,
                    ).order_by(_SmokeReading.id)
                ).all()
            assert [tuple(row) for row in stored] == rows
            assert all(row.observed_at.utcoffset() is not None for row in stored)
        finally:
            _Base.metadata.drop_all(engine)
    finally:
        engine.dispose()
