"""DecisionClient against the session's real Kafka-protocol broker, plus its pure parts."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import UnsupportedVersionError
from pydantic import SecretStr

from monitor.client import DecisionClient, DecisionClientError
from monitor.settings import KafkaSettings, Settings
from schemas import Action, Decision, Reason, Scope
from tests.conftest import KafkaTopicFactory

PARTITIONS = 4
CATCH_UP_TIMEOUT_S = 15.0

# (key, value, record timestamp in ms or None for "now")
Record = tuple[bytes | None, bytes | None, int | None]


def source_decision(
    source: str,
    action: Action = Action.QUARANTINE,
    *,
    expires_in: timedelta | None = timedelta(hours=1),
    decided_at: datetime | None = None,
) -> Decision:
    decided = decided_at or datetime.now(UTC)
    return Decision(
        event_id=f"ev-{source}-{decided.timestamp()}",
        source=source,
        model_id="digits",
        action=action,
        scope=Scope.SOURCE,
        reasons=[Reason(detector="flagged_events_per_source", score=25, threshold=20)],
        expires_at=None if expires_in is None else decided + expires_in,
        decided_at=decided,
    )


def request_decision(
    request_id: str | None,
    action: Action = Action.ALLOW,
    *,
    event_id: str | None = None,
    decided_at: datetime | None = None,
) -> Decision:
    return Decision(
        event_id=event_id or f"ev-{request_id}",
        request_id=request_id,
        source="caller-1",
        model_id="digits",
        action=action,
        scope=Scope.REQUEST,
        decided_at=decided_at or datetime.now(UTC),
    )


def record(decision: Decision, *, timestamp_ms: int | None = None) -> Record:
    return decision.key.encode(), decision.model_dump_json().encode(), timestamp_ms


async def publish(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    """Send records in order and wait until the broker acknowledged every one."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, timestamp_ms in records:
            await producer.send_and_wait(topic, value, key=key, timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()


async def eventually(condition: Callable[[], bool], timeout: float = CATCH_UP_TIMEOUT_S) -> None:
    """Wait until ``condition()`` holds, checking every 20 ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def ago_ms(delta: timedelta) -> int:
    return int((time.time() - delta.total_seconds()) * 1000)


# --- source quarantines ---------------------------------------------------------------


@pytest.mark.integration
async def test_is_quarantined_only_for_quarantines_in_force(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    topic = await kafka_topic_factory(PARTITIONS)
    t0 = datetime.now(UTC)
    await publish(
        kafka_bootstrap,
        topic,
        [
            record(source_decision("src-active", decided_at=t0)),
            record(source_decision("src-forever", expires_in=None, decided_at=t0)),
            record(source_decision("src-expired", expires_in=timedelta(seconds=-60))),
            record(source_decision("src-flagged", Action.FLAG, decided_at=t0)),
            record(source_decision("src-brief", expires_in=timedelta(seconds=1), decided_at=t0)),
            # A request-scoped quarantine is about one request, never its source.
            record(request_decision("req-1", Action.QUARANTINE)),
        ],
    )

    async with DecisionClient(kafka_bootstrap, topic) as client:
        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        assert client.is_quarantined("src-active")
        assert client.is_quarantined("src-forever")
        assert not client.is_quarantined("src-expired")
        assert not client.is_quarantined("src-flagged")
        assert not client.is_quarantined("caller-1")
        assert not client.is_quarantined("never-seen")
        assert set(client.quarantined_sources(now=t0)) == {"src-active", "src-forever", "src-brief"}

        later = t0 + timedelta(hours=2)
        assert not client.is_quarantined("src-active", now=later)
        assert client.is_quarantined("src-forever", now=later)

        # src-brief lapses one second after t0, by the real clock too.
        assert client.is_quarantined("src-brief", now=t0)
        await eventually(lambda: not client.is_quarantined("src-brief"))
        assert set(client.quarantined_sources()) == {"src-active", "src-forever"}


@pytest.mark.integration
async def test_later_source_decision_replaces_earlier_one(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    topic = await kafka_topic_factory(PARTITIONS)
    t0 = datetime.now(UTC)
    quarantine = source_decision("src-1", decided_at=t0)
    lifted = source_decision("src-1", Action.FLAG, decided_at=t0 + timedelta(seconds=1))
    again = source_decision("src-1", decided_at=t0 + timedelta(seconds=2))
    allowed = source_decision("src-1", Action.ALLOW, decided_at=t0 + timedelta(seconds=3))

    async with DecisionClient(kafka_bootstrap, topic) as client:
        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        await publish(kafka_bootstrap, topic, [record(quarantine)])
        await eventually(lambda: client.is_quarantined("src-1"))

        await publish(kafka_bootstrap, topic, [record(lifted)])
        await eventually(lambda: not client.is_quarantined("src-1"))

        # A replay of the older quarantine (at-least-once delivery) changes nothing.
        await publish(kafka_bootstrap, topic, [record(quarantine)])
        await eventually(lambda: client.decisions_applied == 3)
        assert not client.is_quarantined("src-1")

        await publish(kafka_bootstrap, topic, [record(again), record(again)])
        await eventually(lambda: client.decisions_applied == 5)
        assert client.is_quarantined("src-1")
        assert client.quarantined_sources()["src-1"] == again

        await publish(kafka_bootstrap, topic, [record(allowed)])
        await eventually(lambda: not client.is_quarantined("src-1"))
        assert client.quarantined_sources() == {}


# --- request decisions ----------------------------------------------------------------


@pytest.mark.integration
async def test_decision_for_returns_the_latest_decision_per_request(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    topic = await kafka_topic_factory(PARTITIONS)
    t0 = datetime.now(UTC)
    first = request_decision("req-a", Action.ALLOW, decided_at=t0)
    second = request_decision("req-a", Action.QUARANTINE, decided_at=t0 + timedelta(seconds=1))
    other = request_decision("req-b", Action.FLAG, decided_at=t0)
    no_request_id = request_decision(None, Action.FLAG, event_id="ev-77", decided_at=t0)
    await publish(
        kafka_bootstrap,
        topic,
        # ``second`` twice (at-least-once) and ``first`` replayed after it.
        [record(d) for d in (first, other, second, second, first, no_request_id)],
    )

    async with DecisionClient(kafka_bootstrap, topic) as client:
        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        assert client.decisions_applied == 6
        assert client.decision_for("req-a") == second
        assert client.decision_for("req-b") == other
        assert client.decision_for("ev-77") == no_request_id
        assert client.decision_for("req-unknown") is None
        assert not client.is_quarantined("caller-1")


@pytest.mark.integration
async def test_request_cache_is_bounded_and_drops_the_oldest(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    # One partition, so the client reads the decisions in the order they were sent.
    topic = await kafka_topic_factory(1)
    decisions = [request_decision(f"req-{i}") for i in range(5)]
    await publish(kafka_bootstrap, topic, [record(d) for d in decisions])

    async with DecisionClient(kafka_bootstrap, topic, max_request_decisions=3) as client:
        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        assert [client.decision_for(f"req-{i}") for i in range(5)] == [None, None, *decisions[2:]]


def test_request_cache_drops_the_least_recently_used() -> None:
    client = DecisionClient("unused:9092", max_request_decisions=2)
    a, b, c = (request_decision(f"req-{name}") for name in "abc")
    client.apply(a)
    client.apply(b)
    assert client.decision_for("req-a") == a  # now b is the least recently used

    client.apply(c)

    assert client.decision_for("req-b") is None
    assert client.decision_for("req-a") == a
    assert client.decision_for("req-c") == c


def test_the_most_severe_row_answers_for_a_batched_request() -> None:
    client = DecisionClient("unused:9092")
    at = datetime.now(UTC)
    rows = [
        request_decision("req-b", action, event_id=f"req-b#{i}", decided_at=at)
        for i, action in enumerate([Action.ALLOW, Action.QUARANTINE, Action.ALLOW, Action.FLAG])
    ]
    for row in rows:
        client.apply(row)
    assert client.decision_for("req-b") == rows[1]
    # A newer decision of the same row still replaces it.
    later = request_decision(
        "req-b", Action.ALLOW, event_id="req-b#1", decided_at=at + timedelta(1)
    )
    client.apply(later)
    assert client.decision_for("req-b") == later


# --- bad records ----------------------------------------------------------------------


@pytest.mark.integration
async def test_malformed_records_are_logged_skipped_and_counted(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory, caplog: pytest.LogCaptureFixture
) -> None:
    topic = await kafka_topic_factory(1)
    no_source = source_decision("src-x").model_dump(mode="json") | {"source": None}
    bad: list[Record] = [
        (b"k", b"\xff\xfe not json", None),
        (b"k", b'{"event_id": "e1"', None),
        (b"k", b'{"event_id": "e1", "model_id": "m"}', None),
        (b"k", b"[1, 2, 3]", None),
        (b"src-x", json.dumps(no_source).encode(), None),
        (b"k", None, None),
    ]
    await publish(kafka_bootstrap, topic, [*bad, record(source_decision("src-ok"))])

    with caplog.at_level(logging.WARNING, logger="monitor.client"):
        async with DecisionClient(kafka_bootstrap, topic) as client:
            await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

            assert client.records_skipped == len(bad)
            assert client.decisions_applied == 1
            assert client.is_quarantined("src-ok")

    skipped = [r.getMessage() for r in caplog.records if "skipped record" in r.getMessage()]
    assert len(skipped) == len(bad)
    assert skipped[0].startswith(f"skipped record {topic}[0]@0: not a decision")
    assert "a source-scoped decision needs a source" in skipped[4]
    assert "tombstone" in skipped[5]


# --- start position and catching up ---------------------------------------------------


@pytest.mark.integration
async def test_wait_until_caught_up_reads_everything_published_before_start(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    topic = await kafka_topic_factory(PARTITIONS)
    count = 1200  # more than one poll's worth
    await publish(
        kafka_bootstrap, topic, [record(request_decision(f"req-{i}")) for i in range(count)]
    )

    async with DecisionClient(kafka_bootstrap, topic) as client:
        assert not client.caught_up
        assert client.records_behind() == count
        with pytest.raises(TimeoutError, match=f"{count} records still unread"):
            await client.wait_until_caught_up(timeout=0)

        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        assert client.caught_up
        assert client.records_behind() == 0
        assert client.decisions_applied == count
        assert client.decision_for(f"req-{count - 1}") is not None


@pytest.mark.integration
async def test_empty_topic_is_caught_up_at_once_and_followed_live(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    topic = await kafka_topic_factory(PARTITIONS)

    async with DecisionClient(kafka_bootstrap, topic) as client:
        await client.wait_until_caught_up(timeout=0)

        await publish(kafka_bootstrap, topic, [record(source_decision("src-live"))])
        await eventually(lambda: client.is_quarantined("src-live"))


@pytest.mark.integration
async def test_topic_created_after_start_is_read_from_its_beginning(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    name = f"decisions-later-{time.monotonic_ns()}"

    async with DecisionClient(kafka_bootstrap, name, metadata_max_age_ms=200) as client:
        await client.wait_until_caught_up(timeout=0)  # nothing to read yet

        await kafka_topic_factory(PARTITIONS, name=name)
        await publish(kafka_bootstrap, name, [record(source_decision("src-new"))])
        await eventually(lambda: client.is_quarantined("src-new"))


@pytest.fixture
async def published_before_start(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> str:
    """A topic holding an old and a recent quarantine (both still in force) and old and
    recent request decisions; the record timestamps say when each was published."""
    topic = await kafka_topic_factory(PARTITIONS)
    three_hours_ago = ago_ms(timedelta(hours=3))
    ten_minutes_ago = ago_ms(timedelta(minutes=10))
    await publish(
        kafka_bootstrap,
        topic,
        [
            record(source_decision("src-old", expires_in=None), timestamp_ms=three_hours_ago),
            record(request_decision("req-old"), timestamp_ms=three_hours_ago),
            record(source_decision("src-recent"), timestamp_ms=ten_minutes_ago),
            record(request_decision("req-recent"), timestamp_ms=ten_minutes_ago),
        ],
    )
    return topic


@pytest.mark.integration
async def test_client_started_later_sees_quarantines_from_the_lookback_window(
    kafka_bootstrap: str, published_before_start: str
) -> None:
    async with DecisionClient(
        kafka_bootstrap, published_before_start, lookback=timedelta(hours=1)
    ) as client:
        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        assert client.is_quarantined("src-recent")
        assert client.decision_for("req-recent") is not None
        # Published before the window: not read.
        assert not client.is_quarantined("src-old")
        assert client.decision_for("req-old") is None
        assert client.decisions_applied == 2


@pytest.mark.integration
@pytest.mark.parametrize(
    ("start_from", "expected_sources"),
    [("earliest", {"src-old", "src-recent"}), ("latest", set())],
)
async def test_start_from_earliest_or_latest(
    kafka_bootstrap: str,
    published_before_start: str,
    start_from: Any,
    expected_sources: set[str],
) -> None:
    async with DecisionClient(
        kafka_bootstrap, published_before_start, start_from=start_from
    ) as client:
        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        assert set(client.quarantined_sources()) == expected_sources


@pytest.mark.integration
async def test_lookback_falls_back_to_earliest_without_timestamp_lookups(
    kafka_bootstrap: str, published_before_start: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unsupported(self: AIOKafkaConsumer, timestamps: Any) -> Any:
        raise UnsupportedVersionError("ListOffsets v1")

    monkeypatch.setattr(AIOKafkaConsumer, "offsets_for_times", unsupported)

    async with DecisionClient(kafka_bootstrap, published_before_start) as client:
        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        assert client.is_quarantined("src-old")
        assert client.is_quarantined("src-recent")


# --- settings, validation, errors -----------------------------------------------------


@pytest.mark.integration
async def test_from_settings_reads_the_configured_broker(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    topic = await kafka_topic_factory(PARTITIONS)
    await publish(kafka_bootstrap, topic, [record(source_decision("src-s"))])
    settings = Settings(kafka=KafkaSettings(bootstrap=kafka_bootstrap))

    async with DecisionClient.from_settings(settings, topic) as client:
        await client.wait_until_caught_up(CATCH_UP_TIMEOUT_S)

        assert client.is_quarantined("src-s")


def test_from_settings_passes_security_settings() -> None:
    kafka = KafkaSettings(
        bootstrap="kafka-1:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="serving",
        sasl_password=SecretStr("s3cret"),
    )

    client = DecisionClient.from_settings(Settings(kafka=kafka), "decisions", lookback=timedelta(0))

    assert client.topic == "decisions"
    assert client.lookback == timedelta(0)
    assert client.security_protocol == "SASL_SSL"
    assert client.sasl_mechanism == "SCRAM-SHA-512"
    assert (client.sasl_plain_username, client.sasl_plain_password) == ("serving", "s3cret")
    assert isinstance(client.ssl_context, ssl.SSLContext)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"bootstrap": " "}, "bootstrap"),
        ({"topic": ""}, "topic"),
        ({"start_from": "newest"}, "start_from"),
        ({"lookback": timedelta(seconds=-1)}, "lookback"),
        ({"max_request_decisions": 0}, "max_request_decisions"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_PLAINTEXT"}, "sasl_plain_username"),
    ],
)
def test_invalid_arguments_are_named(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecisionClient(**{"bootstrap": "kafka:9092", **arguments})


async def test_unreachable_broker_raises_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = DecisionClient(f"127.0.0.1:{port}", "advmon-decisions")

    with pytest.raises(DecisionClientError, match=f"from 127.0.0.1:{port}.*reachable"):
        await client.start()
    await client.stop()  # harmless after a failed start


async def test_queries_before_start() -> None:
    client = DecisionClient("kafka:9092")

    assert not client.is_quarantined("anyone")
    assert client.decision_for("req-1") is None
    with pytest.raises(RuntimeError, match="start the client first"):
        await client.wait_until_caught_up(0)
