"""The worker's intake: the inference topics' own consumer group, and where it starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from monitor.worker.intake import inference_group
from schemas import Decision
from tests.integration.kafka_io import (
    OutputTopics,
    committed_offsets,
    create_topics,
    produce,
    read_topic,
    unique_name,
)
from tests.integration.traffic import DemoDetector, inference_event
from tests.integration.workers import ModelEntry, WorkerLauncher, write_worker_config

pytestmark = pytest.mark.integration

WAIT_S = 90.0


async def _commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """Commit ``offset`` on partition 0 of ``topic`` for ``group``, as its worker would."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    try:
        await consumer.commit({partition: OffsetAndMetadata(offset, "")})
    finally:
        await consumer.stop()


async def test_the_inference_group_starts_where_the_app_group_left_off_then_commits_its_own(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    tmp_path: Path,
) -> None:
    """A worker upgraded from a version whose Faust group (``<app_id>``) read the inference
    topics goes on from that group's offset instead of reading the topic from its start."""
    topics = await OutputTopics.create(kafka_bootstrap, "intake")
    inference = unique_name("intake-inference")
    await create_topics(kafka_bootstrap, {inference: 1})
    images = demo_detector.clean.pick(20, flagged=False)
    await produce(
        kafka_bootstrap, inference, [inference_event(f"e{i}", x) for i, x in enumerate(images)]
    )
    app_id = unique_name("intake")
    await _commit(kafka_bootstrap, app_id, inference, 12)  # the old worker's place
    config = write_worker_config(
        tmp_path / "advmon.yaml",
        detector=demo_detector.path,
        models=[ModelEntry("digits", [inference])],
        topics=topics,
    )
    worker = worker_launcher.start("intake", config, app_id=app_id)
    await worker.wait_consuming(inference, timeout_s=WAIT_S)

    decisions = await read_topic(
        kafka_bootstrap, topics.decisions, lambda records: len(records) >= 8, timeout_s=WAIT_S
    )
    decided = {Decision.model_validate_json(r.value).event_id for r in decisions}
    assert decided == {f"e{i}" for i in range(12, 20)}
    group = inference_group(app_id)
    committed: dict[int, int] = {}
    for _ in range(100):
        committed = await committed_offsets(kafka_bootstrap, group, inference)
        if committed.get(0) == 20:
            break
        await asyncio.sleep(0.2)
    assert committed == {0: 20}
    assert orjson.loads(decisions[0].value)["scope"] == "request"
    worker.assert_running()


async def test_a_worker_stopped_under_load_exits_cleanly_and_its_successor_loses_nothing(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    tmp_path: Path,
) -> None:
    """SIGTERM while batches are in flight: the intake drains them through the producer
    before Faust stops it, the worker exits 0, and the next worker decides the rest."""
    topics = await OutputTopics.create(kafka_bootstrap, "stop-load")
    inference = unique_name("stop-load-inference")
    await create_topics(kafka_bootstrap, {inference: 1})
    config = write_worker_config(
        tmp_path / "advmon.yaml",
        detector=demo_detector.path,
        models=[ModelEntry("digits", [inference])],
        topics=topics,
    )
    app_id = unique_name("stop-load")
    first = worker_launcher.start("stop-load-a", config, app_id=app_id)
    await first.wait_consuming(inference, timeout_s=WAIT_S)
    images = demo_detector.clean.pick(40, flagged=False)
    values = [inference_event(f"s{i}", images[i % len(images)]) for i in range(1500)]
    sending = asyncio.create_task(produce(kafka_bootstrap, inference, values, delay_s=0.004))
    await read_topic(
        kafka_bootstrap, topics.decisions, lambda records: len(records) >= 200, timeout_s=WAIT_S
    )
    assert first.stop() == 0, first.log()[-3000:]
    await sending
    second = worker_launcher.start("stop-load-b", config, app_id=app_id)
    await second.wait_consuming(inference, timeout_s=WAIT_S)
    decisions = await read_topic(
        kafka_bootstrap,
        topics.decisions,
        lambda records: (
            {Decision.model_validate_json(r.value).event_id for r in records}
            >= {f"s{i}" for i in range(1500)}
        ),
        timeout_s=WAIT_S,
    )
    decided = {Decision.model_validate_json(r.value).event_id for r in decisions}
    assert decided == {f"s{i}" for i in range(1500)}
    second.assert_running()
