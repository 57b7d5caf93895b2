"""The worker process's garbage collection: start-up objects frozen, full collections timed."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry

from monitor.worker.metrics import Metrics
from monitor.worker.run import time_full_collections

_HISTOGRAM = "advmon_gc_full_collection_seconds"


def _count(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value(f"{_HISTOGRAM}_count")
    assert value is not None
    return value


def test_full_collections_are_timed_until_stopped() -> None:
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    stop = time_full_collections(metrics.gc_full_collection_seconds)
    try:
        gc.collect(0)
        gc.collect(1)
        assert _count(registry) == 0
        gc.collect()
        gc.collect(2)
        assert _count(registry) == 2
        total = registry.get_sample_value(f"{_HISTOGRAM}_sum")
        assert total is not None
        assert total > 0
    finally:
        stop()
    gc.collect()
    assert _count(registry) == 2


def test_the_start_up_objects_are_frozen() -> None:
    # In a process of its own: a frozen generation stays for the life of the process.
    script = textwrap.dedent(
        """
        import gc
        import monitor.worker.agents, monitor.worker.app, monitor.worker.web
        from monitor.worker.run import freeze_start_up_objects

        before = len(gc.get_objects())
        assert gc.get_freeze_count() == 0
        freeze_start_up_objects()
        print(before, gc.get_freeze_count(), len(gc.get_objects()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    before, frozen, left = map(int, result.stdout.split())
    assert before > 50_000, before  # the worker's libraries
    assert frozen >= before * 0.9
    assert left < 1_000
