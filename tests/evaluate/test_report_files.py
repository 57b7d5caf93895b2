"""report.json against its schema, read back as a baseline, and the three files written."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.evaluate._gate import compare
from monitor.evaluate._markdown import escape_markdown, render_markdown
from monitor.evaluate._report import (
    MAX_REPORT_BYTES,
    ReportError,
    load_report,
    validate_report,
    write_outputs,
)
from monitor.evaluate._types import Evaluation
from tests.evaluate.sample_evaluation import sample_evaluation, sample_report


@pytest.mark.parametrize("detector", [True, False])
def test_the_sample_report_follows_the_schema(detector: bool) -> None:
    validate_report(sample_report(detector=detector))


def _without_clean(report: dict[str, Any]) -> None:
    del report["clean"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets the field at a dotted path (list indices as numbers)."""

    def change(report: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = report
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(_without_clean, "$: 'clean' is a required property", id="missing-field"),
        pytest.param(
            _set("created_at", "yesterday"),
            "$.created_at: 'yesterday' is not a 'date-time'",
            id="not-a-date-time",
        ),
        pytest.param(
            _set("created_at", "2026-13-40T25:61:00Z"),
            "$.created_at: '2026-13-40T25:61:00Z' is not a 'date-time'",
            id="impossible-date-time",
        ),
        pytest.param(
            _set("created_at", "2026-12-07T01:00:00"),
            "$.created_at: '2026-12-07T01:00:00' is not a 'date-time'",
            id="date-time-without-offset",
        ),
        pytest.param(
            _set("format", "advmon-report"),
            "$.format: 'advmon-robustness-report' was expected",
            id="other-format",
        ),
        pytest.param(
            _set("model.sha256", "ABC"),
            "$.model.sha256: 'ABC' does not match '^[0-9a-f]{64}$'",
            id="bad-sha256",
        ),
        pytest.param(
            _set("attacks.1.robust_accuracy", 1.5),
            "$.attacks[1].robust_accuracy: 1.5 is greater than the maximum of 1",
            id="rate-above-1",
        ),
        pytest.param(
            _set("attacks.0.detection_rate", -0.1),
            "$.attacks[0].detection_rate: -0.1 is less than the minimum of 0",
            id="nullable-rate-below-0",
        ),
        pytest.param(
            _set("attacks.0.norm", "l1"),
            "$.attacks[0].norm: 'l1' is not one of ['linf', 'l2']",
            id="unknown-norm",
        ),
        pytest.param(
            _set("detector.clean_fpr", 2),
            "$.detector.clean_fpr: 2 is greater than the maximum of 1",
            id="detector-field",
        ),
        pytest.param(
            _set("clean.n", 10.5),
            "$.clean.n: 10.5 is not of type 'integer'",
            id="not-an-integer",
        ),
        pytest.param(
            _set("cost.unknown", 1),
            "$.cost: Additional properties are not allowed ('unknown' was unexpected)",
            id="unknown-field",
        ),
        pytest.param(
            _set("attacks.2.eps", math.nan),
            "$.attacks[2].eps: nan is not a finite number",
            id="nan",
        ),
        pytest.param(
            _set("seconds", math.inf),
            "$.seconds: inf is not a finite number",
            id="infinity",
        ),
    ],
)
def test_a_broken_report_is_refused_naming_the_problem(
    change: Callable[[dict[str, Any]], None], problem: str
) -> None:
    report = sample_report()
    change(report)

    with pytest.raises(ReportError) as error:
        validate_report(report)

    assert error.value.problems == (problem,)
    assert str(error.value) == (
        f"the report does not follow robustness_report.schema.json: {problem}"
    )


def test_the_message_names_the_first_problems_and_counts_the_rest() -> None:
    report = sample_report()
    for row in report["attacks"]:
        row["robust_accuracy"] = 2.0

    with pytest.raises(ReportError) as error:
        validate_report(report)

    assert len(error.value.problems) == 9
    assert str(error.value).count("is greater than the maximum of 1") == 5
    assert str(error.value).endswith("(and 4 more)")


def test_a_report_nested_deeper_than_any_report_is_refused_before_the_schema() -> None:
    report = sample_report()
    deep: Any = "x"
    for _ in range(900):
        deep = [deep]
    report["model"]["path"] = deep

    with pytest.raises(ReportError, match=r"\$\.model\.path(\[0\])+: nested deeper than 16"):
        validate_report(report)


# load_report: the --baseline file is untrusted.


