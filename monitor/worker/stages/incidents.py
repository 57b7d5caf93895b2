"""The incident stage: detections → incidents in the database.

It depends on nothing the decision path needs: while the database is down, this stage
retries with back-off and its offsets stay uncommitted (detections wait in Kafka), while
decisions keep flowing from the scoring stage. Alerts for the incidents are the
alerting stage's (:mod:`monitor.worker.stages.alerts`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError, OperationalError

from monitor.incidents.storage.incidents import IncidentStore, RecordResult
from monitor.retry import retrying
from schemas import Detection

__all__ = ["IncidentStage"]

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

        def report(error: BaseException, _delay: float) -> None:
            if self.database_up:
                cause = getattr(error, "orig", None)
                logger.error(
                    "database unreachable, %d detections wait in Kafka; retrying: %s",
                    len(detections),
                    cause if cause is not None else error,
                )
            self.database_up = False

        result: RecordResult = await retrying(
            (OperationalError, DBAPIError),
            first_s=_FIRST_RETRY_S,
            most_s=self.retry_max_seconds,
            on_retry=report,
        )(asyncio.to_thread, self.store.record, detections)
        if not self.database_up:
            logger.warning("database reachable again; storing detections")
        self.database_up = True
        if result.opened:
            self.on_new_incident.set()
        return result
