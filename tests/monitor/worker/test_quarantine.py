"""The quarantine stage without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from monitor.config import MonitorConfig
from monitor.worker.metrics import Metrics
from monitor.worker.records import OutputRecord
from monitor.worker.stages.quarantine import QuarantineStage


@pytest.mark.parametrize("raw", [b"\xff", b"{}", b'{"source": ""}'])
def test_a_malformed_source_flag_is_skipped_without_touching_the_counts(raw: bytes) -> None:
    published: list[OutputRecord] = []

    async def publish(records: Sequence[OutputRecord]) -> None:
        published.extend(records)

    config = MonitorConfig.model_validate({"models": [{"id": "m", "detector": "m.json"}]})
    counts: dict[str, int] = {}
    in_force: dict[str, float] = {}
    stage = QuarantineStage(config, counts, in_force, Metrics.create(CollectorRegistry()), publish)
    asyncio.run(stage.observe(raw))
    assert (published, counts, in_force) == ([], {}, {})