def test_a_written_report_loads_back_unchanged(tmp_path: Path) -> None:
    evaluation = sample_evaluation()
    files = write_outputs(evaluation, tmp_path)

    assert load_report(files.json) == evaluation.report
    assert load_report(str(files.json)) == evaluation.report


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"", r" is not JSON \(", id="empty"),
        pytest.param(b"\x00\xffgarbage\x80", r" is not JSON \(", id="garbage"),
        pytest.param(b'{"format": "advmon-robustness-report",', r" is not JSON \(", id="cut"),
        pytest.param(
            b"[1, 2, 3]",
            r" is not an advmon robustness report: it holds a JSON array, not an object",
            id="array",
        ),
        pytest.param(
            b'"report"',
            r" is not an advmon robustness report: it holds a JSON string, not an object",
            id="string",
        ),
        pytest.param(
            b"null",
            r" is not an advmon robustness report: it holds a JSON null, not an object",
            id="null",
        ),
        pytest.param(
            b'{"score": 0.3, "event_id": "e1"}',
            r" is not an advmon robustness report: it has no 'format'",
            id="score-record",
        ),
        pytest.param(
            b'{"format": "advmon-detector", "version": 1}',
            r" is not an advmon robustness report: it has format 'advmon-detector'",
            id="other-format",
        ),
        pytest.param(
            b'{"format": "advmon-robustness-report", "format_version": 2}',
            r" has format_version 2; this advmon reads version 1: upgrade advmon",
            id="newer-version",
        ),
        pytest.param(
            b'{"format": "advmon-robustness-report", "format_version": 0}',
            r" has format_version 0; this advmon reads version 1: evaluate the baseline",
            id="older-version",
        ),
        pytest.param(
            b'{"format": "advmon-robustness-report", "format_version": "1"}',
            r" has no valid format_version \(found '1'\)",
            id="version-as-text",
        ),
        pytest.param(
            b'{"format": "advmon-robustness-report", "format_version": true}',
            r" has no valid format_version \(found True\)",
            id="version-as-boolean",
        ),
        pytest.param(
            b'{"format": "advmon-robustness-report", "format_version": 1}',
            r": the report does not follow robustness_report.schema.json: "
            r"\$: 'advmon_version' is a required property",
            id="header-only",
        ),
        pytest.param(
            b'{"format": "advmon-robustness-report", "format_version": 1, "seconds": NaN}',
            r" is not JSON \(",
            id="nan-literal",
        ),
    ],
)
def test_load_report_refuses_what_is_no_report(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(content)

    with pytest.raises(ReportError, match="^" + str(path).replace(".", r"\.") + message):
        load_report(path)


def test_load_report_refuses_an_invalid_report_naming_the_file_and_the_problem(
    tmp_path: Path,
) -> None:
    report = sample_report()
    report["attacks"][0]["success_rate"] = 1.2
    path = tmp_path / "report.json"
    path.write_bytes(orjson.dumps(report))

    with pytest.raises(ReportError) as error:
        load_report(path)

    assert error.value.problems == (
        "$.attacks[0].success_rate: 1.2 is greater than the maximum of 1",
    )
    assert str(error.value).startswith(f"{path}: the report does not follow")


def test_load_report_refuses_a_huge_file_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    with path.open("wb") as file:
        file.truncate(MAX_REPORT_BYTES + 1)

    with pytest.raises(ReportError, match=r"is larger than 8 MiB; a robustness report is far"):
        load_report(path)


def test_load_report_reads_a_report_of_exactly_the_size_limit(tmp_path: Path) -> None:
    data = orjson.dumps(sample_report(), option=orjson.OPT_INDENT_2)
    path = tmp_path / "report.json"
    path.write_bytes(data + b" " * (MAX_REPORT_BYTES - len(data)))

    assert load_report(path) == sample_report()


def test_load_report_names_a_missing_file_and_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"missing\.json: no such file$"):
        load_report(tmp_path / "missing.json")
    with pytest.raises(ReportError, match=r" is not a file$"):
        load_report(tmp_path)


def test_load_report_survives_deep_nesting(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    header = b'{"format": "advmon-robustness-report", "format_version": 1, "model": '
    path.write_bytes(header + b"[" * 1000 + b"]" * 1000 + b"}")

    with pytest.raises(ReportError, match=r"nested deeper than 16 levels"):
        load_report(path)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.dictionaries(
        st.sampled_from(["model", "clean", "attacks", "detector", "created_at", "x"]), _JSON
    )
)
def test_load_report_raises_only_report_errors_on_any_json(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(
        orjson.dumps({"format": "advmon-robustness-report", "format_version": 1, **body})
    )

    with pytest.raises(ReportError):
        load_report(path)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    field=st.sampled_from(["model", "clean", "detector", "cost", "attacks", "per_class"]),
    value=_JSON,
)
def test_load_report_raises_only_report_errors_when_a_field_is_replaced(
    tmp_path: Path, field: str, value: Any
) -> None:
    report = sample_report()
    report[field] = value
    path = tmp_path / "report.json"
    path.write_bytes(orjson.dumps(report))

    try:
        loaded = load_report(path)
    except ReportError:
        return
    assert loaded == report


# write_outputs


def test_write_outputs_writes_the_three_files(tmp_path: Path) -> None:
    evaluation = sample_evaluation()
    out = tmp_path / "reports" / "digits"

    files = write_outputs(evaluation, out)

    assert list(files) == [out / "report.json", out / "report.html", out / "report.md"]
    assert sorted(path.name for path in out.iterdir()) == [
        "report.html",
        "report.json",
        "report.md",
    ]
    assert json.loads(files.json.read_text()) == evaluation.report
    assert files.json.read_text().startswith('{\n  "format": "advmon-robustness-report",\n')
    assert files.html.read_text().startswith("<!DOCTYPE html>")
    assert files.md.read_text().startswith("## Robustness of models/digits.onnx\n")


