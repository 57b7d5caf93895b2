"""``advmon calibrate`` and ``advmon score``: detector files and scores from event files.

Both read JSON-lines event files through :mod:`monitor.offline`; a bad line is reported
with its line number and skipped, never fatal. Without ``--squeezers``, calibrate chooses
the squeezers by search (:mod:`monitor.evaluate._search`) and prints the evidence. Score
also watches each source for query attacks and lists the sources it flagged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from detectors import SEARCH_BUDGETS, DetectorConfig, SearchBudget, SqueezerSearch
from monitor.cli._console import console, file_option, user_errors
from monitor.offline import BadLine, QueryAttackSummary, ScoreReport, calibrate_file, score_file
from monitor.settings import Settings

__all__ = ["calibrate", "device_option", "score"]

_MAX_BAD_LINES_SHOWN = 20
#: Flagged sources the score summary lists (all of them are marked in the scores file).
_FLAGGED_SOURCES_SHOWN = 20
#: Candidates the search table shows (besides the preset and the paper's configuration).
_CANDIDATES_SHOWN = 10

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
    """Prints the first bad lines of an events file and counts all of them; as a context
    manager, prints the count when the run ends, also when it fails (too few events
    left, usually because of the skipped lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def __call__(self, bad: BadLine) -> None:
        self.count += 1
        if self.count <= _MAX_BAD_LINES_SHOWN:
            # The path and the reason quote what the file holds: never Rich markup.
            console.print(
                f"[yellow]skipped[/] {escape(str(self.path))}:{bad.line_number}: "
                f"{escape(bad.reason)}"
            )
        elif self.count == _MAX_BAD_LINES_SHOWN + 1:
            console.print("[yellow]… more bad lines; the total is printed at the end[/]")

    def __enter__(self) -> _BadLineReporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.count:
            console.print(
                f"[yellow]{self.count} bad line(s) skipped[/] in {escape(str(self.path))}"
            )


@dataclass(frozen=True)
class _FileProgress:
    """Callbacks that move a progress bar over bytes of the events file."""

    progress: Progress
    task: Any

    def advance(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

    def describe(self, stage: str) -> None:
        self.progress.update(self.task, description=stage)


@contextmanager
def _file_progress(label: str, total: int) -> Iterator[_FileProgress]:
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
        yield _FileProgress(progress, progress.add_task(label, total=total))


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
    "quantize:S, quantile:K, round:D), or 'preset' for the preset of the input's shape. "
    "Default: chosen by a search that attacks the model on held-back benign events.",
)
@click.option(
    "--search-budget",
    type=click.Choice(SEARCH_BUDGETS),
    default=None,
    help="Effort of the squeezer search: small (a bounded sample of 2,000 events, fast "
    "attacks from 50 of them) or full (10,000 events, every attack from 500). "
    "[default: small]",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the squeezer search (its sample, split and attacks).",
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
    search_budget: Any,
    seed: int,
    output_kind: Any,
    output_name: str | None,
    input_range: tuple[float, float] | None,
    batch_size: int | None,
    device: Any,
) -> None:
    """Calibrate a feature-squeezing detector on benign events.

    Without --squeezers the squeezers are chosen by search: attacks are crafted against
    the model from part of a bounded sample of the benign events, and the candidate set
    that flags the most of them at the target FPR wins; the detector file records the
    evidence. The threshold is the ceil((1 - FPR) * n)-th smallest squeeze score of all n
    benign events; at least 100 are needed. Bad lines are reported with their line number
    and skipped.
    """
    if squeezer_spec is not None and search_budget is not None:
        raise click.UsageError("--search-budget applies only without --squeezers")
    search: SearchBudget | None = None
    if squeezer_spec is None:
        search = search_budget or "small"
    passes = 3 if search is not None else 2
    total = passes * events_path.stat().st_size
    with (
        _BadLineReporter(events_path) as bad,
        user_errors(),
        _file_progress("calibrating", total) as progress,
    ):
        report = calibrate_file(
            model_path,
            events_path,
            out_path,
            fpr=fpr,
            squeezer_spec=squeezer_spec,
            search=search,
            seed=seed,
            output_kind=output_kind,
            output_name=output_name,
            input_range=input_range,
            batch_size=batch_size or settings.scoring.batch_size,
            device=device or settings.scoring.device,
            on_bad_line=bad,
            on_progress=progress.advance,
            on_stage=progress.describe,
        )
    config = report.config
    found = report.squeezer_search
    if report.preset_used:
        how = f" (preset for {config.input_kind} input)"
    elif found is not None:
        how = f" (chosen by search, {found.budget} budget)"
    else:
        how = ""
    table = Table(show_header=False, box=None)
    table.add_row("model", f"{escape(config.model_path)}  sha256 {config.model_sha256[:12]}…")
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
    table.add_row("query attacks", _query_threshold(config))
    table.add_row("device", config.calibration.provider)
    console.print(table)
    if found is not None:
        _print_search(found, config)
    console.print(f"calibrated in {report.seconds:.1f} s")
    console.print(f"detector written to [bold]{escape(str(out_path))}[/]")


def _query_threshold(config: DetectorConfig) -> str:
    """The query-attack threshold calibrate stored, and what it measured on benign events."""
    queries = config.query_attacks
    if queries is None:
        return "not calibrated: inputs of varying shape cannot be fingerprinted"
    return (
        f"min_linked {queries.min_linked} (benign: {queries.benign_events} events, "
        f"max linked {queries.benign_max_linked})"
    )


def _print_search(found: SqueezerSearch, config: DetectorConfig) -> None:
    """The search's evidence: the split, the attacks and the best candidates."""
    from monitor.evaluate._search import PAPER_MNIST_SPEC, rank_candidates, tie_floor

    split = found.split
    console.print(
        f"squeezer search ({found.budget} budget, seed {found.seed}, {found.seconds:.1f} s): "
        f"{split.sampled_events} of {split.benign_events} benign events sampled, thresholds "
        f"calibrated on {split.threshold_events}, {split.held_back_events} held back, "
        f"attacks from {split.attacked_events}"
    )
    if found.attacks:
        console.print(
            "attacks: "
            + ", ".join(
                f"{a.name} ({a.norm}, {a.access}) {a.successful}/{a.attempted}"
                for a in found.attacks
            )
            + " fooled the model"
        )
    if found.fallback_reason is not None:
        console.print(
            f"[yellow]squeezer search fell back to the preset:[/] {escape(found.fallback_reason)}"
        )
        return
    limit = found.held_back_fpr_limit
    ranked = rank_candidates(found.candidates, 1.0 if limit is None else limit)
    notes: dict[str, list[str]] = {}
    notes.setdefault(found.chosen, []).append("chosen")
    notes.setdefault(found.preset, []).append("preset")
    if config.input_kind == "image":
        notes.setdefault(PAPER_MNIST_SPEC, []).append("paper (MNIST)")
    shown = ranked[:_CANDIDATES_SHOWN] + [c for c in ranked[_CANDIDATES_SHOWN:] if c.spec in notes]
    table = Table(box=None, pad_edge=False)
    table.add_column("squeezers", no_wrap=True)
    table.add_column("detection", justify="right", no_wrap=True)
    table.add_column("held-back FPR", justify="right", no_wrap=True)
    table.add_column("threshold", justify="right", no_wrap=True)
    table.add_column("")
    for candidate in shown:
        note = list(notes.get(candidate.spec, []))
        if limit is not None and candidate.held_back_fpr > limit:
            note.append(f"FPR above {limit:.3f}")
        table.add_row(
            candidate.spec,
            f"{candidate.detection_rate:.3f}",
            f"{candidate.held_back_fpr:.3f}",
            f"{candidate.threshold:.4g}",
            ", ".join(note),
        )
    console.print(table)
    competing = [c for c in found.candidates if limit is None or c.held_back_fpr <= limit]
    competing = competing or list(found.candidates)
    best = max(c.detection_rate for c in competing)
    console.print(
        f"detection rates from {tie_floor(competing):.3f} to {best:.3f} (the best, less one "
        "standard error) tie; the lowest held-back FPR among them wins"
    )
    if len(shown) < len(ranked):
        console.print(
            f"{len(shown)} of {len(ranked)} candidates shown; all are in the detector file"
        )


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
    'Where to write one line per event: {"event_id", "score", "flagged"}, and the query_* '
    "fields for events that name a source.",
    required=True,
)
@click.option(
    "--min-linked",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Flag a source when one of its queries is linked to N of its earlier queries. "
    "[default: the threshold in the detector file]",
)
@click.option(
    "--no-query-attacks",
    is_flag=True,
    default=False,
    help="Do not watch sources for query attacks: score each event alone.",
)
@_batch_option
@device_option
@click.pass_obj
def score(
    settings: Settings,
    detector_path: Path,
    events_path: Path,
    out_path: Path,
    min_linked: int | None,
    no_query_attacks: bool,
    batch_size: int | None,
    device: Any,
) -> None:
    """Score events with a calibrated detector, and watch each source for query attacks.

    An event is flagged when its squeeze score is above the detector's threshold. Events
    that name a source are also replayed, in file order, through that source's query
    history (as the worker keeps it): a source is flagged for a query attack when one of
    its queries is linked to at least min_linked of its earlier ones (retries, repeats
    and low-information queries never count). Bad lines are reported with their line
    number and skipped.
    """
    if no_query_attacks and min_linked is not None:
        raise click.UsageError("--min-linked applies only without --no-query-attacks")
    with (
        _BadLineReporter(events_path) as bad,
        user_errors(),
        _file_progress("scoring", events_path.stat().st_size) as progress,
    ):
        report = score_file(
            detector_path,
            events_path,
            out_path,
            batch_size=batch_size or settings.scoring.batch_size,
            device=device or settings.scoring.device,
            query_attacks=not no_query_attacks,
            min_linked=min_linked,
            on_bad_line=bad,
            on_progress=progress.advance,
        )
    rate = report.flagged / report.scored if report.scored else 0.0
    console.print(
        f"scored {report.scored} events on {report.provider} "
        f"({report.events_per_second:,.0f} events/s): {report.flagged} flagged ({rate:.1%})"
    )
    _print_query_attacks(report)
    console.print(f"scores written to [bold]{escape(str(out_path))}[/]")


