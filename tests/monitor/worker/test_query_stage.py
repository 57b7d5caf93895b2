"""The query stage and the scoring stage's fingerprints, without a broker."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from monitor.config import MonitorConfig
from monitor.demo.run import demo_event
from monitor.worker.metrics import Metrics
from monitor.worker.models import load_model_detectors
from monitor.worker.queries import query_plans
from monitor.worker.records import InputMessage, OutputRecord
from monitor.worker.stages.queries import QueryStage
from monitor.worker.stages.scoring import ScoringStage
from schemas import Decision, Detection, DetectionKind, QueryPrints, query_key


def _config(detector_path: Path, **query_attacks: object) -> MonitorConfig:
    return MonitorConfig.model_validate(
        {
            "models": [
                {
                    "id": "digits",
                    "detector": str(detector_path),
                    "policy": "enforce",
                    "query_attacks": query_attacks,
                }
            ]
        }
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _probing(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct queries around one image: a few pixels nudged each time."""
    rng = np.random.default_rng(seed)
    base = rng.random((1, 8, 8)).astype(np.float32) * 0.8
    out = []
    for _ in range(n):
        x = base.copy()
        x.flat[rng.integers(0, 64, size=3)] += 0.01
        out.append(x)
    return out


async def _scored(
    config: MonitorConfig, images: Sequence[np.ndarray], sources: Sequence[str | None]
) -> list[OutputRecord]:
    published: list[OutputRecord] = []

    async def publish(records: Sequence[OutputRecord]) -> None:
        published.extend(records)

    models = load_model_detectors(config)
    stage = ScoringStage(
        config,
        models,
        Metrics.create(CollectorRegistry()),
        publish,
        device="cpu",
        queries=query_plans(models),
    )
    await stage.start()
    try:
        messages = [
            InputMessage(
                "inference-events",
                0,
                i,
                None,
                demo_event(f"e{i}", image, as_tensor=i % 2 == 0, source=source),
                1_700_000_000.0 + i,
            )
            for i, (image, source) in enumerate(zip(images, sources, strict=True))
        ]
        await asyncio.wait_for(stage.process(messages), 30)
    finally:
        await stage.stop()
    return published


async def test_the_scoring_stage_sends_each_sources_fingerprints_keyed_by_model_and_source(
    detector_path: Path,
) -> None:
    config = _config(detector_path)
    images = _probing(6)
    sources = ["alice", None, "bob", "alice", None, "alice"]
    published = await _scored(config, images, sources)
    prints = [r for r in published if r.topic == config.topics.query_prints]
    by_key = {r.key: QueryPrints.model_validate_json(r.value) for r in prints}
    assert set(by_key) == {query_key("digits", s).encode() for s in ("alice", "bob")}
    alice = by_key[query_key("digits", "alice").encode()]
    assert alice.event_ids == ["e0", "e3", "e5"]
    assert alice.offsets == [0, 3, 5]
    assert alice.times == [1_700_000_000.0, 1_700_000_003.0, 1_700_000_005.0]
    assert alice.enforce is True
    assert len(alice.bitmap_bytes()) == 3 * 128
    assert len(set(alice.digests)) == 3


async def test_no_fingerprints_when_query_attacks_are_off(detector_path: Path) -> None:
    config = _config(detector_path, enabled=False)
    published = await _scored(config, _probing(3), ["alice"] * 3)
    assert not [r for r in published if r.topic == config.topics.query_prints]


def _stage(
    config: MonitorConfig, table: dict[str, bytes], registry: CollectorRegistry
) -> tuple[QueryStage, list[OutputRecord]]:
    published: list[OutputRecord] = []

    async def publish(records: Sequence[OutputRecord]) -> None:
        published.extend(records)

    plans = query_plans(load_model_detectors(config))
    return QueryStage(config, plans, table, Metrics.create(registry), publish), published