def test_write_outputs_replaces_earlier_files(tmp_path: Path) -> None:
    write_outputs(sample_evaluation(seed=1), tmp_path)
    evaluation = sample_evaluation(seed=2)

    files = write_outputs(evaluation, tmp_path)

    assert load_report(files.json) == evaluation.report
    assert len(list(tmp_path.iterdir())) == 3


def test_write_outputs_takes_numpy_numbers_and_tuples_as_json_does(tmp_path: Path) -> None:
    report = sample_report()
    report["seconds"] = np.float32(12.5)
    report["clean"]["accuracy"] = np.float64(0.9)
    report["clean"]["n"] = np.int64(500)
    report["model"]["input_shape"] = (None, 1, 8, 8)

    files = write_outputs(Evaluation(report=report), tmp_path)

    loaded = load_report(files.json)
    assert (loaded["seconds"], loaded["clean"], loaded["model"]["input_shape"]) == (
        12.5,
        {"n": 500, "accuracy": 0.9},
        [None, 1, 8, 8],
    )


def test_what_json_cannot_hold_is_refused_with_its_path() -> None:
    report = sample_report()
    report["model"]["path"] = Path("models/digits.onnx")
    report["events"][3] = "three"

    with pytest.raises(ReportError) as error:
        validate_report(report)

    assert error.value.problems == (
        "$.model.path: a PosixPath is not a JSON value",
        "$.events: key 3 is not a string",
    )


def test_write_outputs_writes_nothing_for_an_invalid_report(tmp_path: Path) -> None:
    evaluation = sample_evaluation()
    evaluation.report["clean"]["accuracy"] = math.nan

    with pytest.raises(ReportError, match=r"\$\.clean\.accuracy: nan is not a finite number"):
        write_outputs(evaluation, tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_write_outputs_says_when_the_folder_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file where the folder should be")

    with pytest.raises(ReportError, match=r"^cannot write the robustness report to .*out: "):
        write_outputs(sample_evaluation(), blocker)


# report.md


def test_markdown_has_the_headline_and_each_attack_at_its_largest_eps() -> None:
    report = sample_report()

    markdown = render_markdown(report)

    clean = f"{100 * report['clean']['accuracy']:.1f}%"
    assert f"- **Clean accuracy:** {clean} on 500 events\n" in markdown
    assert "- **Model:** models/digits.onnx (sha256 `" + report["model"]["sha256"][:12] in markdown
    assert "squeezers bit\\_depth(4)+median(2)" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[:4] for line in table[1:]] == [
        ["| square", "L∞", "black-box", "0.2"],
        ["| hopskipjump", "L2", "black-box", "2"],
        ["| pgd", "L∞", "white-box", "0.2"],
    ]
    square = next(row for row in report["attacks"] if row["name"] == "square" and row["eps"] == 0.2)
    assert f"| {100 * square['robust_accuracy']:.1f}% |" in table[1]
    assert f"| {100 * square['detection_rate']:.1f}% |" in table[1]
    assert "**Certified accuracy** at L2 radius 0: 90.0% (σ = 0.25), 90.0% (σ = 0.5)." in markdown
    assert "Release gate" not in markdown
    assert len(markdown.splitlines()) < 30


def test_markdown_without_a_detector_says_so() -> None:
    markdown = render_markdown(sample_report(detector=False))

    assert "- **Detector:** none, so no detection rates\n" in markdown
    assert "| — | — |" in markdown


def test_markdown_shows_the_gate_verdict_and_each_regression() -> None:
    baseline = sample_report()
    current = copy.deepcopy(baseline)
    current["attacks"][2]["robust_accuracy"] -= 0.05
    gate = compare(baseline, current, max_drop=0.02)

    markdown = render_markdown(current, gate=gate)

    assert (
        "**Release gate** (max drop 0.02): failed: 1 metric dropped by more than 0.02 "
        "(9 shared (attack, norm, ε) compared)."
    ) in markdown
    assert f"- {escape_markdown(str(gate.regressions[0]))}\n" in markdown
    assert "square linf ε=0.2: robust\\_accuracy" in markdown


def test_markdown_table_cells_escape_what_would_break_the_table() -> None:
    names = ("a|b", "<b>x</b>", "[link](http://example.com)\nnext")
    markdown = render_markdown(sample_report(attack_names=names, model_path="m|`x`*.onnx"))

    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert all(line.replace("\\|", "").count("|") == 9 for line in table)
    assert "| a\\|b |" in markdown
    assert "| \\<b\\>x\\</b\\> |" in markdown
    assert "| \\[link\\](http://example.com) next |" in markdown
    assert "## Robustness of m\\|\\`x\\`\\*.onnx" in markdown
