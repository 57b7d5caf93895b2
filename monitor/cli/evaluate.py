"""``advmon evaluate``: attack a model on labelled events and write its robustness report.

The evaluation itself is :func:`monitor.evaluate.evaluate`; this module turns the command
line into its arguments, shows the plan with a time estimate and a progress bar per
step, writes the three report files, applies the release gate against ``--baseline`` and
logs to MLflow. Exit statuses are those of :mod:`monitor.evaluate._gate`: 0 passed,
1 error, 2 usage, 3 a regression, 4 a baseline that cannot be compared.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from monitor.cli._console import console, print_table, user_errors
from monitor.cli.offline import _BadLineReporter, _parse_range, device_option
from monitor.settings import Settings

__all__ = ["evaluate", "headline_table"]

_NORMS = ("linf", "l2")
_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def _parse_eps(
    _ctx: click.Context, _param: click.Parameter, values: Sequence[str]
) -> dict[str, list[float]] | None:
    """``--eps linf=0.05,0.1 --eps l2=0.5,1`` as ``{"linf": [...], "l2": [...]}``."""
    if not values:
        return None
    parsed: dict[str, list[float]] = {}
    for value in values:
        norm, sep, numbers = value.partition("=")
        norm = norm.strip().lower()
        if not sep or norm not in _NORMS:
            raise click.BadParameter(
                f"expected NORM=LIST with NORM one of {', '.join(_NORMS)}, e.g. "
                f"linf=0.05,0.1,0.2; got {value!r}"
            )
        if norm in parsed:
            raise click.BadParameter(f"{norm} is given twice")
        try:
            parsed[norm] = [float(part) for part in numbers.split(",")]
        except ValueError:
            raise click.BadParameter(f"{value!r}: ε values must be numbers") from None
    # The values themselves are checked (and sorted) by the evaluation's own rules.
    from monitor.evaluate._engine import check_eps

    try:
        return {str(norm): values for norm, values in check_eps(parsed).items()}
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class _RichProgress:
    """Shows the plan with its time estimate, then one progress bar per step."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def planned(self, steps: Sequence[Any]) -> None:
        total = sum(step.estimated_seconds for step in steps)
        console.print(
            f"{len(steps)} steps, estimated {_duration(total)} on this machine: "
            + ", ".join(
                f"{step.description} ~{_duration(step.estimated_seconds)}" for step in steps
            )
        )
        for step in steps:
            self._tasks[step.key] = self._progress.add_task(
                step.description, total=step.total, start=False
            )

    def started(self, step: Any) -> None:
        self._progress.start_task(self._tasks[step.key])

    def advanced(self, step: Any, done: int) -> None:
        self._progress.update(self._tasks[step.key], completed=done)

    def finished(self, step: Any) -> None:
        task = self._tasks[step.key]
        self._progress.update(task, completed=self._progress.tasks[task].total)
        self._progress.stop_task(task)


