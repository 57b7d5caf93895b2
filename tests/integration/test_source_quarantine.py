"""Per-source quarantine: a source past its limit of flagged events is quarantined once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas import Action, Decision, Scope
from tests.integration.kafka_io import (
    OutputTopics,
    Record,
    committed_offsets,
    create_topics,
    end_offsets,
    produce,
    read_topic,
    unique_name,
)
from tests.integration.traffic import DemoDetector, inference_event
from tests.integration.workers import ModelEntry, WorkerLauncher, write_worker_config

pytestmark = [pytest.mark.integration, pytest.mark.embedded_broker]

LIMIT = 5
WINDOW_S = 60
TTL_S = 300
WAIT_S = 90.0

ENFORCED = "digits"
OBSERVED = "digits-observe"

#: source -> (model, number of events, whether the detector flags them)
SOURCES: dict[str, tuple[str, int, bool]] = {
    "attacker-enforced": (ENFORCED, 12, True),
    "attacker-observed": (OBSERVED, 12, True),
    "near-miss": (ENFORCED, LIMIT - 1, True),
    "users": (ENFORCED, 25, False),
}


async def _wait_until_consumed(
    bootstrap: str, group_id: str, topic: str, *, timeout_s: float
) -> dict[int, int]:
    """Wait until ``group_id`` committed the end of every partition of ``topic``.

    The worker commits an offset only after handling the message, so once the commits
    reach the end, every message on the topic has been handled.
    """
    ends = {p: end for p, end in (await end_offsets(bootstrap, topic)).items() if end > 0}
    deadline = time.monotonic() + timeout_s
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        committed = await committed_offsets(bootstrap, group_id, topic)
        if all(committed.get(p, -1) >= end for p, end in ends.items()):
            return committed
        await asyncio.sleep(0.5)
    raise AssertionError(f"{group_id} committed {committed} on {topic}, the ends are {ends}")


async def test_a_source_past_its_limit_is_quarantined_once(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
) -> None:
    inference = unique_name("quarantine-inference")
    await create_topics(kafka_bootstrap, {inference: 2})
    topics = await OutputTopics.create(kafka_bootstrap, "quarantine")
    config = write_worker_config(
        tmp_path / "worker.yaml",
        detector=demo_detector.path,
        models=[
            ModelEntry(ENFORCED, [inference], "enforce"),
            ModelEntry(OBSERVED, [inference], "observe"),
        ],
        topics=topics,
        quarantine={"limit": LIMIT, "window_seconds": WINDOW_S, "ttl_seconds": TTL_S},
    )
    worker = worker_launcher.start("quarantine", config)
    await worker.wait_consuming(inference, {0, 1})

    flagged = iter(
        demo_detector.pgd.pick(sum(n for _, n, f in SOURCES.values() if f), flagged=True)
    )
    clean = iter(
        demo_detector.clean.pick(sum(n for _, n, f in SOURCES.values() if not f), flagged=False)
    )
    events: list[tuple[str, bytes]] = []
    for source, (model, count, is_flagged) in SOURCES.items():
        for i in range(count):
            image = next(flagged) if is_flagged else next(clean)
            event_id = f"{source}-{i}"
            events.append(
                (event_id, inference_event(event_id, image, model_id=model, source=source))
            )
    # Interleave the sources, as concurrent callers would.
    order = np.random.default_rng(3).permutation(len(events)).tolist()
    events = [events[i] for i in order]
    sent_at = datetime.now(UTC)
    await produce(
        kafka_bootstrap,
        inference,
        [value for _, value in events],
        keys=[event_id.encode() for event_id, _ in events],
    )

    def source_decisions(records: list[Record]) -> list[tuple[Record, Decision]]:
        return [
            (r, d)
            for r, d in ((r, Decision.model_validate_json(r.value)) for r in records)
            if d.scope is Scope.SOURCE
        ]

    def complete(records: list[Record]) -> bool:
        requests = {orjson.loads(r.value)["event_id"] for r in records}
        quarantined = {d.source for _, d in source_decisions(records)}
        return requests >= {e for e, _ in events} and quarantined >= {
            "attacker-enforced",
            "attacker-observed",
        }

    await read_topic(kafka_bootstrap, topics.decisions, complete, timeout_s=WAIT_S)
    # Every flag must have been counted before "exactly once" can be checked.
    committed = await _wait_until_consumed(
        kafka_bootstrap, worker.app_id, topics.source_flags, timeout_s=30
    )
    assert sum(committed.values()) == sum(n for _, n, f in SOURCES.values() if f)
    records = await read_topic(kafka_bootstrap, topics.decisions, complete, timeout_s=WAIT_S)
    checked_at = datetime.now(UTC)

    requests = Counter(
        d.event_id
        for d in (Decision.model_validate_json(r.value) for r in records)
        if d.scope is Scope.REQUEST
    )
    assert set(requests) == {e for e, _ in events}
    by_source = source_decisions(records)
    assert Counter(d.source for _, d in by_source) == {
        "attacker-enforced": 1,
        "attacker-observed": 1,
    }

    for record, decision in by_source:
        assert decision.source is not None
        model, _, _ = SOURCES[decision.source]
        assert record.key == decision.source.encode()
        assert decision.action is (Action.QUARANTINE if model == ENFORCED else Action.FLAG)
        assert decision.model_id == model
        assert decision.event_id.startswith(f"{decision.source}-")
        assert sent_at - timedelta(seconds=1) <= decision.decided_at <= checked_at
        assert decision.expires_at is not None
        ttl = (decision.expires_at - decision.decided_at).total_seconds()
        assert ttl == pytest.approx(TTL_S, abs=1.0)
        [reason] = decision.reasons
        assert (reason.detector, reason.score, reason.threshold) == (
            "flagged_events_per_source",
            LIMIT,
            LIMIT,
        )
