"""White-box evasion attacks on the demo MLP, with analytic gradients.

FGSM (Goodfellow et al., 2015) and PGD (Madry et al., 2018) under an L∞ budget, against
:class:`~monitor.demo.model.MLPClassifierWeights`. They are non-adaptive: they do not
know about the squeezers, which is the threat model feature squeezing addresses.
"""

from __future__ import annotations

import numpy as np

from monitor.demo.model import MLPClassifierWeights

__all__ = ["fgsm", "loss_gradient", "pgd"]


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