def _not_nan(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    if value != value:
        raise click.BadParameter("must be a number in [0, 1], not nan")
    return value


def _check_out_dir(out_dir: Path) -> None:
    """The report's folder exists (or is created) and can be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot create {out_dir}: {exc.strerror or exc}", param_hint="--out"
        ) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise click.BadParameter(f"cannot write into {out_dir}", param_hint="--out")


def _check_baseline_shape(
    baseline: dict[str, Any], model_path: Path, output_name: str | None
) -> None:
    """Exit with the gate's status for an incomparable baseline before any attack when the
    baseline is for another input shape."""
    from detectors import inspect_model, load_model
    from monitor.evaluate import EXIT_INCOMPARABLE

    shape = [None, *inspect_model(load_model(str(model_path)), output_name).input_shape]
    if list(baseline["model"]["input_shape"]) != shape:
        console.print(
            f"release gate incomparable: the baseline is for input shape "
            f"{baseline['model']['input_shape']}, {model_path} takes {shape}",
            markup=False,
        )
        sys.exit(EXIT_INCOMPARABLE)


def _command_line(
    model_path: Path,
    events_path: Path,
    out_dir: Path,
    *,
    detector_path: Path | None,
    attacks: str | None,
    eps: dict[str, list[float]] | None,
    budget: str,
    seed: int,
    label_field: str,
    output_name: str | None,
    input_range: tuple[float, float] | None,
) -> str:
    """The ``advmon evaluate`` command that reproduces the report, options spelt out."""
    words = ["advmon", "evaluate", "--model", str(model_path), "--events", str(events_path)]
    if detector_path is not None:
        words += ["--detector", str(detector_path)]
    if attacks is not None:
        words += ["--attacks", attacks]
    for norm, values in (eps or {}).items():
        words += ["--eps", f"{norm}=" + ",".join(repr(value) for value in values)]
    words += ["--budget", budget, "--seed", str(seed)]
    if label_field != "label":
        words += ["--label-field", label_field]
    if output_name is not None:
        words += ["--output-name", output_name]
    if input_range is not None:
        words += ["--input-range", f"{input_range[0]!r},{input_range[1]!r}"]
    return shlex.join([*words, "--out", str(out_dir)])


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def headline_table(report: dict[str, Any]) -> Table:
    """Per attack at its largest ε: robust accuracy, success and detection."""
    from monitor.evaluate import rows_at_largest_eps

    table = Table(
        title=f"under attack, each at its largest ε (accuracy on {report['clean']['n']} "
        f"clean events: {report['clean']['accuracy']:.1%})"
    )
    table.add_column("attack")
    table.add_column("norm")
    table.add_column("access")
    table.add_column("ε", justify="right")
    table.add_column("robust accuracy", justify="right")
    table.add_column("success", justify="right")
    table.add_column("detected", justify="right")
    table.add_column("ROC-AUC", justify="right")
    for row in rows_at_largest_eps(report):
        auc = row["roc_auc"]
        table.add_row(
            row["name"],
            row["norm"],
            row["access"],
            f"{row['eps']:.4g}",
            _rate(row["robust_accuracy"]),
            _rate(row["success_rate"]),
            _rate(row["detection_rate"]),
            "–" if auc is None else f"{auc:.3f}",
        )
    return table


@click.command()
@click.option(
    "--model", "model_path", type=_existing_file, required=True, help="The ONNX classifier."
)
@click.option(
    "--events",
    "events_path",
    type=_existing_file,
    required=True,
    help="Clean labelled events, JSON lines (native event format) with the true class in "
    "--label-field.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for report.json, report.html and report.md.",
)
@click.option(
    "--detector",
    "detector_path",
    type=_existing_file,
    default=None,
    help="A detector file from advmon calibrate for this model: adds detection rates, "
    "ROC-AUCs, the clean FPR and the scoring cost.",
)
@click.option(
    "--attacks",
    default=None,
    metavar="SPEC",
    help="Comma-separated attacks: square, hopskipjump, simba, boundary (black-box); fgsm, "
    "pgd, cw, deepfool, autoattack (white-box, the advmon[attacks] extra); NAME:linf or "
    "NAME:l2 picks the norm. Default: every attack that applies to the model and budget "
    "(docs/robustness-report.md).",
)
@click.option(
    "--eps",
    multiple=True,
    callback=_parse_eps,
    metavar="NORM=LIST",
    help="Perturbation budgets in input units, per norm: --eps linf=0.05,0.1 --eps l2=1,2. "
    "Default: 2, 5, 10 and 20 % of the input range (L∞) and of the range times the square "
    "root of the input size (L2).",
)
@click.option(
    "--budget",
    type=click.Choice(["small", "full"]),
    default="small",
    show_default=True,
    help="small: at most 100 events and reduced attack strengths; full: 500 events and "
    "ART's default strengths.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds sampling, attacks and noise."
)
@click.option(
    "--label-field",
    default="label",
    show_default=True,
    help="The events' field holding the true class.",
)
@click.option(
    "--input-range",
    callback=_parse_range,
    default=None,
    metavar="LOW,HIGH",
    help="The model's valid input range; the attacks clip to it and ε defaults scale with "
    "it. Default: the detector's; else for images the usual range ([0,1], [0,255] or "
    "[-1,1]) holding the events' values, for tabular inputs the values' range.",
)
@click.option(
    "--output-name",
    default=None,
    metavar="NAME",
    help="The model output holding class scores, when it has several.",
)
@click.option(
    "--baseline",
    "baseline_path",
    type=_existing_file,
    default=None,
    help="The report.json of an earlier release: exit 3 when robust accuracy, detection "
    "rate or clean accuracy dropped by more than --max-drop at any (attack, ε) both share.",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(0, 1),
    callback=_not_nan,
    default=0.02,
    show_default=True,
    help="Largest drop the release gate allows, as a fraction (0.02 = two points).",
)
@click.option(
    "--mlflow-run-id",
    default=None,
    metavar="RUN_ID",
    help="Log the three files and the headline figures to this MLflow run "
    "(MLFLOW_TRACKING_URI; needs the advmon[mlflow] extra).",
)
@device_option
@click.pass_obj
def evaluate(
    settings: Settings,
    model_path: Path,
    events_path: Path,
    out_dir: Path,
    detector_path: Path | None,
    attacks: str | None,
    eps: dict[str, list[float]] | None,
    budget: Any,
    seed: int,
    label_field: str,
    input_range: tuple[float, float] | None,
    output_name: str | None,
    baseline_path: Path | None,
    max_drop: float,
    mlflow_run_id: str | None,
    device: Any,
) -> None:
    """Attack a model and write its robustness report (report.json, .html, .md).

    Black-box attacks (Square, HopSkipJump, SimBA, Boundary) run on the ONNX model through
    ONNX Runtime; with the advmon[attacks] extra, white-box attacks (FGSM, PGD, CW-L2,
    DeepFool) run on the model converted to PyTorch. With --baseline the command is a
    release gate: exit 3 on a regression, 4 when the baseline cannot be compared.
    """
    from monitor.evaluate import (
        check_mlflow_run,
        compare,
        load_report,
        log_to_mlflow,
        write_outputs,
    )
    from monitor.evaluate import (
        evaluate as run_evaluation,
    )

    if not events_path.is_file():
        raise click.BadParameter("must be a regular file, read twice", param_hint="--events")
    bad = _BadLineReporter(events_path)
    with user_errors():
        # Whatever can fail after minutes of attacks is checked before them.
        baseline = load_report(baseline_path) if baseline_path is not None else None
        _check_out_dir(out_dir)
        if mlflow_run_id is not None:
            check_mlflow_run(mlflow_run_id)
        if baseline is not None:
            _check_baseline_shape(baseline, model_path, output_name)
        with (
            bad,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            ) as progress,
        ):
            try:
                evaluation = run_evaluation(
                    model_path,
                    events_path,
                    detector_path=detector_path,
                    attacks=attacks,
                    eps=eps,
                    budget=budget,
                    seed=seed,
                    label_field=label_field,
                    device=device or settings.scoring.device,
                    output_name=output_name,
                    input_range=input_range,
                    command=_command_line(
                        model_path,
                        events_path,
                        out_dir,
                        detector_path=detector_path,
                        attacks=attacks,
                        eps=eps,
                        budget=budget,
                        seed=seed,
                        label_field=label_field,
                        output_name=output_name,
                        input_range=input_range,
                    ),
                    on_bad_line=bad,
                    progress=_RichProgress(progress),
                )
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
        report = evaluation.report
        gate = compare(baseline, report, max_drop) if baseline is not None else None
        files = write_outputs(evaluation, out_dir, gate=gate)
        print_table(headline_table(report))
        detector = report["detector"]
        if detector is not None:
            console.print(
                f"detector {escape(detector['squeezers'])}: threshold {detector['threshold']:.4g}, "
                f"clean FPR {detector['clean_fpr']:.1%} (target {detector['target_fpr']:.1%}); "
                f"scoring costs {report['cost']['ratio']:.2f}× the bare model"
            )
        low, high = report["model"]["input_range"]
        origin = (
            "given"
            if input_range is not None
            else "the detector's"
            if detector is not None
            else "assumed from the events' values; --input-range sets it"
        )
        console.print(f"input range [{low:g}, {high:g}] ({origin})")
        console.print(
            f"white-box attacks: {escape(report['settings']['white_box'])}; "
            f"{report['seconds']:.0f} s. Report written to [bold]{escape(str(files.html))}[/], "
            f"{escape(files.json.name)}, {escape(files.md.name)}"
        )
        if mlflow_run_id is not None:
            log_to_mlflow(mlflow_run_id, files, report)
            console.print(f"logged to MLflow run {escape(mlflow_run_id)}")
    if gate is not None:
        style = "green" if gate.passed else "red"
        console.print(str(gate), style=style, markup=False)
        if not gate.passed:
            sys.exit(gate.exit_code)
