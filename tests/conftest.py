"""Session-wide fixtures that start the real servers integration tests talk to.

Two servers, both on loopback (the README's "Development" section says how CI provides them):

- ``kafka_bootstrap``: a Kafka broker started once per test session on free ports, in a
  throwaway data directory. By default it is Apache Kafka (:mod:`tests.kafka`: one KRaft
  node, jars fetched by ``make kafka``). With ``--kafka=embedded`` it is the ``noida-db``
  broker that ``make demo`` uses, and only the tests marked ``embedded_broker`` run: the
  subset that keeps the demo's broker honest (``make test`` runs it after the full suite).
- ``pg_url``: a fresh database on the machine's PostgreSQL server, created once per test
  session and dropped at the end.

``kafka_topic_factory`` gives each test its own uniquely named topic, so tests never see
each other's messages even though they share one broker.

Any test that requests one of these fixtures is marked ``integration`` automatically, so
``pytest -m "not integration"`` runs only the tests that need no server.

Rules for tests that use the broker (they hold on both brokers):

- Consumers in a group must set ``session_timeout_ms`` between 6000 and 1800000; the broker
  refuses to join a group otherwise (``InvalidSessionTimeoutError``). aiokafka's default
  (10000) is fine.
- Create aiokafka clients inside the test that uses them and stop them there: async tests
  run in their own event loop, so a client cannot be shared between tests.
- The broker auto-creates a topic (one partition) on first produce; use
  ``kafka_topic_factory`` rather than relying on that, so the partition count is known.

The embedded broker has faults that Apache Kafka has not (docs/kafka.md): it never expires
a group member that stopped heartbeating, it can wedge a rebalance when a member commits
during it, and it answers an empty fetch at once instead of holding it for
``fetch_max_wait_ms`` (an idle consumer busy-polls a core). Tests that depend on any of
these behaviours are not marked ``embedded_broker``.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from monitor.errors import BrokerError
from monitor.kafka.local_broker import BrokerProcess, LocalKafkaBroker
from tests.kafka import ApacheKafkaBroker, create_topics

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_START_HINT = (
    "Start the local server with: "
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)


_SERVICE_FIXTURES = frozenset({"kafka_bootstrap", "kafka_topic_factory", "pg_url"})
_KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "kafka_topic_factory"})
_EMBEDDED_MARK = "embedded_broker"
_BROKER_LOG_LINES = 120

#: The session's broker, once started: its log goes into the report of a failed test.
_BROKERS: list[BrokerProcess] = []

KafkaTopicFactory = Callable[..., Awaitable[str]]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--kafka`` (which broker) and ``--pg-admin-url`` (which PostgreSQL server)."""
    parser.addoption(
        "--kafka",
        choices=("apache", "embedded"),
        default="apache",
        help=(
            "the broker integration tests run on: apache (default; Apache Kafka from "
            "tests/kafka/pom.xml, fetched by `make kafka`) or embedded (the demo's noida-db "
            f"broker; runs only the tests marked {_EMBEDDED_MARK})"
        ),
    )
    parser.addoption(
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help=(
            "libpq URL of a PostgreSQL database with CREATE DATABASE rights; each test "
            f"session creates and drops its own database there (default: {DEFAULT_PG_ADMIN_URL})"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``embedded_broker`` marker."""
    config.addinivalue_line(
        "markers",
        f"{_EMBEDDED_MARK}: also runs on the embedded noida-db broker (pytest --kafka=embedded)",
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Name the broker the integration tests run on, and its version."""
    if config.getoption("--kafka") == "embedded":
        return [
            "kafka broker: embedded noida-db (monitor.kafka.local_broker), "
            f"only tests marked {_EMBEDDED_MARK}"
        ]
    try:
        return [f"kafka broker: {ApacheKafkaBroker(Path('.')).describe()}"]
    except BrokerError as error:
        return [f"kafka broker: Apache Kafka, not usable: {error}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that use a real server ``integration``; on the embedded broker, keep the
    ``embedded_broker`` subset only."""
    embedded = config.getoption("--kafka") == "embedded"
    deselected: list[pytest.Item] = []
    kept: list[pytest.Item] = []
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _SERVICE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)
        if embedded and not item.get_closest_marker(_EMBEDDED_MARK):
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the end of the broker's log to the report of a failed test that used it."""
    report: pytest.TestReport = yield
    if report.failed and _BROKERS and _KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
        broker = _BROKERS[-1]
        tail = broker.log_tail(_BROKER_LOG_LINES)
        report.sections.append((f"kafka broker log: {broker.log_path} (end)", tail))
    return report


# --- Kafka-protocol broker ------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[str]:
    """Start the session's Kafka broker; yield ``"127.0.0.1:PORT"``.

    Apache Kafka (:class:`tests.kafka.ApacheKafkaBroker`) by default: the storage is
    formatted in a fresh temporary directory, the node starts on free loopback ports, is
    ready when it answers a metadata request, and is stopped by PID (SIGTERM, then SIGKILL)
    at the end. With ``--kafka=embedded``, the demo's noida-db broker
    (:class:`monitor.kafka.local_broker.LocalKafkaBroker`). The end of the broker's log is added
    to the report of every failed test that used it.
    """
    folder = tmp_path_factory.mktemp("kafka")
    broker: BrokerProcess
    try:
        if pytestconfig.getoption("--kafka") == "embedded":
            broker = LocalKafkaBroker(folder)
        else:
            broker = ApacheKafkaBroker(folder)
        bootstrap = broker.start()
    except BrokerError as error:
        pytest.fail(str(error), pytrace=False)
    _BROKERS.append(broker)
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
        try:
            await create_topics(kafka_bootstrap, {topic: partitions})
        except AssertionError as error:
            pytest.fail(f"could not create Kafka topic {topic!r}: {error}")
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
