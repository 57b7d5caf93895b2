"""A realistic synthetic :class:`Evaluation`, as ``advmon evaluate`` returns one.

A 10-class digits model with 500 clean events, attacked by three attacks at three ε each
(two L∞, one L2), with or without a feature-squeezing detector. The figures are drawn from
a seeded generator and are consistent with each other: robust accuracy falls as ε grows,
detection rates and ROC-AUCs are computed from the scores returned, and per-class figures
from the same events, as the engine computes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from monitor.evaluate._types import AttackScores, Evaluation

__all__ = ["ATTACKS", "ATTACK_NAMES", "NUM_CLASSES", "sample_evaluation", "sample_report"]

NUM_CLASSES = 10
CLEAN_EVENTS = 500
SAMPLES = 100
"""Events attacked per attack."""
ATTACKS: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    ("square", "linf", "black-box", (0.05, 0.1, 0.2)),
    ("hopskipjump", "l2", "black-box", (0.5, 1.0, 2.0)),
    ("pgd", "linf", "white-box", (0.05, 0.1, 0.2)),
)
"""(name, norm, access, ε) of each attack the sample ran."""
ATTACK_NAMES = tuple(attack[0] for attack in ATTACKS)
CERTIFIED_SIGMAS = (0.25, 0.5)
CERTIFIED_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def sample_evaluation(
    *,
    detector: bool = True,
    seed: int = 0,
    model_path: str = "models/digits.onnx",
    attack_names: Sequence[str] = ATTACK_NAMES,
) -> Evaluation:
    """An evaluation whose report validates against the robustness report schema.

    ``attack_names`` renames the three attacks of :data:`ATTACKS`, in order.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, CLEAN_EVENTS)
    clean_correct = rng.random(CLEAN_EVENTS) < 0.96
    clean_scores = rng.gamma(2.0, 0.02, CLEAN_EVENTS)
    threshold = float(np.quantile(clean_scores, 0.95))

    rows: list[dict[str, Any]] = []
    adversarial: list[AttackScores] = []
    # Per class, over the attacks at their largest ε: correct under attack, and flagged.
    robust_by_class: dict[int, list[float]] = {label: [] for label in range(NUM_CLASSES)}
    flagged_by_class: dict[int, list[bool]] = {label: [] for label in range(NUM_CLASSES)}
    for (_, norm, access, eps_values), name in zip(ATTACKS, attack_names, strict=True):
        attacked = rng.choice(CLEAN_EVENTS, SAMPLES, replace=False)
        strength = rng.uniform(1.0, 3.0)
        for step, eps in enumerate(eps_values):
            flip_chance = 1.0 - np.exp(-strength * (step + 1) / len(eps_values))
            correct_before = clean_correct[attacked]
            flipped = correct_before & (rng.random(SAMPLES) < flip_chance)
            robust = correct_before & ~flipped
            success_labels = labels[attacked][flipped]
            scores = rng.gamma(2.5, 0.04, success_labels.size) + 0.02 * step
            detected = scores > threshold
            if step == len(eps_values) - 1:
                for label, is_robust in zip(labels[attacked], robust, strict=True):
                    robust_by_class[int(label)].append(float(is_robust))
                for label, is_flagged in zip(success_labels, detected, strict=True):
                    flagged_by_class[int(label)].append(bool(is_flagged))
            has_success = bool(success_labels.size)
            auc = (
                float(
                    roc_auc_score(
                        np.r_[np.zeros(CLEAN_EVENTS), np.ones(scores.size)],
                        np.r_[clean_scores, scores],
                    )
                )
                if has_success
                else None
            )
            rows.append(
                {
                    "name": name,
                    "norm": norm,
                    "access": access,
                    "eps": eps,
                    "n": SAMPLES,
                    "robust_accuracy": float(robust.mean()),
                    "success_rate": float(flipped.sum() / correct_before.sum()),
                    "median_perturbation": {
                        "linf": round(eps * 0.92, 6) if norm == "linf" else round(eps * 0.07, 6),
                        "l2": round(eps * 6.5, 6) if norm == "linf" else round(eps * 0.95, 6),
                        "l0": 61.0 if norm == "linf" else 64.0,
                    }
                    if has_success
                    else {"linf": None, "l2": None, "l0": None},
                    "detection_rate": float(detected.mean()) if detector and has_success else None,
                    "roc_auc": auc if detector else None,
                }
            )
            adversarial.append(
                AttackScores(name=name, norm=norm, eps=eps, scores=scores, labels=success_labels)
            )

    per_class = []
    for label in range(NUM_CLASSES):
        in_class = labels == label
        flagged = flagged_by_class[label]
        per_class.append(
            {
                "label": label,
                "n": int(in_class.sum()),
                "clean_accuracy": float(clean_correct[in_class].mean()) if in_class.any() else None,
                "robust_accuracy": float(np.mean(robust_by_class[label]))
                if robust_by_class[label]
                else None,
                "detection_rate": float(np.mean(flagged)) if detector and flagged else None,
            }
        )

    certified = [
        {
            "sigma": sigma,
            "radius": radius,
            "n": SAMPLES,
            "certified_accuracy": round(0.9 * float(np.exp(-radius / (2.5 * sigma))), 2),
        }
        for sigma in CERTIFIED_SIGMAS
        for radius in CERTIFIED_RADII
    ]

    eps_settings: dict[str, list[float]] = {}
    for _, norm, _, eps_values in ATTACKS:
        eps_settings.setdefault(norm, list(eps_values))
    command = (
        f"advmon evaluate --model {model_path} --events data/digits-test.jsonl"
        + (" --detector detectors/digits.json" if detector else "")
        + f" --attacks {','.join(attack_names)} --eps 'linf:0.05,0.1,0.2;l2:0.5,1,2'"
        + " --out reports/digits"
    )
    report: dict[str, Any] = {
        "format": "advmon-robustness-report",
        "format_version": 1,
        "created_at": "2026-12-07T01:00:00Z",
        "advmon_version": "0.1.0",
        "model": {
            "path": model_path,
            "sha256": hashlib.sha256(model_path.encode()).hexdigest(),
            "input_shape": [None, 1, 8, 8],
            "num_classes": NUM_CLASSES,
            "input_kind": "image",
            "input_range": [0.0, 1.0],
            "output_kind": "logits",
        },
        "events": {
            "path": "data/digits-test.jsonl",
            "sha256": hashlib.sha256(b"data/digits-test.jsonl").hexdigest(),
            "n_valid": CLEAN_EVENTS,
            "n_bad_lines": 2,
            "label_field": "label",
        },
        "settings": {
            "attacks": list(attack_names),
            "eps": eps_settings,
            "budget": "small",
            "seed": seed,
            "samples": SAMPLES,
            "white_box": "used",
            "command": command,
        },
        "clean": {"n": CLEAN_EVENTS, "accuracy": float(clean_correct.mean())},
        "detector": {
            "path": "detectors/digits.json",
            "squeezers": "bit_depth(4)+median(2)",
            "threshold": threshold,
            "target_fpr": 0.05,
            "clean_fpr": float((clean_scores > threshold).mean()),
        }
        if detector
        else None,
        "cost": {
            "provider": "CPUExecutionProvider",
            "model_ms_per_event": 0.021,
            "detector_ms_per_event": 0.058 if detector else None,
            "ratio": round(0.058 / 0.021, 4) if detector else None,
        },
        "attacks": rows,
        "certified": certified,
        "per_class": per_class,
        "seconds": 41.7,
    }
    if not detector:
        return Evaluation(report=report)
    return Evaluation(
        report=report,
        clean_scores=clean_scores,
        clean_labels=labels,
        adversarial_scores=adversarial,
    )


def sample_report(**options: Any) -> dict[str, Any]:
    """The report of :func:`sample_evaluation` with the same options."""
    return sample_evaluation(**options).report
