"""What the cluster says: whether a broker answers, and which partitions a topic has.

:func:`check_broker` probes the bootstrap servers before a command starts.

An aiokafka consumer without a group knows the partitions of a topic only once it tracks
that topic (``assign``); before that, ``partitions_for_topic`` answers ``None`` on Apache
Kafka even for a topic that exists. And a metadata request that names a missing topic
makes a broker with ``auto.create.topics.enable`` (Kafka's default) create it with the
broker's default partition count. :func:`topic_partitions` lists the cluster's topics
first and describes the topic only when it is there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from monitor.errors import BrokerUnreachableError, ConfigError
from monitor.settings import KafkaSettings

__all__ = ["check_broker", "topic_partitions"]


async def topic_partitions(topic: str, **client_options: Any) -> frozenset[int] | None:
    """The partition ids of ``topic``, or ``None`` when the cluster has no such topic.

    ``client_options`` are an aiokafka client's connection keywords (``bootstrap_servers``,
    security settings, ``request_timeout_ms``). A topic that exists but whose partitions
    the answering broker does not know yet gives an empty set. Raises aiokafka's
    ``KafkaError`` when no broker answers.
    """
    admin = AIOKafkaAdminClient(**client_options)
    try:
        await admin.start()
        if topic not in await admin.list_topics():
            return None
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return frozenset(
        partition["partition"]
        for entry in described
        if entry["topic"] == topic and entry["error_code"] == 0
        for partition in entry["partitions"]
    )


def check_broker(kafka: KafkaSettings, timeout_s: float = 15.0, *, sizes: bool = False) -> None:
    """Raise :class:`BrokerUnreachableError` unless a broker answers a metadata request.

    With ``sizes``, also raise :class:`ConfigError` when ``kafka.max_request_bytes`` is
    more than a broker accepts in one message (its ``message.max.bytes``): the producer
    would send what the broker refuses.
    """

    async def probe() -> int | None:
        admin = AIOKafkaAdminClient(
            **kafka.client_options(), request_timeout_ms=int(timeout_s * 1000)
        )
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            return await _message_max_bytes(admin) if sizes else None
        finally:
            await admin.close()

    # The probe's failure is reported below, in one line; aiokafka would log it too.
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        accepted = asyncio.run(probe())
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerUnreachableError(
            f"no Kafka broker answered at {kafka.bootstrap} "
            f"({kafka.security_protocol}) within {timeout_s:g} s: {exc!r}; check "
            "ADVMON_KAFKA__BOOTSTRAP and the ADVMON_KAFKA__ security settings"
        ) from None
    finally:
        client_log.setLevel(level)
    if accepted is not None and kafka.max_request_bytes > accepted:
        raise ConfigError(
            f"ADVMON_KAFKA__MAX_REQUEST_BYTES={kafka.max_request_bytes} is more than the "
            f"broker accepts in one message (message.max.bytes={accepted}); lower it"
        )


async def _message_max_bytes(admin: AIOKafkaAdminClient) -> int | None:
    """The smallest ``message.max.bytes`` of the cluster's brokers (``None``: unknown)."""
    cluster = await admin.describe_cluster()
    resources = [
        ConfigResource(
            ConfigResourceType.BROKER, str(broker["node_id"]), {"message.max.bytes": None}
        )
        for broker in cluster.get("brokers", [])
    ]
    if not resources:
        return None
    values: list[int] = []
    for response in await admin.describe_configs(resources):
        for resource in response.to_object().get("resources", []):
            for entry in resource.get("config_entries", []):
                if entry.get("config_names") == "message.max.bytes" and entry.get("config_value"):
                    values.append(int(entry["config_value"]))
    return min(values, default=None)
