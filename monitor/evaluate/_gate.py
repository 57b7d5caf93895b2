"""The release gate: does a new robustness report fall behind a baseline report?

Two reports are compared at every attack row they share, keyed by (attack name, norm, ε),
with ε matched by :func:`math.isclose` (relative tolerance 1e-9). A metric *regresses*
when it dropped by more than ``max_drop`` (a fraction, e.g. 0.02 for two points):

- ``robust_accuracy`` of every shared row;
- ``detection_rate`` of every shared row where both reports have one;
- the clean accuracy.

Reports that cannot be compared — a different input shape or number of classes, or no
shared (attack, norm, ε) at all — are *incomparable*: nothing is compared and the gate
fails with its own exit status.

Exit statuses of ``advmon evaluate --baseline`` (the CLI exits with these)::

    0  the gate passed
    1  an error (unreadable files, a failed evaluation)
    2  usage (bad options)
    3  EXIT_REGRESSION    a metric dropped by more than --max-drop
    4  EXIT_INCOMPARABLE  the baseline cannot be compared with the new report
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = [
    "EXIT_INCOMPARABLE",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "AttackKey",
    "GateResult",
    "Metric",
    "Regression",
    "compare",
    "rows_at_largest_eps",
]

EXIT_OK = 0
"""The gate passed (or no baseline was given)."""
EXIT_REGRESSION = 3
"""A metric dropped by more than ``max_drop``."""
EXIT_INCOMPARABLE = 4
"""The baseline shares no (attack, norm, ε) with the new report, or is for another input
shape or number of classes."""

EPS_REL_TOL = 1e-9
"""Relative tolerance within which two ε are the same budget."""

_DROP_TOL = 1e-12
"""Rounding slack: a drop of exactly ``max_drop`` (0.80 → 0.78 at 0.02) is no regression."""

Metric = Literal["clean_accuracy", "robust_accuracy", "detection_rate"]


class AttackKey(NamedTuple):
    """What identifies an attack row: the attack's name, its norm and its ε.

    Examples
    --------
    >>> str(AttackKey("square", "linf", 0.03))
    'square linf ε=0.03'
    """

    name: str
    norm: str
    eps: float

    def __str__(self) -> str:
        return f"{self.name} {self.norm} ε={self.eps:g}"

    def matches(self, other: AttackKey) -> bool:
        """Whether ``other`` is the same attack, norm and (within 1e-9 relative) ε.

        >>> AttackKey("pgd", "l2", 0.1).matches(AttackKey("pgd", "l2", 0.1 + 1e-12))
        True
        """
        return (
            self.name == other.name
            and self.norm == other.norm
            and math.isclose(self.eps, other.eps, rel_tol=EPS_REL_TOL)
        )


@dataclass(frozen=True)
class Regression:
    """A metric that dropped by more than the allowed amount.

    ``key`` is ``None`` for the clean accuracy.

    Examples
    --------
    >>> print(Regression(AttackKey("square", "linf", 0.03), "robust_accuracy", 0.8, 0.7))
    square linf ε=0.03: robust_accuracy 0.8 → 0.7 (drop 0.1)
    >>> print(Regression(None, "clean_accuracy", 0.97, 0.9))
    clean: clean_accuracy 0.97 → 0.9 (drop 0.07)
    """

    key: AttackKey | None
    metric: Metric
    baseline: float
    current: float

    @property
    def attack(self) -> str | None:
        """The attack's name; ``None`` for the clean accuracy."""
        return None if self.key is None else self.key.name

    @property
    def norm(self) -> str | None:
        """The attack's norm; ``None`` for the clean accuracy."""
        return None if self.key is None else self.key.norm

    @property
    def eps(self) -> float | None:
        """The attack's ε; ``None`` for the clean accuracy."""
        return None if self.key is None else self.key.eps

    @property
    def drop(self) -> float:
        """How much the metric fell: baseline minus current."""
        return self.baseline - self.current

    def __str__(self) -> str:
        where = "clean" if self.key is None else str(self.key)
        return (
            f"{where}: {self.metric} {_number(self.baseline)} → {_number(self.current)} "
            f"(drop {_number(self.drop)})"
        )


