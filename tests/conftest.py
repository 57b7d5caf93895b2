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
- The broker auto-creates a topic (one partition) on first produce; use
  ``kafka_topic_factory`` rather than relying on that, so the partition count is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from importlib.resources import files
from pathlib import Path

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from psycopg import sql
from sqlalchemy.engine import make_url

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_START_HINT = (
    "Start the local server with: "
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)

BROKER_START_TIMEOUT_S = 30.0
BROKER_STOP_TIMEOUT_S = 10.0
BROKER_START_ATTEMPTS = 3

# The noida-db binary is linked against a newer glibc symbol version than some machines
# have; the loader warns on every start, but the broker works. Keep it out of messages.
_GLIBC_WARNING = re.compile(r"weak version `GLIBC_[0-9.]+' not found")
_PORT_IN_USE = "already in use"

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


def noida_db_binary() -> Path:
    """Return the broker executable shipped inside the installed ``noida_db`` package."""
    binary = Path(str(files("noida_db").joinpath("noida-db")))
    if not binary.is_file():
        pytest.fail(
            f"noida-db binary not found at {binary}; reinstall the dev dependencies "
            "with `make install`",
            pytrace=False,
        )
    if not os.access(binary, os.X_OK):
        # Wheels installed by some tools drop the executable bit.
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the broker if pytest dies without running its finalizers."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _read_log(log_path: Path) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError as error:
        return f"<could not read {log_path}: {error}>"
    lines = [line for line in text.splitlines() if not _GLIBC_WARNING.search(line)]
    return "\n".join(lines) or "<empty>"


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=BROKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=BROKER_STOP_TIMEOUT_S)


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _check_kafka_metadata(bootstrap: str) -> None:
    """Raise unless the broker answers a Kafka metadata request listing itself."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    if not cluster.get("brokers"):
        raise RuntimeError(f"metadata from {bootstrap} lists no brokers: {cluster}")


def _kafka_answers_metadata(bootstrap: str, timeout_s: float) -> Exception | None:
    """Return None if the broker answers metadata within ``timeout_s``, else the error."""
    # A private loop: this runs in a sync session fixture and must not touch the event
    # loop pytest-asyncio manages.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(_check_kafka_metadata(bootstrap), timeout_s))
    except Exception as error:
        return error
    finally:
        loop.close()
    return None


def _broker_command(binary: Path, port: int, data_dir: Path) -> list[str]:
    return [
        str(binary),
        "start",
        "--only",
        "kafka",
        "--kafka-port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]


def _start_broker(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a Kafka-protocol broker for this test session; yield ``"127.0.0.1:PORT"``.

    The broker is ``noida-db start --only kafka`` from the pinned ``noida-db`` package,
    listening on a free loopback port, with its data and its log (``broker.log``) in a
    fresh temporary directory. It is ready when it answers a Kafka metadata request; it is
    stopped with SIGTERM (SIGKILL after 10 s) when the session ends.

    Consumers that join a group must use ``session_timeout_ms >= 6000`` (the broker rejects
    shorter sessions). See this module's docstring for the broker's other quirks.
    """
    binary = noida_db_binary()
    data_dir = tmp_path_factory.mktemp("kafka")
    log_path = data_dir / "broker.log"
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    process: subprocess.Popen[bytes] | None = None
    command: list[str] = []
    bootstrap = ""
    failure = ""

    # Another process can take the free port between probing and binding it; the broker
    # then exits at once saying so, and we try a new port.
    for _attempt in range(BROKER_START_ATTEMPTS):
        port = free_loopback_port()
        bootstrap = f"127.0.0.1:{port}"
        command = _broker_command(binary, port, data_dir)
        process = _start_broker(command, log_path)
        failure = _wait_for_broker(process, port, bootstrap, deadline)
        if not failure:
            break
        _stop_process(process)
        if _PORT_IN_USE not in _read_log(log_path) or time.monotonic() >= deadline:
            break
        log_path.write_bytes(b"")

    if failure:
        pytest.fail(
            f"Kafka-protocol broker (noida-db) did not come up on {bootstrap}: {failure}\n"
            f"command: {shlex.join(command)}\n"
            f"log ({log_path}):\n{_read_log(log_path)}",
            pytrace=False,
        )
    assert process is not None
    try:
        yield bootstrap
    finally:
        _stop_process(process)


def _wait_for_broker(
    process: subprocess.Popen[bytes], port: int, bootstrap: str, deadline: float
) -> str:
    """Wait until the broker serves Kafka requests; return "" or why it did not."""
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        exit_code = process.poll()
        if exit_code is not None:
            return f"the broker exited with status {exit_code}"
        if _accepts_tcp(port):
            remaining = max(deadline - time.monotonic(), 0.1)
            last_error = _kafka_answers_metadata(bootstrap, min(remaining, 5.0))
            if last_error is None:
                return ""
        time.sleep(0.1)
    detail = f"; last metadata error: {last_error!r}" if last_error else ""
    return f"not ready after {BROKER_START_TIMEOUT_S:.0f} s{detail}"


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
