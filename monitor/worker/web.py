"""The worker's web pages: ``/metrics`` for Prometheus and ``/healthz`` for probes.

They are all its web port serves (Faust's own pages are never registered, see
``monitor.worker.app._FaustApp``), on ``ADVMON_WORKER__WEB_BIND``, loopback by default.
"""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.worker.app import AdvmonApp

__all__ = ["register_pages"]


def register_pages(wiring: AdvmonApp) -> None:
    """Serve ``/metrics`` and ``/healthz`` on the worker's web port."""
    app = wiring.app

    @app.page("/metrics")
    async def metrics(web: faust.web.View, request: faust.web.Request) -> Any:
        # aiohttp refuses a charset in content_type=; prometheus-client's type carries one.
        return web.bytes(
            generate_latest(wiring.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    @app.page("/healthz")
    async def healthz(web: faust.web.View, request: faust.web.Request) -> Any:
        consumer = app.consumer
        partitions = [*consumer.assignment(), *wiring.intake.assignment()]
        assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
        # The inference partitions are the intake's (its own consumer group), the rest
        # Faust's. actives_ready turns true once the first assignment is recovered, and false again
        # at every rebalance: before that the worker holds nothing.
        consuming = (
            app.started
            and not app.rebalancing
            and app.tables.actives_ready
            and wiring.scoring.ready
            and wiring.intake.joined
        )
        body = {"status": "ok" if consuming else "starting", "assigned": assigned}
        return web.json(body, status=200 if consuming else 503)
