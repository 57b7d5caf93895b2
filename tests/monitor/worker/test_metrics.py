"""The worker's metrics, declared in one place."""

from __future__ import annotations

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
