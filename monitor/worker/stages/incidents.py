"""The incident stage: detections → incidents in the database.

It depends on nothing the decision path needs: while the database is down, this stage
retries with back-off and its offsets stay uncommitted (detections wait in Kafka), while
decisions keep flowing from the scoring stage. Alerts for the incidents are the
alerting stage's (:mod:`monitor.worker.stages.alerts`).

Only an unreachable database is waited out (:func:`~monitor.incidents.storage.faults.
database_unreachable`). A detection the database cannot hold or refuses is set aside:
logged, counted (``advmon_detections_refused``) and sent to the dead-letter topic with
the reason, and the rest of its batch is stored. Retrying it would refuse it again on
every attempt and keep every detection behind it out of the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, StatementError

from monitor.errors import InvalidRecordError, validation_problem
from monitor.incidents.storage.faults import database_unreachable
from monitor.incidents.storage.incidents import IncidentStore, RecordResult, RefusedDetection
from monitor.retry import retrying
from monitor.worker.metrics import Metrics
from monitor.worker.records import (
    DEAD_LETTER_COPY_BYTES,
    InputMessage,
    OutputRecord,
    Publish,
    dead_letter,
)
from schemas import Detection

__all__ = ["IncidentStage"]

logger = logging.getLogger(__name__)

_FIRST_RETRY_S = 0.5
_REFUSED = "detection_refused"
_MALFORMED = "invalid_detection"
_PROBLEM_CHARS = 500


class _DatabaseAwayError(Exception):
    """The store could not reach the database; retried, it never leaves this module."""


@dataclass(frozen=True)
class _Read:
    """A detection and the message it was read from."""

    position: int
    message: InputMessage
    detection: Detection


class IncidentStage:
    """Store detections in incidents, waiting out the database; set aside what it refuses.

    Parameters
    ----------
    store
        The incident store.
    metrics
        Counts set-aside detections (``detections_refused``, ``events_invalid``).
    publish
        Sends the dead letters of set-aside detections.
    dead_letter_topic
        Where set-aside detections go.
    retry_max_seconds
        The longest back-off between two attempts while the database is unreachable.
    on_new_incident
        Set whenever a batch opened an incident, so alerts go out without waiting.
    """

    def __init__(
        self,
        store: IncidentStore,
        metrics: Metrics,
        publish: Publish,
        *,
        dead_letter_topic: str,
        dead_letter_copy_bytes: int = DEAD_LETTER_COPY_BYTES,
        retry_max_seconds: float,
        on_new_incident: asyncio.Event,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.publish = publish
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter_copy_bytes = dead_letter_copy_bytes
        self.retry_max_seconds = retry_max_seconds
        self.on_new_incident = on_new_incident
        self.database_up = True

    async def process(self, messages: Sequence[InputMessage]) -> RecordResult:
        """Store the detections read from ``messages``; return once nothing is left to do.

        1. Decode each message; a malformed one is set aside.
        2. Store the batch in one transaction, retrying (forever) while the database is
           unreachable. When the database refuses the batch for another reason, store
           its detections one at a time, so that only the ones it refuses are set aside.
        3. Publish the dead letters of everything set aside and wait for the broker.

        The result's ``refused`` positions are positions in ``messages``.
        """
        reads: list[_Read] = []
        refused: list[RefusedDetection] = []
        for position, message in enumerate(messages):
            try:
                detection = Detection.model_validate_json(message.value)
            except ValidationError as exc:
                refused.append(
                    RefusedDetection(
                        position, "malformed", f"not a detection: {validation_problem(exc)}"
                    )
                )
                continue
            reads.append(_Read(position, message, detection))

        result = await self._store(reads)
        refused.extend(result.refused)
        refused.sort(key=lambda refusal: refusal.position)
        if refused:
            detections = {read.position: read.detection for read in reads}
            await self.publish(
                [
                    self._set_aside(messages[r.position], detections.get(r.position), r)
                    for r in refused
                ]
            )
        if result.opened:
            self.on_new_incident.set()
        return RecordResult(
            result.stored, result.duplicates, result.opened, result.touched, refused
        )

    async def _store(self, reads: Sequence[_Read]) -> RecordResult:
        """Store ``reads``; refusals' positions are the messages' positions."""
        try:
            return _in_messages(await self._committed(reads), reads)
        except StatementError as exc:
            logger.warning(
                "the database refused a batch of %d detections (%s); storing them one at "
                "a time to set aside the refused ones",
                len(reads),
                _problem(exc),
            )
        stored = duplicates = 0
        opened: list[int] = []
        touched: list[int] = []
        refused: list[RefusedDetection] = []
        for read in reads:
            try:
                one = await self._committed([read])
            except StatementError as exc:
                refused.append(
                    RefusedDetection(
                        read.position, "database", f"the database refused it: {_problem(exc)}"
                    )
                )
                continue
            stored += one.stored
            duplicates += one.duplicates
            opened.extend(one.opened)
            touched.extend(i for i in one.touched if i not in touched)
            refused.extend(_in_messages(one, [read]).refused)
        return RecordResult(stored, duplicates, opened, touched, refused)

    async def _committed(self, reads: Sequence[_Read]) -> RecordResult:
        """Store ``reads`` in one transaction, retrying while the database is unreachable."""

        def report(error: BaseException, _delay: float) -> None:
            if self.database_up:
                logger.error(
                    "database unreachable, %d detections wait in Kafka; retrying: %s",
                    len(reads),
                    _problem(error.__cause__ or error),
                )
            self.database_up = False

        detections = [read.detection for read in reads]
        result: RecordResult = await retrying(
            _DatabaseAwayError,
            first_s=_FIRST_RETRY_S,
            most_s=self.retry_max_seconds,
            on_retry=report,
        )(asyncio.to_thread, self._record, detections)
        if not self.database_up:
            logger.warning("database reachable again; storing detections")
        self.database_up = True
        return result

    def _record(self, detections: Sequence[Detection]) -> RecordResult:
        try:
            return self.store.record(detections)
        except DBAPIError as exc:
            if database_unreachable(exc):
                raise _DatabaseAwayError from exc
            raise

    def _set_aside(
        self, message: InputMessage, detection: Detection | None, refusal: RefusedDetection
    ) -> OutputRecord:
        """Log and count a detection set aside (``None``: malformed); its dead letter."""
        logger.error(
            "setting aside the detection at %s/%d@%d (sent to %s): %s",
            message.topic,
            message.partition,
            message.offset,
            self.dead_letter_topic,
            refusal.problem,
        )
        self.metrics.detections_refused.labels(refusal.reason).inc()
        reason = _MALFORMED if detection is None else _REFUSED
        self.metrics.events_invalid.labels(reason).inc()
        error = InvalidRecordError(
            reason,
            refusal.problem,
            event_id=detection.event_id if detection else None,
            model_id=detection.model_id if detection else None,
        )
        return dead_letter(
            self.dead_letter_topic, message, error, copy_bytes=self.dead_letter_copy_bytes
        )


def _in_messages(result: RecordResult, reads: Sequence[_Read]) -> RecordResult:
    """``result`` of storing ``reads``, its refusals placed at their messages' positions."""
    refused = [
        RefusedDetection(reads[refusal.position].position, refusal.reason, refusal.problem)
        for refusal in result.refused
    ]
    return RecordResult(result.stored, result.duplicates, result.opened, result.touched, refused)


def _problem(error: BaseException) -> str:
    """What the database said (the driver's message), bounded in length."""
    cause = getattr(error, "orig", None)
    return str(cause if cause is not None else error)[:_PROBLEM_CHARS]
