"""Apache Kafka for the integration tests and benchmarks: one KRaft node on loopback.

The broker's jars come from Maven Central through the committed descriptor
``tests/kafka/pom.xml``; ``make kafka`` (which ``make test`` and ``make bench`` run) copies
them into ``.kafka/<version>/libs/`` once. Nothing is fetched here: when the jars are
missing, :meth:`ApacheKafkaBroker.start` fails and says how to get them.

The node runs in KRaft combined mode (``process.roles=broker,controller``) on two free
loopback ports, with production defaults except the settings in :data:`TEST_SETTINGS`.

>>> with ApacheKafkaBroker(Path("/tmp/advmon-kafka")) as bootstrap:  # doctest: +SKIP
...     print(bootstrap)
127.0.0.1:40517
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from monitor.errors import BrokerError
from monitor.kafka.local_broker import BrokerProcess, free_loopback_port

__all__ = [
    "POM",
    "TEST_SETTINGS",
    "ApacheKafkaBroker",
    "BrokerError",
    "create_topics",
    "kafka_libs",
    "kafka_version",
]

POM = Path(__file__).with_name("pom.xml")
_REPOSITORY = POM.parents[2]
_LOG4J_CONFIG = Path(__file__).with_name("log4j2.yaml")
_MAVEN = "{http://maven.apache.org/POM/4.0.0}"
_CLUSTER_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")

#: Broker settings that differ from Apache Kafka's defaults, and why (docs/kafka.md).
TEST_SETTINGS: dict[str, str] = {
    # One node: the internal topics cannot have three replicas.
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # A new group's first rebalance waits 3 s by default for more members to join; tests
    # start hundreds of groups, most with one member.
    "group.initial.rebalance.delay.ms": "0",
}


def kafka_version() -> str:
    """The Apache Kafka version pinned in ``tests/kafka/pom.xml``."""
    root = ElementTree.parse(POM).getroot()
    version = root.findtext(f"{_MAVEN}properties/{_MAVEN}kafka.version")
    if not version:
        raise BrokerError(f"{POM} sets no kafka.version property")
    return version.strip()


def kafka_libs(version: str | None = None) -> Path:
    """Where ``make kafka`` puts the broker's jars for ``version`` (default: the pinned one)."""
    return _REPOSITORY / ".kafka" / (version or kafka_version()) / "libs"


async def create_topics(
    bootstrap: str, partitions: dict[str, int], *, timeout_s: float = 20.0
) -> None:
    """Create each topic with its partition count and wait until metadata reports it so.

    A cluster creates a topic in its controller and tells the brokers afterwards, so the
    metadata a broker serves right after ``CreateTopics`` may not list the topic yet (or may
    list it without partitions). Raises ``AssertionError`` naming the topics when a creation
    is refused or the counts are still wrong after ``timeout_s``.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(name=name, num_partitions=n, replication_factor=1)
                for name, n in partitions.items()
            ],
            timeout_ms=int(timeout_s * 1000),
        )
        # aiokafka returns per-topic errors in the response instead of raising.
        errors = [f"{e[0]}: error {e[1]} ({e[2]})" for e in response.topic_errors if e[1] != 0]
        assert not errors, f"could not create topics: {errors}"
        deadline = time.monotonic() + timeout_s
        while True:
            described = await admin.describe_topics(list(partitions))
            reported = {topic["topic"]: len(topic["partitions"]) for topic in described}
            if reported == partitions or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    assert reported == partitions, f"asked for {partitions}, the broker reports {reported}"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerError(
            "Apache Kafka needs Java 17 or newer: install it (Debian: openjdk-17-jre-headless) "
            "or set JAVA_HOME"
        )
    return found


class ApacheKafkaBroker(BrokerProcess):
    """One Apache Kafka node in KRaft combined mode on loopback, as a context manager.

    Parameters
    ----------
    data_dir
        Where the node keeps its properties, its metadata and log segments, and its log
        (``broker.log``).
    start_timeout_s
        How long to wait for the node to answer a Kafka metadata request.
    heap
        The JVM's ``-Xmx``.
    """

    port_in_use = "Address already in use"
    stop_timeout_s = 30.0

    def __init__(self, data_dir: Path, *, start_timeout_s: float = 60.0, heap: str = "1g") -> None:
        super().__init__(data_dir, start_timeout_s=start_timeout_s)
        self.heap = heap
        self.version = kafka_version()
        self.libs = kafka_libs(self.version)

    def describe(self) -> str:
        """One line naming the broker, e.g. for pytest's report header."""
        return f"Apache Kafka {self.version} (KRaft, single combined node, jars in {self.libs})"

    def _prepare(self) -> None:
        jar = self.libs / f"kafka_2.13-{self.version}.jar"
        if not jar.is_file():
            raise BrokerError(
                f"the Apache Kafka {self.version} jars are not in {self.libs}: run `make kafka` "
                f"(Maven copies them from Maven Central, as {POM.relative_to(_REPOSITORY)} says)"
            )

    def _java_command(self, main_class: str, *arguments: str) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG4J_CONFIG}",
            "-cp",
            f"{self.libs}/*",
            main_class,
            *arguments,
        ]

    def _write_properties(self, port: int, controller_port: int) -> Path:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
        } | TEST_SETTINGS
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        return path

    def _format(self, properties: Path) -> None:
        shutil.rmtree(self.data_dir / "data", ignore_errors=True)
        # A cluster id is 16 random bytes in URL-safe base64 without padding (22 characters).
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        assert _CLUSTER_ID.match(cluster_id)
        command = self._java_command(
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(properties)
        )
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            formatted = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False
            )
        if formatted.returncode != 0:
            raise BrokerError(
                f"formatting the KRaft storage failed (status {formatted.returncode})\n"
                f"log ({self.log_path}):\n{self.log_tail()}"
            )

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        controller_port = free_loopback_port()
        while controller_port == port:
            controller_port = free_loopback_port()
        properties = self._write_properties(port, controller_port)
        self._format(properties)
        command = self._java_command("kafka.Kafka", str(properties))
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
        # SIGKILL: a JVM asked to stop politely by a dying parent may outlive the session.
        return self._spawn(command, signal.SIGKILL)