@dataclass(frozen=True)
class GateResult:
    """The verdict of :func:`compare`.

    Attributes
    ----------
    max_drop
        The largest drop allowed.
    regressions
        Every metric that dropped by more than ``max_drop``; the clean accuracy first,
        then attack rows in the new report's order.
    compared
        How many (attack, norm, ε) both reports share.
    only_in_baseline, only_in_current
        The attack rows that only one report has; not compared.
    incomparable
        Why the reports cannot be compared at all, else ``None``: another input shape or
        number of classes, an (attack, norm, ε) of the baseline missing from the new
        report, or a detector measured in the baseline only.
    notes
        Settings that differ (events file, budget, samples, seed): the figures may move
        by that alone.
    """

    max_drop: float
    regressions: tuple[Regression, ...]
    compared: int
    only_in_baseline: tuple[AttackKey, ...]
    only_in_current: tuple[AttackKey, ...]
    incomparable: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether the reports were comparable and nothing regressed."""
        return self.incomparable is None and not self.regressions

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_OK`, :data:`EXIT_REGRESSION` or :data:`EXIT_INCOMPARABLE`."""
        if self.incomparable is not None:
            return EXIT_INCOMPARABLE
        return EXIT_REGRESSION if self.regressions else EXIT_OK

    @property
    def verdict(self) -> str:
        """One line: passed, failed or incomparable, and why."""
        if self.incomparable is not None:
            return f"incomparable: {self.incomparable}"
        pairs = f"{self.compared} shared (attack, norm, ε)"
        if self.regressions:
            count = len(self.regressions)
            metrics = "metric" if count == 1 else "metrics"
            return (
                f"failed: {count} {metrics} dropped by more than {self.max_drop:g} "
                f"({pairs} compared)"
            )
        return f"passed: no metric dropped by more than {self.max_drop:g} ({pairs} compared)"

    def __str__(self) -> str:
        lines = [f"release gate {self.verdict}"]
        lines.extend(f"  {regression}" for regression in self.regressions)
        if self.only_in_baseline:
            lines.append("  only in the baseline: " + _some_keys(self.only_in_baseline))
        if self.only_in_current:
            lines.append("  only in the new report: " + _some_keys(self.only_in_current))
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def compare(baseline: Mapping[str, Any], current: Mapping[str, Any], max_drop: float) -> GateResult:
    """Compare a new robustness report with a baseline report.

    Both are report dicts that passed :func:`monitor.evaluate._report.validate_report`
    (:func:`~monitor.evaluate._report.load_report` returns such a dict).

    Parameters
    ----------
    baseline
        The report of the model the new one must not fall behind.
    current
        The new report.
    max_drop
        The largest drop of a metric that passes, a fraction in [0, 1].

    Raises
    ------
    ValueError
        ``max_drop`` is not in [0, 1].

    Examples
    --------
    >>> def report(clean, robust, detected):
    ...     return {
    ...         "model": {"input_shape": [None, 4], "num_classes": 3},
    ...         "clean": {"accuracy": clean},
    ...         "attacks": [{"name": "square", "norm": "linf", "eps": 0.1,
    ...                      "robust_accuracy": robust, "detection_rate": detected}],
    ...     }
    >>> result = compare(report(0.95, 0.60, 0.90), report(0.95, 0.59, 0.80), max_drop=0.02)
    >>> result.exit_code
    3
    >>> print(result)
    release gate failed: 1 metric dropped by more than 0.02 (1 shared (attack, norm, ε) compared)
      square linf ε=0.1: detection_rate 0.9 → 0.8 (drop 0.1)
    """
    if not 0.0 <= max_drop <= 1.0:  # also refuses NaN
        raise ValueError(f"max_drop must be a fraction in [0, 1], got {max_drop!r}")

    baseline_rows = _RowIndex(baseline["attacks"])
    current_rows = _RowIndex(current["attacks"])
    pairs = [
        (key, baseline_row, current_row)
        for key, current_row in current_rows.rows
        if (baseline_row := baseline_rows.find(key)) is not None
    ]
    only_in_baseline = tuple(key for key, _ in baseline_rows.rows if current_rows.find(key) is None)
    only_in_current = tuple(key for key, _ in current_rows.rows if baseline_rows.find(key) is None)

    incomparable = _why_incomparable(baseline, current, shared=len(pairs), missing=only_in_baseline)
    notes = _differences(baseline, current)
    if incomparable is not None:
        return GateResult(
            max_drop=max_drop,
            regressions=(),
            compared=0,
            only_in_baseline=only_in_baseline,
            only_in_current=only_in_current,
            incomparable=incomparable,
            notes=notes,
        )

    regressions: list[Regression] = []
    clean = _regression(
        None,
        "clean_accuracy",
        baseline["clean"]["accuracy"],
        current["clean"]["accuracy"],
        max_drop,
    )
    if clean is not None:
        regressions.append(clean)
    for key, baseline_row, current_row in pairs:
        for metric in ("robust_accuracy", "detection_rate"):
            regression = _regression(
                key, metric, baseline_row[metric], current_row[metric], max_drop
            )
            if regression is not None:
                regressions.append(regression)
    return GateResult(
        max_drop=max_drop,
        regressions=tuple(regressions),
        compared=len(pairs),
        only_in_baseline=only_in_baseline,
        only_in_current=only_in_current,
        notes=notes,
    )


