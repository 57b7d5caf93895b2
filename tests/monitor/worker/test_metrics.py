"""The worker's metrics, declared in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.worker.metrics import Metrics


def test_metric_names_follow_prometheus_conventions() -> None:
    registry = CollectorRegistry()
    Metrics.create(registry)
    names = {metric.name for metric in registry.collect()}
    assert names >= {"advmon_events_consumed", "advmon_decisions", "advmon_scoring_seconds"}
    assert all(name.startswith("advmon_") for name in names)
    assert names >= {
        "advmon_detector_target_fpr",
        "advmon_incidents_open",
        "advmon_alert_deliveries_failed",
    }
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics.create(registry)


def test_the_readme_table_lists_every_metric_the_worker_exports() -> None:
    registry = CollectorRegistry()
    Metrics.create(registry)
    exported = {
        f"{metric.name}_total" if metric.type == "counter" else metric.name
        for metric in registry.collect()
    }
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| metric | type | meaning |", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"^\| `(advmon_[a-z_]+)(?:\{[a-z_,]*\})?` \|", table, re.MULTILINE))
    assert listed == exported
