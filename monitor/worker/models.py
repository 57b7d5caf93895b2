"""The monitored models: each model's worker config and calibrated detector file."""

from __future__ import annotations

from dataclasses import dataclass

from detectors import DetectorConfig, file_sha256
from monitor.config import ModelConfig, MonitorConfig

__all__ = ["ModelDetector", "load_model_detectors"]


@dataclass(frozen=True)
class ModelDetector:
    """What the pipeline knows of one model's detector."""

    config: ModelConfig
    detector: DetectorConfig
    detector_sha256: str


def load_model_detectors(config: MonitorConfig) -> dict[str, ModelDetector]:
    """Read every model's detector file (checking model hashes); no ONNX sessions yet."""
    return {
        model.id: ModelDetector(
            config=model,
            detector=DetectorConfig.load(model.detector),
            detector_sha256=file_sha256(model.detector),
        )
        for model in config.models
    }
