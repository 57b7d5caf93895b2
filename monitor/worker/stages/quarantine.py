"""The quarantine stage: flagged events, keyed by source → a decision per source.

The scoring stage re-keys every flagged event by its source onto the internal
source-flags topic, so each source's count lives on exactly one worker. When a source's
flags within the window reach the limit, this stage publishes one source-scoped decision
(and, under ``enforce``, a quarantine detection), then stays quiet until it expires.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from monitor.config import MonitorConfig
from monitor.errors import validation_problem
from monitor.worker.decisions import quarantine_detection, quarantine_due, source_decision
from monitor.worker.metrics import Metrics
from monitor.worker.records import OutputRecord, Publish
from schemas import Scope, SourceFlag

__all__ = ["QuarantineStage"]

logger = logging.getLogger(__name__)


class QuarantineStage:
    """Count flagged events per source in a window and quarantine sources past the limit.

    ``counts`` is a windowed Faust table and ``in_force`` a table of quarantine expiry
    times (epoch seconds), both keyed by source: the flags topic is keyed by source, so
    each source's state lives on exactly one worker and moves with its partition.
    """

    def __init__(
        self,
        config: MonitorConfig,
        counts: Any,
        in_force: Any,
        metrics: Metrics,
        publish: Publish,
    ) -> None:
        self.config = config
        self.counts = counts
        self.in_force = in_force
        self.metrics = metrics
        self.publish = publish

    async def observe(self, raw: bytes) -> None:
        """Count one flagged event; publish a source decision when the limit is crossed."""
        try:
            flag = SourceFlag.model_validate_json(raw)
        except ValidationError as exc:
            # The internal flags topic is a topic like any other: skip, never stop.
            logger.error("skipping a malformed source flag: %s", validation_problem(exc))
            return
        policy = self.config.quarantine
        self.counts[flag.source] += 1
        count = int(self.counts[flag.source].current())
        now = datetime.now(UTC)
        if not quarantine_due(
            count, policy.limit, float(self.in_force[flag.source]), now.timestamp()
        ):
            return
        expires = now + timedelta(seconds=policy.ttl_seconds)
        decision = source_decision(flag, count, policy.limit, expires, now)
        detection = quarantine_detection(flag, count, policy.limit, expires, now)
        topics = self.config.topics
        records = [OutputRecord.of(topics.decisions, decision.key, decision)]
        if flag.enforce:
            # A quarantine incident only when the source really was quarantined.
            records.append(OutputRecord.of(topics.detections, flag.model_id, detection))
        await self.publish(records)
        self.in_force[flag.source] = expires.timestamp()
        self.metrics.decisions.labels(decision.action.value, Scope.SOURCE.value).inc()
        logger.warning(
            "source %s: %s until %s (%d flagged events in %ds)",
            flag.source,
            decision.action.value,
            expires.isoformat(),
            count,
            policy.window_seconds,
        )

    def sources_in_force(self) -> int:
        """Quarantines in force among the sources this worker holds."""
        now = time.time()
        return sum(1 for expires in self.in_force.values() if float(expires) > now)
