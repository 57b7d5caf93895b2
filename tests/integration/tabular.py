"""A tabular model for the format tests: the breast-cancer MLP pipeline of
:mod:`tests.cancer`, its detector calibrated on 200 benign rows, and the rows to send."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors import Detector, calibrate_detector
from tests.cancer import build_cancer_case

__all__ = ["TabularModel", "build_tabular_model"]


@dataclass(frozen=True)
class TabularModel:
    """The detector file, and rows to send with the detector's offline verdict on each."""

    detector_path: Path
    clean: np.ndarray
    adversarial: np.ndarray
    """FGSM rows that fool the model."""
    detector: Detector

    def offline(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The detector's scores and verdicts for ``rows``, on CPU."""
        verdict = self.detector.score(rows.astype(np.float32))
        return verdict.scores.score, verdict.flagged


def build_tabular_model(folder: Path) -> TabularModel:
    """Train, export, calibrate and attack; takes a few seconds."""
    case = build_cancer_case(folder)
    benign = case.benign

    def batches() -> list[np.ndarray]:
        return [benign[i : i + 64] for i in range(0, len(benign), 64)]

    config = calibrate_detector(case.model_path, batches, device="cpu")
    detector_path = folder / "cancer-detector.json"
    config.save(detector_path)
    return TabularModel(
        detector_path=detector_path,
        clean=case.test_x,
        adversarial=case.adversarial,
        detector=Detector.from_file(detector_path, device="cpu"),
    )
