"""Evasion attacks on the demo model.

FGSM (Goodfellow et al., 2015) and PGD (Madry et al., 2018) under an L∞ budget, against
:class:`~monitor.demo.model.MLPClassifierWeights`, with analytic gradients. They are
non-adaptive: they do not know about the squeezers, which is the threat model feature
squeezing addresses.

:func:`record_attack_queries` runs one of ART's black-box attacks (HopSkipJump, Boundary,
Square, SimBA) on an ONNX model and records every query it sends, in order: the traffic
a query attacker's account would write to the inference log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.demo.model import MLPClassifierWeights
from monitor.evaluate._estimators import OnnxClassifier

__all__ = ["BLACK_BOX_ATTACKS", "fgsm", "loss_gradient", "pgd", "record_attack_queries"]

BLACK_BOX_ATTACKS = ("hopskipjump", "boundary", "square", "simba")


def loss_gradient(weights: MLPClassifierWeights, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of the cross-entropy loss with respect to the input, shaped like ``x``."""
    flat = x.reshape(len(x), -1)
    pre = flat @ weights.w1 + weights.b1
    hidden = np.maximum(pre, 0.0)
    logits = hidden @ weights.w2 + weights.b2
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(y)), y] -= 1.0  # d loss / d logits
    d_hidden = (probs @ weights.w2.T) * (pre > 0)
    gradient: np.ndarray = (d_hidden @ weights.w1.T).reshape(x.shape)
    return gradient


def fgsm(weights: MLPClassifierWeights, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """One signed-gradient step of size ``eps``, clipped to ``[0, 1]``."""
    step = eps * np.sign(loss_gradient(weights, x, y))
    adversarial: np.ndarray = np.clip(x + step, 0.0, 1.0).astype(np.float32)
    return adversarial


def pgd(
    weights: MLPClassifierWeights,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Projected gradient descent in the L∞ ball of radius ``eps`` around ``x``."""
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    rng = np.random.default_rng(seed)
    adv = np.clip(x + rng.uniform(-eps, eps, size=x.shape), 0.0, 1.0)
    for _ in range(steps):
        adv = adv + alpha * np.sign(loss_gradient(weights, adv, y))
        adv = np.clip(np.clip(adv, x - eps, x + eps), 0.0, 1.0)
    adversarial: np.ndarray = adv.astype(np.float32)
    return adversarial


class _QueryBudgetSpentError(Exception):
    """Ends an attack once it has sent the queries asked for."""


@dataclass
class _Recorder:
    """ART's model call: records each row it is asked about, then answers."""

    model: OnnxClassifier
    limit: int
    queries: list[np.ndarray] = field(default_factory=list)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, dtype=np.float32)
        room = self.limit - len(self.queries)
        self.queries.extend(rows[:room].copy())
        if len(self.queries) >= self.limit:
            raise _QueryBudgetSpentError
        return self.model.probabilities(rows)


def _black_box_attack(name: str, classifier: Any, input_range: tuple[float, float]) -> Any:
    """ART's attack ``name`` with its usual settings (ε of Square and SimBA from the range)."""
    from art.attacks.evasion import BoundaryAttack, HopSkipJump, SimBA, SquareAttack

    low, high = input_range
    if name == "hopskipjump":
        return HopSkipJump(classifier, max_iter=20, max_eval=200, init_eval=20, verbose=False)
    if name == "boundary":
        return BoundaryAttack(
            classifier, targeted=False, max_iter=200, num_trial=10, sample_size=10, verbose=False
        )
    if name == "square":
        return SquareAttack(
            classifier, norm=np.inf, eps=0.1 * (high - low), max_iter=500, verbose=False
        )
    if name == "simba":
        return SimBA(
            classifier, attack="dct", max_iter=500, epsilon=0.2 * (high - low), verbose=False
        )
    raise ValueError(f"unknown black-box attack {name!r}; known: {', '.join(BLACK_BOX_ATTACKS)}")


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """ART's attacks draw from numpy's global generator: seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _misclassified_start(
    model: _Recorder, x: np.ndarray, input_range: tuple[float, float], tries: int = 100
) -> np.ndarray | None:
    """Uniform noise over the input range that the model classifies unlike ``x``, drawn
    one query at a time as ART's HopSkipJump and Boundary draw it; ``None`` if none of
    ``tries`` draws is."""
    low, high = input_range
    original = int(model(x).argmax(axis=1)[0])
    for _ in range(tries):
        noise = np.random.uniform(low, high, size=x.shape).astype(np.float32)
        if int(model(noise).argmax(axis=1)[0]) != original:
            return noise
    return None


def record_attack_queries(
    name: str,
    model: OnnxClassifier,
    x0: np.ndarray,
    input_range: tuple[float, float],
    *,
    limit: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """The first ``limit`` queries (``[limit, *x0.shape]``, fewer if it finishes first)
    ART's black-box attack ``name`` sends while it attacks ``x0``; a batched model call
    counts as its rows, in order."""
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    recorder = _Recorder(model, limit)
    classifier = BlackBoxClassifierNeuralNetwork(
        recorder,
        input_shape=tuple(x0.shape),
        nb_classes=int(model.signature.num_classes or 0),
        clip_values=input_range,
    )
    attack = _black_box_attack(name, classifier, input_range)
    x = x0[None].astype(np.float32)
    with _numpy_seed(seed), contextlib.suppress(_QueryBudgetSpentError):
        if name in ("hopskipjump", "boundary"):
            # ART draws their starting points from an unseeded generator: the same search,
            # seeded, makes the log repeatable.
            attack.generate(x=x, x_adv_init=_misclassified_start(recorder, x, input_range))
        else:
            attack.generate(x=x)
    return np.stack(recorder.queries)