def _print_query_attacks(report: ScoreReport) -> None:
    """How many sources were watched, and each flagged one: where and when it crossed."""
    if report.query_attacks_unavailable is not None:
        console.print(f"[yellow]{escape(report.query_attacks_unavailable)}[/]")
    summary = report.query_attacks
    if summary is None:
        return
    origin = "--min-linked" if summary.min_linked_overridden else "detector file"
    console.print(
        f"query attacks: {summary.sources} source(s) watched ({summary.queries} queries), "
        f"min_linked {summary.min_linked} ({origin}): {len(summary.flags)} flagged"
    )
    if summary.flags:
        console.print(_flagged_table(summary))
    hidden = len(summary.flags) - _FLAGGED_SOURCES_SHOWN
    if hidden > 0:
        console.print(
            f"… and {hidden} more flagged source(s); their queries have query_attack true "
            "in the scores file"
        )


def _flagged_table(summary: QueryAttackSummary) -> Table:
    """The flagged sources, the first :data:`_FLAGGED_SOURCES_SHOWN` of them."""
    several_models = len({flag.model_id for flag in summary.flags}) > 1
    table = Table(box=None, pad_edge=False)
    table.add_column("source")
    if several_models:
        table.add_column("model")
    table.add_column("first flagged event")
    table.add_column("queries until flagged", justify="right")
    table.add_column("linked", justify="right")
    for flag in summary.flags[:_FLAGGED_SOURCES_SHOWN]:
        # Sources, models and event ids are the events' text: never Rich markup.
        row = [escape(flag.source)]
        if several_models:
            row.append(escape(flag.model_id))
        row += [escape(flag.event_id), str(flag.queries), str(flag.linked)]
        table.add_row(*row)
    return table
