"""Black-box query traffic for the worker tests: ART's attacks on the demo digits model.

The attacks of :mod:`tests.queries.traffic` (every query ART's HopSkipJump or Boundary
sends, recorded by :func:`~tests.queries.traffic.record_attack`) are run against the very
model the session's demo detector was calibrated for, and mixed with the benign users of
:func:`~tests.queries.traffic.benign_users` (retries, repeats, a camera, a bulk client).
Every query becomes a native inference event naming its ``source``, ``request_id`` and
``ts``; :func:`flagged_in_process` says at which query the in-process query stage flags
each source, the figure a worker must reproduce.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import onnx
import orjson

from detectors import DetectorConfig
from monitor.demo.model import load_digits_data
from monitor.evaluate._estimators import OnnxClassifier
from tests.integration.traffic import DemoDetector
from tests.queries.stage import StageRun, run_through_stage, watched_model
from tests.queries.traffic import Query, attacker_queries, benign_users, interleave, record_attack

__all__ = [
    "INPUT_RANGE",
    "QueryTraffic",
    "attack_queries",
    "flagged_in_process",
    "query_event",
    "query_number",
    "query_traffic",
]

INPUT_RANGE = (0.0, 1.0)
"""The demo digits' input range (pixels scaled to [0, 1])."""
RECORDED = 120
"""Queries recorded per attack: far more than flagging takes (11 to 19 on the demo model)."""

_NUMBER = re.compile(r"-e(\d+)$")


def attack_queries(detector: DemoDetector, attack: str, target: int) -> np.ndarray:
    """The first :data:`RECORDED` queries ART's ``attack`` sends against the demo model
    (the one ``detector`` was calibrated for) while it attacks test image ``target``."""
    model_path = DetectorConfig.load(detector.path).model_path
    model = OnnxClassifier(onnx.load(model_path), "logits")
    image = load_digits_data().test_x[target]
    return record_attack(attack, model, image, INPUT_RANGE, limit=RECORDED, seed=0)


@dataclass(frozen=True)
class QueryTraffic:
    """Attackers among benign users, every query in the order the sources send them."""

    queries: list[Query]
    attackers: dict[str, list[Query]]
    """Each attacker's queries, in its order, by source."""

    @property
    def benign_sources(self) -> set[str]:
        """The sources that are no attacker."""
        return {q.source for q in self.queries} - set(self.attackers)


def query_traffic(
    detector: DemoDetector,
    attacks: dict[str, tuple[str, int]],
    *,
    per_attacker: int,
    interval: float = 20.0,
) -> QueryTraffic:
    """``attacks`` (source → ART attack and target test image), ``per_attacker`` queries
    each, one every ``interval`` seconds, among the benign users of the test images other
    than the targets, over an hour of event time."""
    data = load_digits_data()
    keep = np.ones(len(data.test_x), dtype=bool)
    keep[[target for _, target in attacks.values()]] = False
    benign = benign_users(data.test_x[keep], data.test_y[keep], INPUT_RANGE, span=3600.0)
    attackers = {
        source: attacker_queries(
            source,
            attack_queries(detector, attack, target)[:per_attacker],
            start=300.0 + 30.0 * k,
            interval=interval,
        )
        for k, (source, (attack, target)) in enumerate(attacks.items())
    }
    return QueryTraffic(interleave(benign, *attackers.values()), attackers)


def query_event(query: Query, *, model_id: str, epoch: datetime) -> bytes:
    """The native inference event of ``query``: a float32 tensor payload (its bytes as the
    attack sent them), its source, request id and ``ts`` (``epoch`` plus its time)."""
    raw = np.ascontiguousarray(query.input, dtype="<f4").tobytes()
    return orjson.dumps(
        {
            "event_id": query.event_id,
            "model_id": model_id,
            "model_version": "1",
            "ts": (epoch + timedelta(seconds=query.time)).isoformat(),
            "request_id": query.request_id,
            "source": query.source,
            "input": {
                "dtype": "float32",
                "shape": list(query.input.shape),
                "data_b64": base64.b64encode(raw).decode(),
            },
        }
    )


def query_number(event_id: str) -> int:
    """The number (from 1) of a query within its source, from its event id."""
    found = _NUMBER.search(event_id)
    assert found is not None, f"not a query's event id: {event_id!r}"
    return int(found.group(1))


async def flagged_in_process(detector: DemoDetector, queries: Sequence[Query]) -> StageRun:
    """``queries`` through the in-process query stage with ``detector``'s calibrated query
    settings, as one uninterrupted run (the policy: enforce)."""
    config, plan = watched_model(DetectorConfig.load(detector.path))
    return await run_through_stage(queries, config, plan)