async def test_a_probing_source_is_flagged_once_and_a_retrying_one_never(
    detector_path: Path,
) -> None:
    config = _config(detector_path, min_linked=5, decision_seconds=600)
    images = _probing(12) + [_probing(1, seed=s)[0] for s in range(1, 7)]
    sources = ["prober"] * 12 + ["user"] * 6
    scored = await _scored(config, images, sources)
    prints = [r.value for r in scored if r.topic == config.topics.query_prints]
    # The user's client retries every request: the same records again.
    table: dict[str, bytes] = {}
    registry = CollectorRegistry()
    stage, published = _stage(config, table, registry)
    await stage.process(prints + prints)

    detections = [
        Detection.model_validate_json(r.value)
        for r in published
        if r.topic == config.topics.detections
    ]
    decisions = [
        Decision.model_validate_json(r.value)
        for r in published
        if r.topic == config.topics.decisions
    ]
    assert [(d.kind, d.source) for d in detections] == [(DetectionKind.QUERY_ATTACK, "prober")]
    assert [(d.source, d.action.value, d.reasons[0].detector) for d in decisions] == [
        ("prober", "quarantine", "query_attack")
    ]
    (detection,) = detections
    assert detection.score >= 5
    assert detection.threshold == 5
    assert detection.expires_at is not None
    assert decisions[0].expires_at == detection.expires_at
    assert detection.related_event_ids[0] == f"e{int(detection.event_id[1:]) - 1}"
    assert set(table) == {query_key("digits", "prober"), query_key("digits", "user")}
    repeats = sample(registry, "advmon_query_fingerprints_total", model="digits", outcome="repeat")
    assert repeats == 18
    assert sample(registry, "advmon_query_attacks_total", model="digits") == 1
    # An hour after the events: both sources are held, the prober's decision in force.
    assert stage.expire(now=1_700_003_600.0) == 0
    assert sample(registry, "advmon_query_attack_decisions") == 1
    assert sample(registry, "advmon_query_sources") == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"{}",
        b'{"model_id": "digits", "source": "s"}',
        orjson.dumps(
            {
                "model_id": "digits",
                "source": "s",
                "enforce": True,
                "event_ids": ["e"],
                "times": [1.0],
                "request_digests": [0],
                "digests": [1],
                "windows": [50],
                "bitmaps": [base64.b64encode(b"short").decode()],
                "topics": ["t"],
                "partitions": [0],
                "offsets": [0],
            }
        ),
        orjson.dumps(
            {
                "model_id": "other",
                "source": "s",
                "enforce": True,
                "event_ids": [],
                "times": [],
                "request_digests": [],
                "digests": [],
                "windows": [],
                "bitmaps": [],
                "topics": [],
                "partitions": [],
                "offsets": [],
            }
        ),
    ],
)
async def test_a_malformed_fingerprints_record_is_skipped(detector_path: Path, raw: bytes) -> None:
    table: dict[str, bytes] = {}
    stage, published = _stage(_config(detector_path), table, CollectorRegistry())
    await stage.process([raw])
    assert (published, table) == ([], {})


@pytest.mark.parametrize(
    "stored", [b"", b"junk", b"advmon-query-state 1\n", b"advmon-query-state 1\n" + b"\0" * 40]
)
async def test_an_unreadable_stored_history_starts_afresh(
    detector_path: Path, stored: bytes
) -> None:
    config = _config(detector_path)
    prints = [
        r.value
        for r in await _scored(config, _probing(2), ["s", "s"])
        if r.topic == config.topics.query_prints
    ]
    key = query_key("digits", "s")
    table = {key: stored}
    registry = CollectorRegistry()
    stage, _ = _stage(config, table, registry)
    await stage.process(prints)
    assert table[key].startswith(b"advmon-query-state 1\n")
    resets = sample(
        registry, "advmon_query_history_resets_total", model="digits", reason="unreadable"
    )
    assert resets == (1 if stored else 0)


async def test_sources_silent_for_longer_than_the_max_age_are_forgotten(
    detector_path: Path,
) -> None:
    config = _config(detector_path, max_age_seconds=60)
    prints = [
        r.value
        for r in await _scored(config, _probing(2), ["s", "s"])
        if r.topic == config.topics.query_prints
    ]
    table: dict[str, bytes] = {}
    stage, _ = _stage(config, table, CollectorRegistry())
    await stage.process(prints)
    assert stage.expire(now=1_700_000_001.0 + 30) == 0
    assert stage.expire(now=1_700_000_001.0 + 61) == 1
    assert table == {}


async def test_records_applied_again_after_a_failed_publish_still_raise_the_alarm(
    detector_path: Path,
) -> None:
    config = _config(detector_path, min_linked=5)
    images = _probing(12)
    prints = [
        r.value
        for part in (images[:1], images[1:])
        for r in await _scored(config, part, ["prober"] * len(part))
        if r.topic == config.topics.query_prints
    ]
    assert len(prints) == 2
    table: dict[str, bytes] = {}
    stage, published = _stage(config, table, CollectorRegistry())
    await stage.process(prints[:1])  # the first batch's record: the history is stored
    failing = True

    async def publish(records: Sequence[OutputRecord]) -> None:
        if failing:
            raise asyncio.CancelledError
        published.extend(records)

    stage.publish = publish
    stored = dict(table)
    with pytest.raises(asyncio.CancelledError):
        await stage.process(prints[1:])
    assert table == stored
    failing = False
    await stage.process(prints[1:])
    assert [r.topic for r in published].count(config.topics.detections) == 1


def test_a_stored_history_fits_its_record_keeping_the_newest_queries() -> None:
    from detectors import QueryHistory
    from monitor.worker.stages.queries import QueryState

    history = QueryHistory(4096, 86_400, 28)
    rng = np.random.default_rng(0)
    for k in range(4096):
        bitmap = rng.integers(0, 2**63, size=16, dtype=np.uint64)
        history.observe(bitmap, 50, k + 1, float(k), "é" * 500 + str(k))
    raw = QueryState(history).dumps(max_bytes=512 * 1024)
    assert len(raw) <= 512 * 1024
    kept = QueryHistory.loads(raw[len(b"advmon-query-state 1\n") + 16 :], 4096, 86_400, 28)
    assert 0 < len(kept) < 4096
    assert kept.newest == 4095.0
