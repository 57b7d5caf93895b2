"""Models, detectors and recorded attacks for the query-attack tests, built once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from detectors import DetectorConfig, calibrate_detector
from monitor.evaluate._estimators import OnnxClassifier
from tests.evaluate.models import ModelCase, cancer_tabular, digits28_cnn
from tests.queries.traffic import record_attack

ATTACK_LIMIT = 200
"""Queries recorded per attack: far more than detection takes."""


@dataclass(frozen=True)
class Watched:
    """A model, its calibrated detector, and ART's attacks' queries against one input."""

    case: ModelCase
    detector: DetectorConfig
    target: int
    """Row of the test split the attacks attack (kept out of the benign traffic)."""
    attacks: dict[str, np.ndarray]


def _calibrated(case: ModelCase) -> DetectorConfig:
    x = case.calibration.x
    return calibrate_detector(
        case.model_path,
        lambda: (x[i : i + 64] for i in range(0, len(x), 64)),
        output_kind=case.output_kind,
        input_range=case.input_range if case.input_range != (0.0, 1.0) else None,
        device="cpu",
    )


def _watched(case: ModelCase, attacks: tuple[str, ...], target: int) -> Watched:
    model = OnnxClassifier(onnx.load(case.model_path), case.output_kind)
    recorded = {
        name: record_attack(
            name, model, case.test.x[target], case.input_range, limit=ATTACK_LIMIT, seed=0
        )
        for name in attacks
    }
    return Watched(case, _calibrated(case), target, recorded)


@pytest.fixture(scope="session")
def watched_cnn(tmp_path_factory: pytest.TempPathFactory) -> Watched:
    """The 28×28 digits CNN, attacked by HopSkipJump, Boundary, Square and SimBA."""
    folder: Path = tmp_path_factory.mktemp("query-cnn")
    return _watched(digits28_cnn(folder), ("hopskipjump", "boundary", "square", "simba"), 21)


@pytest.fixture(scope="session")
def watched_tabular(tmp_path_factory: pytest.TempPathFactory) -> Watched:
    """The breast-cancer MLP, attacked by HopSkipJump and Boundary (ART's Square and
    SimBA take images only)."""
    folder: Path = tmp_path_factory.mktemp("query-tabular")
    return _watched(cancer_tabular(folder), ("hopskipjump", "boundary"), 0)
