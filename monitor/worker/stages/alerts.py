"""The alerting stage: keeps Alertmanager's alerts in step with the incidents.

It reads the incident store, never a topic: the incident stage writes incidents and
sets the shared event when one opens, and this stage posts alerts for every unresolved
incident (and each newly resolved one) to Alertmanager's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from monitor.errors import AlertDeliveryError
from monitor.incidents.alertmanager import AlertmanagerClient, incident_alert
from monitor.incidents.storage.incidents import IncidentStore
from monitor.retry import retrying
from monitor.settings import AlertingSettings
from monitor.worker.metrics import Metrics

__all__ = ["AlertingStage"]

logger = logging.getLogger(__name__)

_FIRST_RETRY_S = 0.5


class AlertingStage:
    """Keep Alertmanager's alerts in step with the incidents, and resolve quiet ones.

    Every ``resend_seconds`` (and at once when an incident opens) it auto-resolves quiet
    incidents, then posts every unresolved incident, and each newly resolved one with its
    ``endsAt``. When Alertmanager is unreachable it retries with back-off; the stream is
    never blocked and no incident is lost, since the database is the source of truth.

    With ``metrics``, each sync also sets ``advmon_incidents_open`` (one cheap count by
    kind; a database error leaves the last values) and each failed post to an
    Alertmanager counts in ``advmon_alert_deliveries_failed_total``.
    """

    def __init__(
        self,
        store: IncidentStore,
        settings: AlertingSettings,
        wake: asyncio.Event,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.wake = wake
        self.metrics = metrics
        on_failure = None
        if metrics is not None:
            failed = metrics.alert_deliveries_failed

            def on_failure(reason: str) -> None:
                failed.labels(reason).inc()

        self.client = AlertmanagerClient(
            settings.urls, settings.timeout_seconds, on_failure=on_failure
        )

    async def run(self) -> None:
        """Sync alerts forever."""
        resend = self.settings.resend_seconds

        def report(error: BaseException, delay: float) -> None:
            logger.warning("alerts not synced, retrying in %.1f s: %s", delay, error)

        while True:
            await self._wait(resend)
            await retrying(
                (OperationalError, DBAPIError, AlertDeliveryError),
                first_s=_FIRST_RETRY_S,
                most_s=resend,
                on_retry=report,
                sleep=self._wait,
            )(self.sync)

    async def _wait(self, seconds: float) -> None:
        """Wait ``seconds``, or less when an incident opens."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=seconds)
        self.wake.clear()

    async def sync(self, now: datetime | None = None) -> int:
        """Resolve quiet incidents and post every alert that is due; return how many."""
        now = now or datetime.now(UTC)
        resolved = await asyncio.to_thread(self.store.auto_resolve, now)
        if resolved:
            logger.info("auto-resolved incidents %s", resolved)
        await self.count_open()
        if not self.client.urls:
            return 0
        incidents = await asyncio.to_thread(self.store.alertable)
        resend = timedelta(seconds=self.settings.resend_seconds)
        alerts = [
            incident_alert(
                incident,
                now=now,
                resend=resend,
                incident_url=self.settings.incident_url_template.format(id=incident.id),
            )
            for incident in incidents
        ]
        await self.client.post(alerts)
        await asyncio.to_thread(self.store.mark_alerted, [i.id for i in incidents], now)
        return len(alerts)

    async def count_open(self) -> None:
        """Set ``advmon_incidents_open`` from the store; on a database error, log it and
        keep the last values."""
        if self.metrics is None:
            return
        try:
            counts = await asyncio.to_thread(self.store.open_counts)
        except SQLAlchemyError as exc:
            logger.warning("open incidents not counted, keeping the last values: %s", exc)
            return
        for kind, count in counts.items():
            self.metrics.incidents_open.labels(kind.value).set(count)

    async def close(self) -> None:
        """Close the Alertmanager client."""
        await self.client.close()
