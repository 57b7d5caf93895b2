"""The incident stage: detections → incidents in the database → alerts in Alertmanager.

It depends on nothing the decision path needs: while the database is down, this stage
retries with back-off and its offsets stay uncommitted (detections wait in Kafka), while
decisions keep flowing from the scoring stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import DBAPIError, OperationalError

from monitor.incidents.alertmanager import AlertDeliveryError, AlertmanagerClient, incident_alert
from monitor.incidents.storage.incidents import IncidentStore, RecordResult
from monitor.settings import AlertingSettings
from schemas import Detection

__all__ = ["AlertingStage", "IncidentStage"]

logger = logging.getLogger(__name__)

_FIRST_RETRY_S = 0.5


class IncidentStage:
    """Store detections in incidents, retrying until the database has them.

    Parameters
    ----------
    store
        The incident store.
    retry_max_seconds
        The longest back-off between two attempts while the database is unreachable.
    on_new_incident
        Set whenever a batch opened an incident, so alerts go out without waiting.
    """

    def __init__(
        self, store: IncidentStore, retry_max_seconds: float, on_new_incident: asyncio.Event
    ) -> None:
        self.store = store
        self.retry_max_seconds = retry_max_seconds
        self.on_new_incident = on_new_incident
        self.database_up = True

    async def record(self, detections: Sequence[Detection]) -> RecordResult:
        """Store ``detections``; return only once they are committed (retrying forever)."""
        delay = _FIRST_RETRY_S
        while True:
            try:
                result = await asyncio.to_thread(self.store.record, detections)
            except (OperationalError, DBAPIError) as exc:
                if self.database_up:
                    logger.error(
                        "database unreachable, %d detections wait in Kafka; retrying: %s",
                        len(detections),
                        exc.orig if exc.orig is not None else exc,
                    )
                self.database_up = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            if not self.database_up:
                logger.warning("database reachable again; storing detections")
            self.database_up = True
            if result.opened:
                self.on_new_incident.set()
            return result


class AlertingStage:
    """Keep Alertmanager's alerts in step with the incidents, and resolve quiet ones.

    Every ``resend_seconds`` (and at once when an incident opens) it auto-resolves quiet
    incidents, then posts every unresolved incident, and each newly resolved one with its
    ``endsAt``. When Alertmanager is unreachable it retries with back-off; the stream is
    never blocked and no incident is lost, since the database is the source of truth.
    """

    def __init__(
        self,
        store: IncidentStore,
        settings: AlertingSettings,
        wake: asyncio.Event,
    ) -> None:
        self.store = store
        self.settings = settings
        self.wake = wake
        self.client = AlertmanagerClient(settings.urls, settings.timeout_seconds)

    async def run(self) -> None:
        """Sync alerts forever."""
        resend = self.settings.resend_seconds
        delay, backoff = resend, _FIRST_RETRY_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            self.wake.clear()
            try:
                await self.sync()
            except (OperationalError, DBAPIError, AlertDeliveryError) as exc:
                logger.warning("alerts not synced, retrying in %.1f s: %s", backoff, exc)
                delay, backoff = backoff, min(backoff * 2, resend)
                continue
            delay, backoff = resend, _FIRST_RETRY_S

    async def sync(self, now: datetime | None = None) -> int:
        """Resolve quiet incidents and post every alert that is due; return how many."""
        now = now or datetime.now(UTC)
        resolved = await asyncio.to_thread(self.store.auto_resolve, now)
        if resolved:
            logger.info("auto-resolved incidents %s", resolved)
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

    async def close(self) -> None:
        """Close the Alertmanager client."""
        await self.client.close()
