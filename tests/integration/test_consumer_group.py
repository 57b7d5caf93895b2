"""Scale-out: two workers in one consumer group share an inference topic's partitions.

With at-least-once processing, a worker killed mid-stream loses no decision: the other
takes over its partitions once the broker expires the dead member (the workers' session
timeout is 6 s) and resumes from the last committed offsets, so some events may be decided
twice, never zero times. An event without a decision is reported as *lost* when the group
has committed an offset past it (nothing will ever decide it) and as *late* otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from monitor.worker.intake import inference_group
from schemas import Decision, Scope
from tests.integration.kafka_io import (
    OutputTopics,
    Produced,
    Record,
    committed_offsets,
    create_topics,
    produce,
    read_topic,
    unique_name,
)
from tests.integration.traffic import DemoDetector, inference_event
from tests.integration.workers import (
    ModelEntry,
    WorkerLauncher,
    WorkerProcess,
    write_worker_config,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
ALL_PARTITIONS = set(range(PARTITIONS))
WAIT_S = 90.0
#: The workers' session timeout is 6 s; a real broker moves a dead member's partitions
#: within about twice that.
TAKEOVER_S = 20.0


@dataclass
class Group:
    """Two workers with one app id (one consumer group) on a 4-partition inference topic."""

    inference: str
    topics: OutputTopics
    workers: list[WorkerProcess]


async def _start_group(
    kafka_bootstrap: str,
    detector: DemoDetector,
    launcher: WorkerLauncher,
    folder: Path,
    *,
    static: bool = False,
) -> Group:
    inference = unique_name("group-inference")
    await create_topics(kafka_bootstrap, {inference: PARTITIONS})
    topics = await OutputTopics.create(kafka_bootstrap, "group")
    config = write_worker_config(
        folder / "worker.yaml",
        detector=detector.path,
        models=[ModelEntry("digits", [inference], "enforce")],
        topics=topics,
        quarantine={"limit": 10_000},
    )
    app_id = unique_name("group")
    workers = [
        _start_worker(launcher, name, config, app_id, static) for name in ("worker-a", "worker-b")
    ]
    return Group(inference, topics, workers)


def _start_worker(
    launcher: WorkerLauncher, name: str, config: Path, app_id: str, static: bool
) -> WorkerProcess:
    """Start a worker of the group; with ``static``, it has a static membership id."""
    if static:
        return launcher.start(name, config, app_id=app_id, worker__instance_id=f"{app_id}-{name}")
    return launcher.start(name, config, app_id=app_id)


async def _shares(workers: list[WorkerProcess], topic: str) -> dict[str, set[int]] | None:
    """Each worker's partitions of ``topic``, or None unless all answer 200."""
    shares = {}
    for worker in workers:
        worker.assert_running()
        page = await worker.healthz()
        if page is None or page.status != 200:
            return None
        shares[worker.name] = page.assigned(topic)
    return shares


async def _wait_for_split(
    workers: list[WorkerProcess], topic: str, *, timeout_s: float = 60.0
) -> dict[str, set[int]]:
    """Wait until every worker holds some partitions of ``topic`` and together all of them."""
    deadline = time.monotonic() + timeout_s
    shares = None
    while time.monotonic() < deadline:
        shares = await _shares(workers, topic)
        if shares is not None:
            held = list(shares.values())
            split = all(held) and sum(len(s) for s in held) == PARTITIONS
            if split and set().union(*held) == ALL_PARTITIONS:
                return shares
        await asyncio.sleep(0.2)
    raise AssertionError(f"the workers did not split {topic}; last shares: {shares}")


