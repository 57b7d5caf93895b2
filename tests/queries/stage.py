"""Query traffic through the query stage, in process: the scoring stage's fingerprints
(:func:`monitor.worker.queries.query_records`) in scoring batches, matched by
:class:`monitor.worker.stages.queries.QueryStage` over a plain dict as its table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry

from detectors import DetectorConfig
from monitor.config import ModelConfig, MonitorConfig
from monitor.worker.metrics import Metrics
from monitor.worker.models import ModelDetector
from monitor.worker.queries import QueryPlan, query_plans, query_records
from monitor.worker.records import InputMessage, OutputRecord
from monitor.worker.stages.queries import QueryStage
from schemas import Decision, Detection, DetectionKind, InferenceEvent, Scope
from tests.queries.traffic import Query

__all__ = ["StageRun", "run_through_stage", "watched_model"]

MODEL_ID = "watched"


def watched_model(
    detector: DetectorConfig, *, policy: str = "enforce", **query_attacks: object
) -> tuple[MonitorConfig, QueryPlan]:
    """A worker config watching one model, and its query plan."""
    model = ModelConfig.model_validate(
        {
            "id": MODEL_ID,
            "detector": detector.model_path,
            "policy": policy,
            "query_attacks": query_attacks,
        }
    )
    config = MonitorConfig(models=[model])
    plans = query_plans({MODEL_ID: ModelDetector(model, detector, "0" * 64)})
    return config, plans[MODEL_ID]


@dataclass
class StageRun:
    """What the stage published, by source."""

    detections: list[Detection] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    first_flagged: dict[str, int] = field(default_factory=dict)
    """Each flagged source's query number (from 1) at its first detection."""


async def run_through_stage(
    queries: Sequence[Query],
    config: MonitorConfig,
    plan: QueryPlan,
    *,
    table: dict[str, bytes] | None = None,
    batch: int = 64,
) -> StageRun:
    """Send ``queries`` in scoring batches of ``batch`` through a fresh stage on ``table``."""
    run = StageRun()
    numbers = {q.event_id: q.number for q in queries}

    async def publish(records: Sequence[OutputRecord]) -> None:
        for record in records:
            if record.topic == config.topics.detections:
                detection = Detection.model_validate_json(record.value)
                if detection.kind is DetectionKind.QUERY_ATTACK and detection.source:
                    run.detections.append(detection)
                    run.first_flagged.setdefault(detection.source, numbers[detection.event_id])
            elif record.topic == config.topics.decisions:
                decision = Decision.model_validate_json(record.value)
                assert decision.scope is Scope.SOURCE
                run.decisions.append(decision)

    stage = QueryStage(
        config,
        {plan.model_id: plan},
        {} if table is None else table,
        Metrics.create(CollectorRegistry()),
        publish,
    )
    for start in range(0, len(queries), batch):
        chunk = queries[start : start + batch]
        events = [
            InferenceEvent(
                event_id=q.event_id,
                model_id=plan.model_id,
                request_id=q.request_id,
                source=q.source,
                input=[0.0],
            )
            for q in chunk
        ]
        messages = [
            InputMessage("inference", 0, start + i, None, b"", None, ()) for i in range(len(chunk))
        ]
        inputs = np.stack([q.input for q in chunk])
        records = query_records(
            plan, config.topics.query_prints, events, messages, [q.time for q in chunk], inputs
        )
        await stage.process([r.value for r in records])
    return run
