"""Fixtures for detector tests: trained and random classifiers, adversarial digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest

from monitor.demo.attacks import fgsm, pgd
from monitor.demo.model import (
    DigitsData,
    MLPClassifierWeights,
    load_digits_data,
    mlp_to_onnx,
    train_mlp,
)


@dataclass(frozen=True)
class TrainedDigits:
    data: DigitsData
    weights: MLPClassifierWeights
    model: onnx.ModelProto


@pytest.fixture(scope="session")
def digits() -> TrainedDigits:
    """The demo's digit MLP, trained once per test session."""
    data = load_digits_data(seed=0)
    weights = train_mlp(data.train_x, data.train_y, seed=0)
    return TrainedDigits(data, weights, mlp_to_onnx(weights))


@pytest.fixture(scope="session")
def adversarial_digits(digits: TrainedDigits) -> dict[str, np.ndarray]:
    """FGSM and PGD digits (L∞ 0.1) that fool the model, crafted from the test split."""
    data, weights = digits.data, digits.weights
    crafted = {
        "fgsm": fgsm(weights, data.test_x, data.test_y, 0.1),
        "pgd": pgd(weights, data.test_x, data.test_y, 0.1, seed=0),
    }
    return {name: x[weights.logits(x).argmax(axis=1) != data.test_y] for name, x in crafted.items()}
