"""``report.html``: the robustness report as one self-contained page.

The page loads nothing: its plots are PNG images embedded as ``data:`` URIs and its style
is inline, and a Content-Security-Policy forbids any other source. The template
(``templates/report.html.j2``) escapes every text, since paths, names and the command
line come from the user.

Plots are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never
through pyplot's global state, so reports can be rendered from several threads at once.

The plots, in page order:

- accuracy against ε, one plot per norm: a line per attack, clean accuracy as reference;
- ROC curves of the detector: clean scores against each attack's successful adversarial
  examples at its largest ε (with a detector only);
- score histograms, clean against each attack at its largest ε, with the threshold (with
  a detector only);
- per-class bars: clean accuracy, robust accuracy and, with a detector, detection rate;
- certified accuracy against the L2 radius, a line per σ (when certified rows exist).
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import jinja2
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch
from sklearn.metrics import auc, roc_curve

from monitor.evaluate._gate import GateResult
from monitor.evaluate._markdown import NORM_NAMES, format_rate
from monitor.evaluate._types import AttackScores, Evaluation

__all__ = ["MAX_CLASS_BARS", "Plot", "render_html"]

DPI = 90
"""Resolution of the embedded PNGs: sharp on screen, a few tens of kilobytes each."""
MAX_CLASS_BARS = 30
"""Classes drawn in the per-class plot; with more, the ones with the lowest robust accuracy."""
_MAX_LABEL_CHARS = 40
_NO_DETECTOR = (
    "No detector was evaluated (advmon evaluate --detector), so there are no ROC curves or "
    "score histograms."
)
_NO_SUCCESS = (
    "No attack produced a successful adversarial example, so there are no adversarial "
    "scores to draw."
)
_CLEAN_COLOR = "#4c72b0"
_ADVERSARIAL_COLOR = "#dd5b2c"
_DETECTION_COLOR = "#55a868"

_T = TypeVar("_T")


@dataclass(frozen=True)
class Plot:
    """One embedded figure of the page."""

    title: str
    uri: str
    """The PNG as a ``data:image/png;base64,`` URI."""
    alt: str
    caption: str = ""


@dataclass(frozen=True)
class _Sections:
    accuracy: list[Plot]
    roc: Plot | None
    histograms: Plot | None
    detector_note: str
    per_class: Plot | None
    certified: Plot | None


def render_html(evaluation: Evaluation, gate: GateResult | None = None) -> str:
    """The report page of an evaluation whose report is valid, with the release gate's
    verdict if given: one HTML document with every plot embedded."""
    report = evaluation.report
    detector_scores = _strongest_scores(evaluation.adversarial_scores)
    roc, histograms, detector_note = _detector_plots(evaluation, detector_scores)
    sections = _Sections(
        accuracy=_accuracy_plots(report),
        roc=roc,
        histograms=histograms,
        detector_note=detector_note,
        per_class=_per_class_plot(report),
        certified=_certified_plot(report),
    )
    return _template().render(report=report, sections=sections, gate=gate, norms=NORM_NAMES)


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("monitor.evaluate", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["rate"] = format_rate
    environment.filters["number"] = _number
    return environment.get_template("report.html.j2")


def _accuracy_plots(report: Mapping[str, Any]) -> list[Plot]:
    plots = []
    clean_accuracy = report["clean"]["accuracy"]
    for norm in _ordered(row["norm"] for row in report["attacks"]):
        rows = [row for row in report["attacks"] if row["norm"] == norm]
        figure, ax = _figure(6.4, 3.4)
        handles, labels = [], []
        for name in _ordered(row["name"] for row in rows):
            points = sorted(
                (row["eps"], row["robust_accuracy"]) for row in rows if row["name"] == name
            )
            (line,) = ax.plot(*zip(*points, strict=True), marker="o", markersize=4)
            handles.append(line)
            labels.append(_label(name))
        handles.append(ax.axhline(clean_accuracy, color="0.4", linestyle="--", linewidth=1))
        labels.append(f"clean accuracy ({format_rate(clean_accuracy)})")
        ax.set_xlabel(f"ε ({NORM_NAMES[norm]})")
        ax.set_ylabel("accuracy under attack")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(handles, labels, fontsize="small", loc="best")
        plots.append(
            Plot(
                title=f"Accuracy against ε, {NORM_NAMES[norm]} attacks",
                uri=_png(figure),
                alt=f"Robust accuracy of each {NORM_NAMES[norm]} attack against its ε, "
                "with the clean accuracy as a dashed line",
            )
        )
    return plots


def _strongest_scores(scores: Sequence[AttackScores]) -> list[AttackScores]:
    """Each attack's scores at its largest ε, one per (attack, norm), in first-seen order."""
    strongest: dict[tuple[str, str], AttackScores] = {}
    for attack in scores:
        held = strongest.get((attack.name, attack.norm))
        if held is None or attack.eps > held.eps:
            strongest[(attack.name, attack.norm)] = attack
    return list(strongest.values())