def _events(prefix: str, detector: DemoDetector, count: int, offset: int) -> list[bytes]:
    images = detector.clean.images[offset : offset + count // 2]
    adversarial = detector.pgd.images[offset : offset + count - len(images)]
    return [
        inference_event(f"{prefix}-{i}", image, source=f"caller-{i % 3}")
        for i, image in enumerate([*images, *adversarial])
    ]


async def _send(
    bootstrap: str, topic: str, values: list[bytes], delay_s: float = 0.0
) -> list[Produced]:
    """Send ``values`` round-robin over the partitions, so every worker gets some."""
    return await produce(
        bootstrap,
        topic,
        values,
        partitions=[i % PARTITIONS for i in range(len(values))],
        delay_s=delay_s,
    )


def _event_id(produced: Produced) -> str:
    assert produced.value is not None
    event_id: str = orjson.loads(produced.value)["event_id"]
    return event_id


async def _every_event_decided(
    bootstrap: str, group: Group, sent: list[Produced], app_id: str
) -> Counter[str]:
    """Decisions per event id once every sent event has one.

    Fails naming each event without a decision after :data:`WAIT_S` as *lost* (the group
    committed an offset past it, so no worker will read it again) or *late* (not committed
    yet: a worker may still decide it).
    """
    wanted = {_event_id(p) for p in sent}
    records = await read_topic(
        bootstrap,
        group.topics.decisions,
        lambda r: set(_decided(r)) >= wanted,
        timeout_s=WAIT_S,
    )
    decided = _decided(records)
    missing = [p for p in sent if _event_id(p) not in decided]
    if missing:
        committed = await committed_offsets(bootstrap, inference_group(app_id), group.inference)
        lost = [p for p in missing if committed.get(p.partition, -1) > p.offset]
        late = [p for p in missing if p not in lost]

        def named(events: list[Produced]) -> str:
            return ", ".join(f"{_event_id(p)} (p{p.partition}@{p.offset})" for p in events)

        raise AssertionError(
            f"{len(missing)} of {len(sent)} events have no decision after {WAIT_S:.0f} s; "
            f"lost (offset committed past them): {len(lost)} [{named(lost)}]; late (not "
            f"committed yet): {len(late)} [{named(late)}]; committed offsets: {committed}"
        )
    return decided


def _decided(records: list[Record]) -> Counter[str]:
    decisions = (Decision.model_validate_json(r.value) for r in records)
    return Counter(d.event_id for d in decisions if d.scope is Scope.REQUEST)


async def test_two_workers_share_the_partitions_and_decide_every_event(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
) -> None:
    group = await _start_group(kafka_bootstrap, demo_detector, worker_launcher, tmp_path)
    shares = await _wait_for_split(group.workers, group.inference)

    sent = await _send(kafka_bootstrap, group.inference, _events("shared", demo_detector, 80, 0))
    decided = await _every_event_decided(kafka_bootstrap, group, sent, group.workers[0].app_id)
    # The group stayed as it was, so nothing was processed twice.
    assert await _shares(group.workers, group.inference) == shares
    assert [e for e, n in decided.items() if n > 1] == []


async def test_a_worker_killed_mid_stream_loses_no_decision(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    group = await _start_group(kafka_bootstrap, demo_detector, worker_launcher, tmp_path)
    shares = await _wait_for_split(group.workers, group.inference)
    victim, survivor = group.workers
    orphaned = shares[victim.name]

    # Phase 1: a steady stream; the victim dies while it is being processed.
    phase_1 = _events("before", demo_detector, 120, 0)
    streaming = asyncio.create_task(_send(kafka_bootstrap, group.inference, phase_1, delay_s=0.02))
    await read_topic(
        kafka_bootstrap, group.topics.decisions, lambda r: len(r) >= 20, timeout_s=WAIT_S
    )
    victim.kill()
    killed_at = time.monotonic()
    sent = await streaming
    # Phase 2: after the kill.
    sent += await _send(kafka_bootstrap, group.inference, _events("after", demo_detector, 80, 120))

    took_over = False
    while time.monotonic() < killed_at + TAKEOVER_S:
        page = await survivor.healthz()
        survivor.assert_running()
        if (
            page is not None
            and page.status == 200
            and page.assigned(group.inference) == ALL_PARTITIONS
        ):
            took_over = True
            break
        await asyncio.sleep(0.5)
    took_over_s = time.monotonic() - killed_at
    assert took_over, (
        f"{TAKEOVER_S:.0f} s after worker-a was SIGKILLed, worker-b still does not hold its "
        f"partitions {sorted(orphaned)} of {group.inference}"
    )
    record_property("takeover_seconds", round(took_over_s, 1))

    decided = await _every_event_decided(kafka_bootstrap, group, sent, survivor.app_id)
    duplicates = sum(n - 1 for n in decided.values())
    where = Counter(
        (p.partition, "victim's" if p.partition in orphaned else "survivor's")
        for p in sent
        if decided[_event_id(p)] > 1
    )
    record_property("duplicate_decisions", duplicates)
    print(
        f"survivor took over after {took_over_s:.1f} s; "
        f"{duplicates} duplicate decisions for {len(sent)} events; events decided more "
        f"than once by partition: {dict(sorted(where.items()))}"
    )


async def test_a_worker_killed_mid_stream_and_restarted_loses_no_decision(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """SIGKILL a worker with a static membership id, restart it: nothing is lost.

    This is how a worker of a StatefulSet comes back (ADVMON_WORKER__INSTANCE_ID = pod
    name), here on another web port. Back within the 6 s session timeout, it takes its own
    partitions back without a rebalance; later, the broker has expired it and the group
    rebalances. Either way it resumes from the last committed offsets.
    """
    group = await _start_group(
        kafka_bootstrap, demo_detector, worker_launcher, tmp_path, static=True
    )
    await _wait_for_split(group.workers, group.inference)
    victim, survivor = group.workers

    phase_1 = _events("before", demo_detector, 120, 0)
    streaming = asyncio.create_task(_send(kafka_bootstrap, group.inference, phase_1, delay_s=0.02))
    await read_topic(
        kafka_bootstrap, group.topics.decisions, lambda r: len(r) >= 20, timeout_s=WAIT_S
    )
    victim.kill()
    sent = await streaming
    sent += await _send(kafka_bootstrap, group.inference, _events("after", demo_detector, 80, 120))

    app_id = victim.app_id
    config = tmp_path / "worker.yaml"
    revived = worker_launcher.start(
        "worker-a-restarted", config, app_id=app_id, worker__instance_id=f"{app_id}-worker-a"
    )
    await _wait_for_split([survivor, revived], group.inference, timeout_s=WAIT_S)

    decided = await _every_event_decided(kafka_bootstrap, group, sent, app_id)
    duplicates = sum(n - 1 for n in decided.values())
    rereads = 0.0
    for worker in (survivor, revived):
        metrics = await worker.metrics()
        rereads += sum(metrics.by_label("advmon_messages_reread_total", "topic").values())
    record_property("duplicate_decisions", duplicates)
    record_property("partitions_reread", rereads)
    print(
        f"{duplicates} duplicate decisions for {len(sent)} events after a restart; "
        f"partitions read again from a skipped message: {rereads:.0f}"
    )
