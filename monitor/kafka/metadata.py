"""Which partitions a topic has, asked of the cluster without creating the topic.

An aiokafka consumer without a group knows the partitions of a topic only once it tracks
that topic (``assign``); before that, ``partitions_for_topic`` answers ``None`` on Apache
Kafka even for a topic that exists. And a metadata request that names a missing topic
makes a broker with ``auto.create.topics.enable`` (Kafka's default) create it with the
broker's default partition count. :func:`topic_partitions` lists the cluster's topics
first and describes the topic only when it is there.
"""

from __future__ import annotations

from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

__all__ = ["topic_partitions"]


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