def _detector_plots(
    evaluation: Evaluation, strongest: Sequence[AttackScores]
) -> tuple[Plot | None, Plot | None, str]:
    detector = evaluation.report["detector"]
    if detector is None or evaluation.clean_scores is None:
        return None, None, _NO_DETECTOR
    clean = _finite(evaluation.clean_scores)
    drawn = [attack for attack in strongest if _finite(attack.scores).size]
    missed = [attack for attack in strongest if not _finite(attack.scores).size]
    if clean.size == 0 or not drawn:
        return None, None, _NO_SUCCESS
    note = ""
    if missed:
        note = "No successful adversarial example at the largest ε, not drawn: " + ", ".join(
            _title(attack) for attack in missed
        )
    return _roc_plot(clean, drawn, detector, note), _histogram_plot(clean, drawn, detector), note


def _roc_plot(
    clean: np.ndarray, attacks: Sequence[AttackScores], detector: Mapping[str, Any], note: str
) -> Plot:
    figure, ax = _figure(5.6, 4.2)
    handles, labels = [], []
    for attack in attacks:
        adversarial = _finite(attack.scores)
        truth = np.concatenate([np.zeros(clean.size), np.ones(adversarial.size)])
        fpr, tpr, _ = roc_curve(truth, np.concatenate([clean, adversarial]))
        (line,) = ax.plot(fpr, tpr, linewidth=1.5)
        handles.append(line)
        labels.append(f"{_plot_title(attack)}, AUC {auc(fpr, tpr):.3f}")
    handles.append(ax.axvline(detector["clean_fpr"], color="0.4", linestyle=":", linewidth=1))
    labels.append(f"detector's clean FPR ({format_rate(detector['clean_fpr'])})")
    ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false-positive rate (clean events flagged)")
    ax.set_ylabel("true-positive rate (adversarial flagged)")
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize="small", loc="lower right")
    return Plot(
        title="ROC curves of the detector",
        uri=_png(figure),
        alt="ROC curve of the detector's score for each attack at its largest ε",
        caption=note,
    )


