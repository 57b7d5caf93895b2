"""``report.md``: the robustness report in half a page of Markdown, for a release note.

Every text that comes from the report (paths, attack names, squeezers) is escaped, so it
reads as written and never turns into a link, an image, HTML or a table column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from monitor.evaluate._gate import GateResult, rows_at_largest_eps

__all__ = ["escape_markdown", "format_rate", "render_markdown"]

_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|&~$!#])")
_BREAKS = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")

NORM_NAMES = {"linf": "L∞", "l2": "L2"}
"""How a norm is written for a reader."""


def render_markdown(report: Mapping[str, Any], gate: GateResult | None = None) -> str:
    """The summary of a valid report: headline figures, each attack at its largest ε,
    certified accuracy at the first radius, and the release gate's verdict if given.

    Examples
    --------
    >>> report = {
    ...     "model": {"path": "models/digits.onnx", "sha256": "ab" * 32, "num_classes": 10},
    ...     "clean": {"n": 500, "accuracy": 0.962},
    ...     "detector": None,
    ...     "cost": {"ratio": None},
    ...     "attacks": [{"name": "square", "norm": "linf", "access": "black-box", "eps": 0.1,
    ...                  "robust_accuracy": 0.31, "success_rate": 0.68,
    ...                  "detection_rate": None, "roc_auc": None}],
    ...     "certified": [],
    ...     "settings": {"budget": "small", "samples": 100, "seed": 0, "white_box": "used"},
    ...     "advmon_version": "0.1.0", "created_at": "2026-01-01T00:00:00Z",
    ... }
    >>> print(render_markdown(report))  # doctest: +NORMALIZE_WHITESPACE
    ## Robustness of models/digits.onnx
    <BLANKLINE>
    - **Model:** models/digits.onnx (sha256 `abababababab`), 10 classes
    - **Clean accuracy:** 96.2% on 500 events
    - **Detector:** none, so no detection rates
    <BLANKLINE>
    | Attack | Norm | Access | ε | Robust accuracy | Success rate | Detected | ROC-AUC |
    |---|---|---|--:|--:|--:|--:|--:|
    | square | L∞ | black-box | 0.1 | 31.0% | 68.0% | — | — |
    <BLANKLINE>
    *advmon 0.1.0, 2026-01-01T00:00:00Z; budget small, 100 events per attack, seed 0,
    white-box attacks: used.*
    <BLANKLINE>
    """
    model = report["model"]
    clean = report["clean"]
    path = escape_markdown(model["path"])
    lines = [
        f"## Robustness of {path}",
        "",
        f"- **Model:** {path} (sha256 `{model['sha256'][:12]}`), {model['num_classes']} classes",
        f"- **Clean accuracy:** {format_rate(clean['accuracy'])} on {clean['n']} events",
        f"- **Detector:** {_detector_line(report)}",
        "",
        "| Attack | Norm | Access | ε | Robust accuracy | Success rate | Detected | ROC-AUC |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows_at_largest_eps(report):
        auc = "—" if row["roc_auc"] is None else f"{row['roc_auc']:.3f}"
        cells = [
            escape_markdown(row["name"]),
            NORM_NAMES.get(row["norm"], escape_markdown(row["norm"])),
            row["access"],
            f"{row['eps']:g}",
            format_rate(row["robust_accuracy"]),
            format_rate(row["success_rate"]),
            format_rate(row["detection_rate"]),
            auc,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not report["attacks"]:
        lines.append("| no attack ran | | | | | | | |")
    lines.append("")

    certified = report["certified"]
    if certified:
        radius = certified[0]["radius"]
        at_radius = ", ".join(
            f"{format_rate(row['certified_accuracy'])} (σ = {row['sigma']:g})"
            for row in certified
            if row["radius"] == radius
        )
        lines += [f"**Certified accuracy** at L2 radius {radius:g}: {at_radius}.", ""]

    if gate is not None:
        lines.append(f"**Release gate** (max drop {gate.max_drop:g}): {gate.verdict}.")
        lines.extend(f"- {escape_markdown(str(regression))}" for regression in gate.regressions)
        lines.append("")

    settings = report["settings"]
    lines += [
        f"*advmon {escape_markdown(report['advmon_version'])}, "
        f"{escape_markdown(report['created_at'])}; budget {settings['budget']}, "
        f"{settings['samples']} events per attack, seed {settings['seed']}, "
        f"white-box attacks: {escape_markdown(settings['white_box'])}.*",
        "",
    ]
    return "\n".join(lines)


def escape_markdown(text: str) -> str:
    """``text`` as Markdown that renders it literally, on one line and in one table cell.

    >>> print(escape_markdown("a|b <script> [x](y)\\n*z*"))
    a\\|b \\<script\\> \\[x\\](y) \\*z\\*
    """
    return _SPECIAL.sub(r"\\\1", _BREAKS.sub(" ", text))


def format_rate(rate: float | None) -> str:
    """A rate as a percentage with one decimal; ``—`` when there is none.

    >>> format_rate(0.8125), format_rate(None)
    ('81.2%', '—')
    """
    return "—" if rate is None else f"{100 * rate:.1f}%"


def _detector_line(report: Mapping[str, Any]) -> str:
    detector = report["detector"]
    if detector is None:
        return "none, so no detection rates"
    ratio = report["cost"]["ratio"]
    cost = "" if ratio is None else f"; {ratio:.2f}× the model's time per event"
    return (
        f"squeezers {escape_markdown(detector['squeezers'])}, threshold "
        f"{detector['threshold']:.4g}, flags {format_rate(detector['clean_fpr'])} of clean "
        f"events (target {format_rate(detector['target_fpr'])}){cost}"
    )
