"""The release gate: a new report against a baseline report."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from monitor.evaluate._gate import (
    EXIT_INCOMPARABLE,
    EXIT_OK,
    EXIT_REGRESSION,
    AttackKey,
    Regression,
    compare,
)
from tests.evaluate.sample_evaluation import sample_report


def _row(report: dict[str, Any], name: str, eps: float) -> dict[str, Any]:
    return next(row for row in report["attacks"] if row["name"] == name and row["eps"] == eps)


@pytest.fixture
def baseline() -> dict[str, Any]:
    return sample_report()


@pytest.fixture
def current(baseline: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(baseline)


def test_the_exit_statuses_are_the_documented_ones() -> None:
    assert (EXIT_OK, EXIT_REGRESSION, EXIT_INCOMPARABLE) == (0, 3, 4)


def test_identical_reports_pass(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    result = compare(baseline, current, max_drop=0.0)

    assert result.passed
    assert result.exit_code == EXIT_OK
    assert result.regressions == ()
    assert result.compared == 9
    assert result.only_in_baseline == result.only_in_current == ()
    assert result.incomparable is None
    assert result.verdict == (
        "passed: no metric dropped by more than 0 (9 shared (attack, norm, ε) compared)"
    )


def test_a_robust_accuracy_drop_beyond_max_drop_is_a_regression(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    _row(current, "hopskipjump", 1.0)["robust_accuracy"] -= 0.03

    result = compare(baseline, current, max_drop=0.02)

    before = _row(baseline, "hopskipjump", 1.0)["robust_accuracy"]
    assert result.regressions == (
        Regression(AttackKey("hopskipjump", "l2", 1.0), "robust_accuracy", before, before - 0.03),
    )
    assert not result.passed
    assert result.exit_code == EXIT_REGRESSION
    regression = result.regressions[0]
    assert (regression.attack, regression.norm, regression.eps) == ("hopskipjump", "l2", 1.0)
    assert regression.drop == pytest.approx(0.03)


def test_a_detection_rate_drop_beyond_max_drop_is_a_regression(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    _row(current, "square", 0.2)["detection_rate"] -= 0.1
    _row(current, "pgd", 0.05)["detection_rate"] -= 0.05

    result = compare(baseline, current, max_drop=0.02)

    assert [(r.key, r.metric) for r in result.regressions] == [
        (AttackKey("square", "linf", 0.2), "detection_rate"),
        (AttackKey("pgd", "linf", 0.05), "detection_rate"),
    ]
    assert [r.drop for r in result.regressions] == [pytest.approx(0.1), pytest.approx(0.05)]
    assert result.exit_code == EXIT_REGRESSION


def test_a_clean_accuracy_drop_is_a_regression(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    current["clean"]["accuracy"] -= 0.05

    result = compare(baseline, current, max_drop=0.02)

    assert len(result.regressions) == 1
    regression = result.regressions[0]
    assert (regression.key, regression.metric, regression.attack) == (None, "clean_accuracy", None)
    assert str(regression).startswith("clean: clean_accuracy ")


@pytest.mark.parametrize("drop", [0.0, 0.01, 0.02])
def test_drops_within_max_drop_pass(
    baseline: dict[str, Any], current: dict[str, Any], drop: float
) -> None:
    current["clean"]["accuracy"] -= drop
    for row in current["attacks"]:
        row["robust_accuracy"] -= drop
        row["detection_rate"] -= drop

    result = compare(baseline, current, max_drop=0.02)

    assert result.passed, str(result)


def test_a_drop_of_exactly_max_drop_between_exact_fractions_passes() -> None:
    report = sample_report()
    baseline, current = copy.deepcopy(report), copy.deepcopy(report)
    _row(baseline, "square", 0.1)["robust_accuracy"] = 0.80
    _row(current, "square", 0.1)["robust_accuracy"] = 0.78  # 0.80 - 0.78 > 0.02 in floats

    assert compare(baseline, current, max_drop=0.02).passed


def test_improvements_pass(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    for row in current["attacks"]:
        row["robust_accuracy"] = min(1.0, row["robust_accuracy"] + 0.2)

    assert compare(baseline, current, max_drop=0.0).passed


def test_eps_is_matched_within_relative_1e_9(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    for row in current["attacks"]:
        row["eps"] *= 1 + 1e-12
    _row(current, "pgd", 0.1 * (1 + 1e-12))["robust_accuracy"] -= 0.1

    result = compare(baseline, current, max_drop=0.02)

    assert result.compared == 9
    assert [r.key for r in result.regressions if r.key is not None] == [
        AttackKey("pgd", "linf", 0.1 * (1 + 1e-12))
    ]


def test_eps_beyond_the_tolerance_is_another_attack_row(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    _row(current, "square", 0.1)["eps"] = 0.1 * (1 + 1e-6)

    result = compare(baseline, current, max_drop=0.02)

    assert result.only_in_baseline == (AttackKey("square", "linf", 0.1),)
    assert result.only_in_current == (AttackKey("square", "linf", 0.1 * (1 + 1e-6)),)
    # A row of the baseline the new report lacks cannot pass by being left out.
    assert result.exit_code == EXIT_INCOMPARABLE
    assert "lacks 1 (attack, norm, ε) of the baseline (square linf ε=0.1)" in str(result)


def test_a_baseline_of_many_rows_is_compared(baseline: dict[str, Any]) -> None:
    rows = [dict(_row(baseline, "square", 0.1), eps=1 + i / 1000) for i in range(20_000)]
    big = dict(baseline, attacks=rows)
    result = compare(big, copy.deepcopy(big), max_drop=0.02)
    assert result.compared == 20_000
    assert result.passed


def test_rows_in_one_report_only_are_listed_not_compared(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    extra = copy.deepcopy(_row(current, "square", 0.2))
    extra.update(eps=0.3, robust_accuracy=0.0)
    current["attacks"].append(extra)
    baseline["attacks"] = [row for row in baseline["attacks"] if row["name"] != "pgd"]

    result = compare(baseline, current, max_drop=0.02)

    assert result.passed
    assert result.compared == 6
    assert result.only_in_baseline == ()
    assert result.only_in_current == (
        AttackKey("pgd", "linf", 0.05),
        AttackKey("pgd", "linf", 0.1),
        AttackKey("pgd", "linf", 0.2),
        AttackKey("square", "linf", 0.3),
    )
    assert "only in the new report: pgd linf ε=0.05, " in str(result)


def test_detection_rates_are_compared_only_where_both_reports_have_one(
    baseline: dict[str, Any],
) -> None:
    without_detector = sample_report(detector=False)

    assert compare(without_detector, baseline, max_drop=0.0).passed
    # Leaving the detector out cannot pass a gate its detection rates would fail.
    result = compare(baseline, without_detector, max_drop=0.0)
    assert result.exit_code == EXIT_INCOMPARABLE
    assert "give --detector" in str(result)


def test_different_settings_are_noted(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    current["settings"] = dict(current["settings"], budget="full", samples=500)
    current["events"] = dict(current["events"], sha256="0" * 64)
    notes = compare(baseline, current, max_drop=0.02).notes
    assert any("different events files" in note for note in notes)
    assert any(note.startswith("budget differs") for note in notes)
    assert any(note.startswith("samples differs") for note in notes)


def test_reports_sharing_no_attack_row_are_incomparable(
    baseline: dict[str, Any],
) -> None:
    current = sample_report(attack_names=("square2", "hsj", "fgsm"))

    result = compare(baseline, current, max_drop=0.02)

    assert result.exit_code == EXIT_INCOMPARABLE
    assert not result.passed
    assert result.compared == 0
    assert result.regressions == ()
    assert len(result.only_in_baseline) == len(result.only_in_current) == 9
    assert result.incomparable == (
        "the baseline shares no (attack, norm, ε) with the new report; "
        "run the new evaluation with the baseline's --attacks and --eps"
    )
    assert str(result).startswith("release gate incomparable: the baseline shares no")


def test_a_baseline_for_another_input_shape_is_incomparable(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    current["model"]["input_shape"] = [None, 3, 32, 32]
    current["clean"]["accuracy"] = 0.1

    result = compare(baseline, current, max_drop=0.02)

    assert result.exit_code == EXIT_INCOMPARABLE
    assert result.regressions == ()
    assert result.incomparable == (
        "the baseline is for input shape [N, 1, 8, 8], the new report for [N, 3, 32, 32]"
    )


def test_a_baseline_for_another_number_of_classes_is_incomparable(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    current["model"]["num_classes"] = 100

    result = compare(baseline, current, max_drop=0.02)

    assert result.exit_code == EXIT_INCOMPARABLE
    assert result.incomparable == "the baseline is for 10 classes, the new report for 100"


@pytest.mark.parametrize("max_drop", [-0.01, 1.01, math.nan, math.inf])
def test_max_drop_must_be_a_fraction(
    baseline: dict[str, Any], current: dict[str, Any], max_drop: float
) -> None:
    with pytest.raises(ValueError, match=r"^max_drop must be a fraction in \[0, 1\], got "):
        compare(baseline, current, max_drop=max_drop)


@pytest.mark.parametrize("max_drop", [0.0, 1.0])
def test_max_drop_bounds_are_allowed(
    baseline: dict[str, Any], current: dict[str, Any], max_drop: float
) -> None:
    assert compare(baseline, current, max_drop=max_drop).passed


def test_a_regression_prints_everything_a_release_manager_needs() -> None:
    regression = Regression(AttackKey("square", "linf", 0.03), "detection_rate", 0.912, 0.85)

    assert str(regression) == "square linf ε=0.03: detection_rate 0.912 → 0.85 (drop 0.062)"


def test_the_printed_result_lists_every_regression(
    baseline: dict[str, Any], current: dict[str, Any]
) -> None:
    current["clean"]["accuracy"] -= 0.1
    _row(current, "square", 0.05)["robust_accuracy"] -= 0.1

    lines = str(compare(baseline, current, max_drop=0.02)).splitlines()

    assert lines[0] == (
        "release gate failed: 2 metrics dropped by more than 0.02 "
        "(9 shared (attack, norm, ε) compared)"
    )
    assert lines[1].startswith("  clean: clean_accuracy ")
    assert lines[2].startswith("  square linf ε=0.05: robust_accuracy ")
    assert len(lines) == 3