def _histogram_plot(
    clean: np.ndarray, attacks: Sequence[AttackScores], detector: Mapping[str, Any]
) -> Plot:
    columns = min(3, len(attacks))
    rows = math.ceil(len(attacks) / columns)
    figure = Figure(figsize=(3.3 * columns, 2.5 * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    threshold = detector["threshold"]
    for ax, attack in zip(axes, attacks, strict=False):
        adversarial = _finite(attack.scores)
        edges = np.histogram_bin_edges(np.concatenate([clean, adversarial]), bins=40)
        clean_bars = _step_histogram(ax, clean, edges, _CLEAN_COLOR)
        adversarial_bars = _step_histogram(ax, adversarial, edges, _ADVERSARIAL_COLOR)
        line = ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
        ax.set_title(_plot_title(attack), fontsize="small")
        ax.set_xlabel("squeeze score", fontsize="small")
        ax.set_yticks([])
        ax.tick_params(labelsize="x-small")
    axes[0].legend(
        [clean_bars, adversarial_bars, line],
        ["clean", "adversarial", f"threshold {threshold:.4g}"],
        fontsize="x-small",
    )
    for ax in axes[len(attacks) :]:
        ax.set_axis_off()
    return Plot(
        title="Score histograms",
        uri=_png(figure),
        alt="Histograms of the detector's score, clean events against each attack's "
        "successful adversarial examples, with the threshold as a dashed line",
        caption="Densities; an event is flagged when its score is above the dashed threshold.",
    )


def _per_class_plot(report: Mapping[str, Any]) -> Plot | None:
    classes = list(report["per_class"])
    if not classes:
        return None
    caption = ""
    if len(classes) > MAX_CLASS_BARS:
        classes = sorted(classes, key=lambda row: _missing_last(row["robust_accuracy"]))
        classes = sorted(classes[:MAX_CLASS_BARS], key=lambda row: row["label"])
        caption = (
            f"The {MAX_CLASS_BARS} classes with the lowest robust accuracy of "
            f"{len(report['per_class'])}."
        )
    series = [
        ("clean accuracy", "clean_accuracy", _CLEAN_COLOR),
        ("robust accuracy (worst attack)", "robust_accuracy", _ADVERSARIAL_COLOR),
    ]
    if report["detector"] is not None:
        series.append(("detection rate", "detection_rate", _DETECTION_COLOR))
    figure, ax = _figure(min(10.0, max(6.4, 0.28 * len(classes) * len(series))), 3.4)
    positions = np.arange(len(classes))
    width = 0.8 / len(series)
    handles, labels = [], []
    for index, (label, field, color) in enumerate(series):
        heights = [np.nan if row[field] is None else row[field] for row in classes]
        offset = (index - (len(series) - 1) / 2) * width
        bars = ax.bar(positions + offset, heights, width, color=color)
        handles.append(bars)
        labels.append(label)
    ax.set_xticks(positions, [str(row["label"]) for row in classes], fontsize="small")
    ax.set_xlabel("class")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return Plot(
        title="Accuracy and detection by class",
        uri=_png(figure),
        alt="Clean accuracy, worst robust accuracy and detection rate of each class",
        caption=caption,
    )


def _certified_plot(report: Mapping[str, Any]) -> Plot | None:
    certified = report["certified"]
    if not certified:
        return None
    figure, ax = _figure(6.4, 3.4)
    handles, labels = [], []
    for sigma in _ordered(row["sigma"] for row in certified):
        points = sorted(
            (row["radius"], row["certified_accuracy"]) for row in certified if row["sigma"] == sigma
        )
        (line,) = ax.plot(*zip(*points, strict=True), marker="o", markersize=4)
        handles.append(line)
        labels.append(f"σ = {sigma:g}")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize="small")
    return Plot(
        title="Certified accuracy against radius",
        uri=_png(figure),
        alt="Certified accuracy of the randomized-smoothing classifier against the L2 radius, "
        "a line per noise level σ",
    )


def _step_histogram(ax: Axes, values: np.ndarray, edges: np.ndarray, color: str) -> StepPatch:
    """A filled density histogram; returns its patch for the legend."""
    density, _ = np.histogram(values, bins=edges, density=True)
    return ax.stairs(density, edges, fill=True, alpha=0.5, color=color)


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure, figure.add_subplot()


def _png(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def _title(attack: AttackScores) -> str:
    """How a caption names an attack at one ε."""
    return f"{attack.name} ({NORM_NAMES.get(attack.norm, attack.norm)}, ε={attack.eps:g})"


def _plot_title(attack: AttackScores) -> str:
    """How a plot names an attack at one ε."""
    return f"{_label(attack.name)} ({NORM_NAMES.get(attack.norm, attack.norm)}, ε={attack.eps:g})"


def _label(text: str) -> str:
    """Text as matplotlib draws it literally: no mathtext, bounded length."""
    if len(text) > _MAX_LABEL_CHARS:
        text = text[: _MAX_LABEL_CHARS - 1] + "…"
    return text.replace("$", r"\$")


def _ordered(values: Iterable[_T]) -> list[_T]:
    """The distinct values in first-seen order."""
    return list(dict.fromkeys(values))


def _missing_last(value: float | None) -> float:
    return math.inf if value is None else value


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"
