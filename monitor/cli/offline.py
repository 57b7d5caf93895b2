"""``advmon calibrate`` and ``advmon score``: detector files and scores from event files.

Both read JSON-lines event files through :mod:`monitor.offline`; a bad line is reported
with its line number and skipped, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from monitor.cli._console import console, file_option, user_errors
from monitor.offline import BadLine, calibrate_file, score_file
from monitor.settings import Settings

__all__ = ["calibrate", "device_option", "score"]

_MAX_BAD_LINES_SHOWN = 20

device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="ONNX Runtime device: auto uses CUDA when a GPU is present. "
    "[default: ADVMON_SCORING__DEVICE or auto]",
)
_batch_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Events per run of the fused graph. [default: ADVMON_SCORING__BATCH_SIZE or 256]",
)
_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def _parse_range(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter("expected LOW,HIGH, e.g. 0,1 or 0,255") from None
    if not low < high:
        raise click.BadParameter(f"LOW must be below HIGH, got {value}")
    return low, high


class _BadLineReporter:
    """Prints the first bad lines of an events file and counts all of them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def __call__(self, bad: BadLine) -> None:
        self.count += 1
        if self.count <= _MAX_BAD_LINES_SHOWN:
            console.print(f"[yellow]skipped[/] {self.path}:{bad.line_number}: {bad.reason}")
        elif self.count == _MAX_BAD_LINES_SHOWN + 1:
            console.print("[yellow]… more bad lines; the total is printed at the end[/]")

    def summary(self) -> None:
        if self.count:
            console.print(f"[yellow]{self.count} bad line(s) skipped[/] in {self.path}")


@contextmanager
def _file_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar over bytes of the events file (hidden when not on a terminal)."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.update(task, completed=done)


@click.command()
@click.option(
    "--model",
    "model_path",
    type=_existing_file,
    required=True,
    help="The ONNX classifier to monitor.",
)
@click.option(
    "--events",
    "events_path",
    type=_existing_file,
    required=True,
    help="Benign inference events, JSON lines (native event format).",
)
@file_option(
    "--out",
    "out_path",
    "Where to write the detector file (JSON).",
    required=True,
)
@click.option(
    "--fpr",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Target false-positive rate on benign traffic.",
)
@click.option(
    "--squeezers",
    "squeezer_spec",
    default=None,
    metavar="SPEC",
    help="Squeezers, e.g. 'bit_depth:1,median:2,median:3' (bit_depth:B, median:K; tabular: "
    "quantize:S, quantile:K, round:D). Default: a preset for the input's shape (image or "
    "tabular).",
)
@click.option(
    "--output-kind",
    type=click.Choice(["auto", "logits", "probabilities"]),
    default="auto",
    show_default=True,
    help="Whether the model outputs logits (softmax is applied) or probabilities; "
    "auto inspects the graph and a benign sample.",
)
@click.option(
    "--output-name",
    default=None,
    metavar="NAME",
    help="The model output holding class scores, when it has several.",
)
@click.option(
    "--input-range",
    callback=_parse_range,
    default=None,
    metavar="LOW,HIGH",
    help="Valid input value range used by bit_depth. Default: for images the "
    "usual range ([0,1], [0,255] or [-1,1]) containing the benign data; for "
    "tabular inputs the benign data's range.",
)
@_batch_option
@device_option
@click.pass_obj
def calibrate(
    settings: Settings,
    model_path: Path,
    events_path: Path,
    out_path: Path,
    fpr: float,
    squeezer_spec: str | None,
    output_kind: Any,
    output_name: str | None,
    input_range: tuple[float, float] | None,
    batch_size: int | None,
    device: Any,
) -> None:
    """Calibrate a feature-squeezing detector on benign events.

    The threshold is the ceil((1 - FPR) * n)-th smallest squeeze score of the n benign
    events; at least 100 are needed. Bad lines are reported with their line number and
    skipped.
    """
    bad = _BadLineReporter(events_path)
    with user_errors(), _file_progress("calibrating", 2 * events_path.stat().st_size) as tick:
        report = calibrate_file(
            model_path,
            events_path,
            out_path,
            fpr=fpr,
            squeezer_spec=squeezer_spec,
            output_kind=output_kind,
            output_name=output_name,
            input_range=input_range,
            batch_size=batch_size or settings.scoring.batch_size,
            device=device or settings.scoring.device,
            on_bad_line=bad,
            on_progress=tick,
        )
    config = report.config
    bad.summary()
    how = f" (preset for {config.input_kind} input)" if report.preset_used else ""
    table = Table(show_header=False, box=None)
    table.add_row("model", f"{config.model_path}  sha256 {config.model_sha256[:12]}…")
    table.add_row(
        "input",
        f"{config.input_kind} {list(config.input_shape)}, "
        f"range [{config.input_range[0]:g}, {config.input_range[1]:g}]",
    )
    table.add_row("output", f"{config.output_name} ({config.output_kind})")
    table.add_row("squeezers", config.squeezer_spec + how)
    table.add_row("benign events", str(config.calibration.n_events))
    table.add_row("threshold", f"{config.threshold:.6g}")
    table.add_row(
        "false-positive rate",
        f"target {config.target_fpr:g}, on calibration data {config.calibration.achieved_fpr:.4f}",
    )
    table.add_row("device", config.calibration.provider)
    console.print(table)
    console.print(f"detector written to [bold]{out_path}[/]")


@click.command()
@click.option(
    "--detector",
    "detector_path",
    type=_existing_file,
    required=True,
    help="Detector file written by advmon calibrate.",
)
@click.option(
    "--events",
    "events_path",
    type=_existing_file,
    required=True,
    help="Inference events to score, JSON lines (native event format).",
)
@file_option(
    "--out",
    "out_path",
    'Where to write one line per event: {"event_id", "score", "flagged"}.',
    required=True,
)
@_batch_option
@device_option
@click.pass_obj
def score(
    settings: Settings,
    detector_path: Path,
    events_path: Path,
    out_path: Path,
    batch_size: int | None,
    device: Any,
) -> None:
    """Score events with a calibrated detector.

    An event is flagged when its squeeze score is above the detector's threshold. Bad
    lines are reported with their line number and skipped.
    """
    bad = _BadLineReporter(events_path)
    with user_errors(), _file_progress("scoring", events_path.stat().st_size) as tick:
        report = score_file(
            detector_path,
            events_path,
            out_path,
            batch_size=batch_size or settings.scoring.batch_size,
            device=device or settings.scoring.device,
            on_bad_line=bad,
            on_progress=tick,
        )
    bad.summary()
    rate = report.flagged / report.scored if report.scored else 0.0
    console.print(
        f"scored {report.scored} events on {report.provider} "
        f"({report.events_per_second:,.0f} events/s): {report.flagged} flagged ({rate:.1%})"
    )
    console.print(f"scores written to [bold]{out_path}[/]")
