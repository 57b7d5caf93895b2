"""The alerting stage's metrics, on a SQLite incident store and fake Alertmanagers.

``advmon_incidents_open{kind}`` counts unresolved incidents at each sync and keeps its last
values while the database cannot be read; ``advmon_alert_deliveries_failed_total{reason}``
counts each failed post to one Alertmanager.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from monitor.errors import AlertDeliveryError
from monitor.incidents.alertmanager import DELIVERY_FAILURE_REASONS, AlertmanagerClient
from monitor.incidents.storage.incidents import GroupingPolicy, IncidentStore
from monitor.incidents.storage.models import IncidentKind, IncidentStatus
from monitor.incidents.storage.schema import upgrade
from monitor.settings import AlertingSettings
from monitor.worker.metrics import Metrics
from monitor.worker.stages.alerts import AlertingStage
from tests.monitor.database_support import detection
from tests.monitor.incidents.query_attacks import query_attack

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POLICY = GroupingPolicy(gap=timedelta(minutes=10), quiet_period=timedelta(hours=1))

Alertmanagers = Callable[..., Awaitable[str]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IncidentStore]:
    engine = create_engine(f"sqlite:///{tmp_path / 'incidents.db'}")
    upgrade(engine)
    yield IncidentStore(engine, POLICY)
    engine.dispose()


@pytest.fixture
async def alertmanager() -> AsyncIterator[Alertmanagers]:
    """``start(status, delay)``: the URL of an Alertmanager that answers ``status`` to
    every post after ``delay`` seconds."""
    runners: list[web.AppRunner] = []

    async def start(status: int, delay: float = 0.0) -> str:
        async def alerts(_request: web.Request) -> web.Response:
            await asyncio.sleep(delay)
            return web.Response(status=status, text="ok" if status < 300 else "nope")

        app = web.Application()
        app.router.add_post("/api/v2/alerts", alerts)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def stage_for(
    store: IncidentStore, registry: CollectorRegistry, *urls: str, timeout: float = 5.0
) -> AlertingStage:
    settings = AlertingSettings(alertmanager_urls=",".join(urls), timeout_seconds=timeout)
    return AlertingStage(store, settings, asyncio.Event(), Metrics.create(registry))


async def test_open_incidents_are_counted_by_kind_at_each_sync(store: IncidentStore) -> None:
    store.record(
        [
            detection("e1", T0, model_id="digits"),
            detection("e2", T0, model_id="letters"),
            query_attack("q-20", T0),
        ]
    )
    registry = CollectorRegistry()
    stage = stage_for(store, registry)  # no Alertmanager: the counts are kept all the same
    assert await stage.sync(now=T0 + timedelta(minutes=1)) == 0
    open_by_kind = {
        kind.value: sample(registry, "advmon_incidents_open", kind=kind.value)
        for kind in IncidentKind
    }
    assert open_by_kind == {
        "adversarial": 2.0,
        "quarantine": 0.0,
        "drift": 0.0,
        "query_attack": 1.0,
    }

    adversarial, _ = store.find()
    first = next(i for i in adversarial if i.kind is IncidentKind.ADVERSARIAL)
    store.set_status(first.id, IncidentStatus.ACKNOWLEDGED, "alice")
    await stage.sync(now=T0 + timedelta(minutes=2))
    assert sample(registry, "advmon_incidents_open", kind="adversarial") == 2.0  # still unresolved
    store.set_status(first.id, IncidentStatus.RESOLVED, "alice")
    await stage.sync(now=T0 + timedelta(minutes=3))
    assert sample(registry, "advmon_incidents_open", kind="adversarial") == 1.0

    # Quiet for the whole period: auto-resolved by the same sync, and counted after it.
    await stage.sync(now=T0 + timedelta(hours=2))
    assert sample(registry, "advmon_incidents_open", kind="adversarial") == 0.0
    assert sample(registry, "advmon_incidents_open", kind="query_attack") == 0.0


async def test_a_database_error_keeps_the_last_counts(
    store: IncidentStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store.record([detection("e1", T0)])
    registry = CollectorRegistry()
    stage = stage_for(store, registry)
    await stage.sync(now=T0)
    assert sample(registry, "advmon_incidents_open", kind="adversarial") == 1.0

    def unreachable() -> dict[IncidentKind, int]:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(store, "open_counts", unreachable)
    store.record([detection("e2", T0, model_id="letters")])
    await stage.count_open()  # never raises
    assert sample(registry, "advmon_incidents_open", kind="adversarial") == 1.0
    assert "open incidents not counted" in caplog.text


async def test_without_metrics_nothing_is_counted(store: IncidentStore) -> None:
    store.record([detection("e1", T0)])
    stage = AlertingStage(store, AlertingSettings(), asyncio.Event())
    assert stage.client.on_failure is None
    await stage.sync(now=T0)  # no metrics, no query


async def test_failed_deliveries_are_counted_by_reason(
    store: IncidentStore, alertmanager: Alertmanagers
) -> None:
    store.record([detection("e1", T0)])
    took = await alertmanager(200)
    refused = await alertmanager(503)
    slow = await alertmanager(200, 2.0)
    registry = CollectorRegistry()

    def failed(reason: str) -> float | None:
        return sample(registry, "advmon_alert_deliveries_failed_total", reason=reason)

    stage = stage_for(store, registry, took, refused, closed_port_url(), slow, timeout=0.3)
    try:
        # One Alertmanager took the alerts: delivered, and each other failure counted.
        assert await stage.sync(now=T0) == 1
        assert (failed("http_status"), failed("connection"), failed("timeout")) == (1.0, 1.0, 1.0)
    finally:
        await stage.close()

    stage = stage_for(store, registry := CollectorRegistry(), refused)
    try:
        with pytest.raises(AlertDeliveryError):
            await stage.sync(now=T0)
        assert failed("http_status") == 1.0
        assert failed("timeout") is None
    finally:
        await stage.close()


async def test_the_client_reports_each_failed_post(
    alertmanager: Alertmanagers,
) -> None:
    reasons: list[str] = []
    url = await alertmanager(500)
    client = AlertmanagerClient([url, closed_port_url()], on_failure=reasons.append)
    try:
        with pytest.raises(AlertDeliveryError):
            await client.post([{"labels": {"alertname": "x"}}])
    finally:
        await client.close()
    assert reasons == ["http_status", "connection"]
    assert set(reasons) <= set(DELIVERY_FAILURE_REASONS)
    assert AlertmanagerClient([url]).on_failure is None
