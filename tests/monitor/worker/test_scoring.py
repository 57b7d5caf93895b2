"""The scoring stage without a broker: publishing, metrics, and events that fail to score."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from detectors import Detector, DetectorScores
from monitor.config import MonitorConfig
from monitor.demo.run import demo_event
from monitor.worker.metrics import Metrics
from monitor.worker.models import load_model_detectors
from monitor.worker.records import InputMessage, OutputRecord
from monitor.worker.stages.scoring import ScoringStage
from schemas import DeadLetter


class RefusesBrightImages:
    """Scores like the real detector but fails on any batch holding a bright image."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.batch_sizes: list[int] = []

    def score(self, batch: np.ndarray) -> DetectorScores:
        self.batch_sizes.append(len(batch))
        if (batch.reshape(len(batch), -1).mean(axis=1) > 0.9).any():
            raise RuntimeError("ONNX Runtime refused the input")
        return self.detector.score(batch)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_an_event_that_fails_to_score_is_dead_lettered_alone(
    detector_path: Path,
) -> None:
    config = MonitorConfig.model_validate(
        {"models": [{"id": "digits", "detector": str(detector_path), "policy": "observe"}]}
    )
    published: list[OutputRecord] = []

    async def publish(records: Sequence[OutputRecord]) -> None:
        published.extend(records)

    registry = CollectorRegistry()
    stage = ScoringStage(
        config, load_model_detectors(config), Metrics.create(registry), publish, device="cpu"
    )
    fake = RefusesBrightImages(Detector.from_file(detector_path, device="cpu"))
    stage.detectors["digits"] = fake  # type: ignore[assignment]
    stage._ready.set()

    images = [np.full((1, 8, 8), 0.2, np.float32)] * 3 + [np.ones((1, 8, 8), np.float32)]
    messages = [
        InputMessage(
            "inference-events",
            0,
            i,
            None,
            demo_event(f"e{i}", image, as_tensor=False, source="s"),
            1.0,
        )
        for i, image in enumerate(images)
    ]
    await asyncio.wait_for(stage.process(messages), 30)

    assert fake.batch_sizes == [4, 1, 1, 1, 1]
    decisions = [r for r in published if r.topic == "advmon-decisions"]
    assert len(decisions) == 3
    (letter,) = [
        DeadLetter.model_validate_json(r.value)
        for r in published
        if r.topic == "advmon-dead-letter"
    ]
    assert (letter.reason, letter.event_id, letter.offset) == ("scoring_error", "e3", 3)
    assert "ONNX Runtime refused the input" in letter.error
    assert sample(registry, "advmon_events_invalid_total", reason="scoring_error") == 1
    assert sample(registry, "advmon_events_scored_total", model="digits") == 3
    assert sample(registry, "advmon_events_consumed_total", topic="inference-events") == 4
    assert sample(registry, "advmon_decisions_total", action="allow", scope="request") == 3
    stage._executor.shutdown()


def test_each_models_calibrated_fpr_is_exported(detector_path: Path) -> None:
    config = MonitorConfig.model_validate(
        {
            "models": [
                {"id": "digits", "detector": str(detector_path), "policy": "observe"},
                {"id": "digits-b", "detector": str(detector_path), "policy": "observe"},
            ]
        }
    )
    models = load_model_detectors(config)

    async def publish(records: Sequence[OutputRecord]) -> None:
        pass

    registry = CollectorRegistry()
    ScoringStage(config, models, Metrics.create(registry), publish, device="cpu")
    target = models["digits"].detector.target_fpr
    assert 0 < target < 1
    for model_id in ("digits", "digits-b"):
        assert sample(registry, "advmon_detector_target_fpr", model=model_id) == target