def rows_at_largest_eps(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each attack's row at its largest ε, one per (attack, norm), in report order.

    Where a report holds the same (attack, norm, ε) more than once, the row with the lowest
    robust accuracy is the one returned.

    Examples
    --------
    >>> rows = [
    ...     {"name": "square", "norm": "linf", "eps": 0.1, "robust_accuracy": 0.6},
    ...     {"name": "square", "norm": "linf", "eps": 0.3, "robust_accuracy": 0.2},
    ...     {"name": "square", "norm": "l2", "eps": 1.0, "robust_accuracy": 0.5},
    ... ]
    >>> [(row["norm"], row["eps"]) for row in rows_at_largest_eps({"attacks": rows})]
    [('linf', 0.3), ('l2', 1.0)]
    """
    strongest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in report["attacks"]:
        attack = (row["name"], row["norm"])
        held = strongest.get(attack)
        if (
            held is None
            or row["eps"] > held["eps"]
            or (row["eps"] == held["eps"] and row["robust_accuracy"] < held["robust_accuracy"])
        ):
            strongest[attack] = row
    return list(strongest.values())


class _RowIndex:
    """A report's attack rows by (attack, norm), sorted by ε: finding a row is a binary
    search, so comparing two reports takes O(n log n) however many rows they hold."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.rows: list[tuple[AttackKey, Mapping[str, Any]]] = []
        self._by_attack: dict[tuple[str, str], list[tuple[float, Mapping[str, Any]]]] = {}
        for row in rows:
            key = AttackKey(row["name"], row["norm"], float(row["eps"]))
            if self.find(key) is None:  # the first of any repeated (attack, norm, ε)
                self.rows.append((key, row))
                bisect.insort(
                    self._by_attack.setdefault((key.name, key.norm), []),
                    (key.eps, row),
                    key=lambda item: item[0],
                )

    def find(self, key: AttackKey) -> Mapping[str, Any] | None:
        """The row of ``key``, its ε matched within :data:`EPS_REL_TOL`."""
        column = self._by_attack.get((key.name, key.norm), [])
        at = bisect.bisect_left(column, key.eps, key=lambda item: item[0])
        for eps, row in column[max(at - 1, 0) : at + 1]:
            if math.isclose(eps, key.eps, rel_tol=EPS_REL_TOL):
                return row
        return None


def _differences(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, ...]:
    """Settings that differ between the reports: the figures may differ by that alone."""
    notes = []
    old_events, new_events = baseline.get("events", {}), current.get("events", {})
    if old_events.get("sha256") != new_events.get("sha256"):
        notes.append("the reports attacked different events files (sha256 differs)")
    old_settings, new_settings = baseline.get("settings", {}), current.get("settings", {})
    for name in ("budget", "samples", "seed"):
        if old_settings.get(name) != new_settings.get(name):
            notes.append(
                f"{name} differs: {old_settings.get(name)} in the baseline, "
                f"{new_settings.get(name)} now"
            )
    return tuple(notes)


def _why_incomparable(
    baseline: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    shared: int,
    missing: Sequence[AttackKey],
) -> str | None:
    old_model, new_model = baseline["model"], current["model"]
    if list(old_model["input_shape"]) != list(new_model["input_shape"]):
        return (
            f"the baseline is for input shape {_shape(old_model['input_shape'])}, "
            f"the new report for {_shape(new_model['input_shape'])}"
        )
    if old_model["num_classes"] != new_model["num_classes"]:
        return (
            f"the baseline is for {old_model['num_classes']} classes, "
            f"the new report for {new_model['num_classes']}"
        )
    if shared == 0:
        return (
            "the baseline shares no (attack, norm, ε) with the new report; "
            "run the new evaluation with the baseline's --attacks and --eps"
        )
    if missing:
        return (
            f"the new report lacks {len(missing)} (attack, norm, ε) of the baseline "
            f"({_some_keys(missing)}); run the new "
            "evaluation with the baseline's --attacks and --eps"
        )
    if baseline.get("detector") is not None and current.get("detector") is None:
        return "the baseline measured a detector and the new report has none; give --detector"
    return None


def _regression(
    key: AttackKey | None,
    metric: Metric,
    baseline: float | None,
    current: float | None,
    max_drop: float,
) -> Regression | None:
    if baseline is None or current is None:
        return None
    if baseline - current > max_drop + _DROP_TOL:
        return Regression(key, metric, float(baseline), float(current))
    return None


def _number(value: float) -> str:
    return f"{round(value, 4):g}"


def _shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("N" if size is None else str(size) for size in shape) + "]"


def _keys(keys: Sequence[AttackKey]) -> str:
    return ", ".join(str(key) for key in keys)


def _some_keys(keys: Sequence[AttackKey], shown: int = 5) -> str:
    more = len(keys) - shown
    return _keys(keys[:shown]) + (f" and {more} more" if more > 0 else "")
