"""Query fingerprints: what the scoring stage computes per event for query-attack detection.

:func:`query_plans` resolves at start-up what each model's query-attack detection uses
(the detector file's fingerprint and calibrated threshold, overridden by the worker
config); for each scored batch, :func:`query_records` fingerprints the events that name a
source, vectorised over the batch (:func:`detectors.fingerprints`), and builds one
:class:`~schemas.QueryPrints` record per source, keyed by model and source, for
:mod:`monitor.worker.stages.queries`.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from detectors import FingerprintSpec, fingerprints, request_digest
from monitor.worker.models import ModelDetector
from monitor.worker.records import InputMessage, OutputRecord
from schemas import InferenceEvent, query_key

__all__ = ["QueryPlan", "query_plans", "query_records"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryPlan:
    """What query-attack detection does for one model."""

    model_id: str
    spec: FingerprintSpec
    min_linked: int
    history_size: int
    max_age_seconds: float
    decision_seconds: float
    match_bits: int
    enforce: bool


def query_plans(models: Mapping[str, ModelDetector]) -> dict[str, QueryPlan]:
    """The plan of every model with query-attack detection on.

    A tabular model whose detector file predates query-attack detection has no benign
    statistics to fingerprint with: it is left out, with a warning to re-calibrate.
    """
    plans: dict[str, QueryPlan] = {}
    for model_id, model in models.items():
        wanted = model.config.query_attacks
        if not wanted.enabled:
            continue
        settings = model.detector.query_settings
        if settings is None:
            logger.warning(
                "model %s: its detector file has no query-attack settings (a tabular model "
                "calibrated by an earlier advmon); re-run advmon calibrate to watch its "
                "sources for query attacks",
                model_id,
            )
            continue
        match_bits = model.detector.query_match_bits
        if match_bits is None:
            logger.warning(
                "model %s: inputs of varying shape cannot be fingerprinted; query-attack "
                "detection is off for it",
                model_id,
            )
            continue
        plans[model_id] = QueryPlan(
            model_id=model_id,
            spec=settings.fingerprint,
            min_linked=wanted.min_linked or settings.min_linked,
            history_size=wanted.history_size or settings.history_size,
            max_age_seconds=wanted.max_age_seconds,
            decision_seconds=wanted.decision_seconds,
            match_bits=match_bits,
            enforce=model.config.policy == "enforce",
        )
    return plans


def query_records(
    plan: QueryPlan,
    topic: str,
    events: Sequence[InferenceEvent],
    messages: Sequence[InputMessage],
    times: Sequence[float],
    inputs: np.ndarray,
) -> list[OutputRecord]:
    """One :class:`~schemas.QueryPrints` record per source among ``events`` (the rows of
    ``inputs``), keyed by model and source; events without a source are not watched.

    The times must be finite (the scoring stage's are: the event's ``ts``, the Kafka
    timestamp or the clock).
    """
    rows = [i for i, event in enumerate(events) if event.source]
    if not rows:
        return []
    prints = fingerprints(plan.spec, inputs[rows])
    bitmaps = prints.bitmaps.astype("<u8").view(np.uint8).reshape(len(rows), -1)
    by_source: dict[str, list[int]] = {}
    for k, i in enumerate(rows):
        by_source.setdefault(events[i].source or "", []).append(k)
    out: list[OutputRecord] = []
    for source, ks in by_source.items():
        chosen = [rows[k] for k in ks]
        # QueryPrints field for field, built as plain objects and encoded with orjson: a
        # pydantic model per record cost more than fingerprinting its events.
        record = {
            "model_id": plan.model_id,
            "model_version": events[chosen[0]].model_version,
            "source": source,
            "enforce": plan.enforce,
            "event_ids": [events[i].event_id for i in chosen],
            "times": [times[i] for i in chosen],
            "request_digests": [request_digest(events[i].request_id) for i in chosen],
            "digests": prints.digests[ks].tolist(),
            "windows": prints.windows[ks].tolist(),
            "bitmaps": [base64.b64encode(bitmaps[k].tobytes()).decode() for k in ks],
            "topics": [messages[i].topic for i in chosen],
            "partitions": [messages[i].partition for i in chosen],
            "offsets": [messages[i].offset for i in chosen],
        }
        key = query_key(plan.model_id, source).encode()
        out.append(OutputRecord(topic, key, orjson.dumps(record)))
    return out
