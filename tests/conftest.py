"""Session-wide fixtures that start the real servers integration tests talk to.

Two servers, both on loopback (see DESIGN.md, "Local and CI services"):

- ``kafka_bootstrap``: a Kafka-protocol broker from the pinned ``noida-db`` package, started
  once per test session on a free port, in a throwaway data directory.
- ``pg_url``: a fresh database on the machine's PostgreSQL server, created once per test
  session and dropped at the end.

``kafka_topic_factory`` gives each test its own uniquely named topic, so tests never see
each other's messages even though they share one broker.

Any test that requests one of these fixtures is marked ``integration`` automatically, so
``pytest -m "not integration"`` runs only the tests that need no server.

Rules for tests that use the broker:

- Consumers in a group must set ``session_timeout_ms`` between 6000 and 1800000; the broker
  refuses to join a group otherwise (``InvalidSessionTimeoutError``). aiokafka's default
  (10000) is fine.
- Create aiokafka clients inside the test that uses them and stop them there: async tests
  run in their own event loop, so a client cannot be shared between tests.
- With two or more members in one group, never commit (manually or through aiokafka's
  default ``enable_auto_commit``) while the group rebalances, i.e. while a member joins
  or leaves: this broker answers such a commit with ``IllegalGenerationError``, the
  committer rejoins under a new member id, and the rebalance never completes (the group
  stays in CompletingRebalance with the stale member, well past the session timeout).
  Use one consumer per group, or ``enable_auto_commit=False`` and commit only while the
  group is stable. Rebalances without concurrent commits take about a second.
- The broker answers an empty fetch at once instead of waiting ``fetch_max_wait_ms``, so
  an idle consumer busy-polls (thousands of fetches a second, one CPU core): stop
  consumers as soon as a test is done with them.
- The broker never expires a group member that stopped heartbeating (a SIGKILLed
  consumer keeps its partitions, and no rebalance starts); a member that rejoins with the
  same static ``group_instance_id`` takes them back at once.
- The broker auto-creates a topic (one partition) on first produce; use
  ``kafka_topic_factory`` rather than relying on that, so the partition count is known.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from psycopg import sql
from sqlalchemy.engine import make_url

from monitor.local_broker import BrokerError, LocalKafkaBroker

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_START_HINT = (
    "Start the local server with: "
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)


_SERVICE_FIXTURES = frozenset({"kafka_bootstrap", "kafka_topic_factory", "pg_url"})

KafkaTopicFactory = Callable[..., Awaitable[str]]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--pg-admin-url``: the PostgreSQL server the ``pg_url`` fixture uses."""
    parser.addoption(
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help=(
            "libpq URL of a PostgreSQL database with CREATE DATABASE rights; each test "
            f"session creates and drops its own database there (default: {DEFAULT_PG_ADMIN_URL})"
        ),
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real server as ``integration``."""
    for item in items:
        if _SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


# --- Kafka-protocol broker ------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a Kafka-protocol broker for this test session; yield ``"127.0.0.1:PORT"``.

    The broker is :class:`monitor.local_broker.LocalKafkaBroker`: ``noida-db start --only
    kafka`` from the pinned ``noida-db`` package, on a free loopback port, with its data and
    its log (``broker.log``) in a fresh temporary directory. It is ready when it answers a
    Kafka metadata request; it is stopped with SIGTERM (SIGKILL after 10 s) at the end.

    Consumers that join a group must use ``session_timeout_ms >= 6000`` (the broker rejects
    shorter sessions). See this module's docstring for the broker's other quirks.
    """
    broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        bootstrap = broker.start()
    except BrokerError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield bootstrap
    finally:
        broker.stop()


def _topic_name_for(node_name: str) -> str:
    # Kafka topic names allow [a-zA-Z0-9._-], up to 249 characters.
    stem = re.sub(r"[^a-zA-Z0-9._-]+", "-", node_name).strip("-.")[:80]
    return f"{stem or 'test'}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kafka_topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> KafkaTopicFactory:
    """Return ``async create(partitions=1, *, name=None) -> str`` making a fresh topic.

    Each call creates a topic named after the current test plus a random suffix (or
    ``name``, which must be unused) with ``partitions`` partitions, checks that the broker
    reports that many, and returns the name. Await it inside the test's event loop.
    Topics are not deleted: the broker and its data only live for the session.
    """

    async def create_topic(partitions: int = 1, *, name: str | None = None) -> str:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        topic = name or _topic_name_for(request.node.name)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            await admin.start()
            response = await admin.create_topics(
                [NewTopic(name=topic, num_partitions=partitions, replication_factor=1)]
            )
            # aiokafka returns per-topic errors in the response instead of raising.
            errors = [
                f"{error[0]}: error {error[1]} ({error[2]})"
                for error in response.topic_errors
                if error[1] != 0
            ]
            if errors:
                pytest.fail(f"could not create Kafka topic {topic!r}: {'; '.join(errors)}")
            described = await admin.describe_topics([topic])
        finally:
            await admin.close()
        reported = len(described[0]["partitions"]) if described else 0
        if reported != partitions:
            pytest.fail(
                f"Kafka topic {topic!r} was created with {partitions} partitions "
                f"but the broker reports {reported}"
            )
        return topic

    return create_topic


# --- PostgreSQL -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Create a fresh PostgreSQL database for this session; yield its SQLAlchemy URL.

    The database ``advmon_test_<random hex>`` is created on the server named by
    ``--pg-admin-url`` (default: the machine's server at 127.0.0.1:5432, trust auth, user
    ``postgres``) and dropped, with any connections left open, when the session ends. The
    URL uses the psycopg 3 driver: ``postgresql+psycopg://postgres@127.0.0.1:5432/<db>``.
    """
    admin_url: str = request.config.getoption("--pg-admin-url")
    database = f"advmon_test_{secrets.token_hex(6)}"
    with _pg_admin_connection(admin_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=database)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _pg_admin_connection(admin_url) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


@contextlib.contextmanager
def _pg_admin_connection(admin_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    try:
        connection = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        reason = str(error).strip()
    else:
        reason = ""
    if reason:
        # Outside the except block, so the report is this message, not a chained traceback.
        pytest.fail(
            f"PostgreSQL is not reachable at {_hide_password(admin_url)}: {reason}\n"
            f"{PG_START_HINT}\n"
            "or point the tests at another server with --pg-admin-url.",
            pytrace=False,
        )
    with connection:
        yield connection


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<the --pg-admin-url value>"
