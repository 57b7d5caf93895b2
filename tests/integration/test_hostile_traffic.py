"""Hostile messages mixed into good traffic, on a real broker: the worker stays up, each
hostile message is dead-lettered with a reason, and every good event is decided."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas import DeadLetter, Decision
from tests.integration.kafka_io import (
    OutputTopics,
    create_topics,
    produce,
    read_topic,
    unique_name,
)
from tests.integration.traffic import DemoDetector, inference_event
from tests.integration.workers import ModelEntry, WorkerLauncher, write_worker_config

pytestmark = pytest.mark.integration

WAIT_S = 90.0


def hostile_messages() -> dict[str, bytes]:
    """Messages a hostile client can make the serving stack log, by name."""
    tensor = {"dtype": "float32", "data_b64": "AAAA"}
    return {
        "70 dimensions": orjson.dumps(
            {"event_id": "h-dims", "model_id": "digits", "input": {**tensor, "shape": [1] * 70}}
        ),
        "overflowing shape": orjson.dumps(
            {
                "event_id": "h-overflow",
                "model_id": "digits",
                "input": {**tensor, "shape": [0, 2**63]},
            }
        ),
        "800 KB invalid event": b'{"event_id": "h-big", "model_id": "digits", "input": "'
        + b"A" * 800_000
        + b'"}',
        "not JSON": b"\x00\xff not json",
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    }


async def test_hostile_messages_are_dead_lettered_and_good_events_decided(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    tmp_path: Path,
) -> None:
    topics = await OutputTopics.create(kafka_bootstrap, "hostile")
    inference = unique_name("hostile-inference")
    await create_topics(kafka_bootstrap, {inference: 1})
    config = write_worker_config(
        tmp_path / "advmon.yaml",
        detector=demo_detector.path,
        models=[ModelEntry("digits", [inference])],
        topics=topics,
    )
    worker = worker_launcher.start("hostile", config)
    await worker.wait_consuming(inference, timeout_s=WAIT_S)

    good = demo_detector.clean.pick(20, flagged=False)
    hostile = hostile_messages()
    values: list[bytes] = []
    for i, image in enumerate(good):
        values.append(inference_event(f"good-{i}", image))
        if i < len(hostile):
            values.append(list(hostile.values())[i])
    await produce(kafka_bootstrap, inference, values)

    decisions = await read_topic(
        kafka_bootstrap,
        topics.decisions,
        lambda records: len(records) >= len(good),
        timeout_s=WAIT_S,
    )
    decided = {Decision.model_validate_json(r.value).event_id for r in decisions}
    assert decided >= {f"good-{i}" for i in range(len(good))}
    letters = await read_topic(
        kafka_bootstrap,
        topics.dead_letter,
        lambda records: len(records) >= len(hostile),
        timeout_s=WAIT_S,
    )
    dead = [DeadLetter.model_validate_json(r.value) for r in letters]
    assert len(dead) == len(hostile), [d.reason for d in dead]
    assert all(d.reason and d.error for d in dead)
    sizes = {d.value_size: d for d in dead}
    big = next(v for v in hostile.values() if len(v) > 800_000)
    letter = sizes[len(big)]
    assert letter.value_truncated
    assert letter.value_sha256 == hashlib.sha256(big).hexdigest()
    assert max(len(r.value) for r in letters) < 100_000  # bounded, whatever came in
    worker.assert_running()


async def test_a_producer_request_size_the_broker_refuses_stops_the_worker_at_start(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    tmp_path: Path,
) -> None:
    topics = await OutputTopics.create(kafka_bootstrap, "sizes")
    config = write_worker_config(
        tmp_path / "advmon.yaml",
        detector=demo_detector.path,
        models=[ModelEntry("digits", [unique_name("sizes-inference")])],
        topics=topics,
    )
    worker = worker_launcher.start("sizes", config, kafka__max_request_bytes="50000000")
    assert worker.process is not None
    code = worker.process.wait(timeout=WAIT_S)
    assert code == 1
    assert "is more than the broker accepts in one message (message.max.bytes=" in worker.log()


async def _limit_record_batches(bootstrap: str, topic: str, max_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(max_bytes)})]
        )
    finally:
        await admin.close()


async def test_a_decision_the_broker_refuses_for_good_is_set_aside_and_the_others_published(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    tmp_path: Path,
) -> None:
    """Decisions travel in record batches; the broker judges a batch as a whole, so a
    batch it refuses is sent again record by record, and only the refused one is lost."""
    topics = await OutputTopics.create(kafka_bootstrap, "refused")
    inference = unique_name("refused-inference")
    await create_topics(kafka_bootstrap, {inference: 1})
    # A decision with ids of 10 characters fits; one with ids of 500 does not.
    await _limit_record_batches(kafka_bootstrap, topics.decisions, 1_200)
    config = write_worker_config(
        tmp_path / "advmon.yaml",
        detector=demo_detector.path,
        models=[ModelEntry("digits", [inference])],
        topics=topics,
    )
    worker = worker_launcher.start("refused", config)
    await worker.wait_consuming(inference, timeout_s=WAIT_S)
    good = demo_detector.clean.pick(12, flagged=False)
    values = [inference_event(f"ok-{i:07d}", image) for i, image in enumerate(good)]
    huge = "h" * 500
    values.insert(5, inference_event(huge, good[0], source=huge, request_id=huge))
    await produce(kafka_bootstrap, inference, values)

    decisions = await read_topic(
        kafka_bootstrap,
        topics.decisions,
        lambda records: len(records) >= len(good),
        timeout_s=WAIT_S,
    )
    decided = [Decision.model_validate_json(r.value).event_id for r in decisions]
    assert sorted(decided) == [f"ok-{i:07d}" for i in range(len(good))]
    metrics = await worker.wait_for_metrics(
        lambda m: bool(m.by_label("advmon_records_set_aside_total", "topic")),
        timeout_s=WAIT_S,
    )
    set_aside = metrics.by_label("advmon_records_set_aside_total", "reason")
    assert set_aside == {"MessageSizeTooLargeError": 1.0}
    assert metrics.by_label("advmon_records_set_aside_total", "topic") == {topics.decisions: 1.0}
    worker.assert_running()
