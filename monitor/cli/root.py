"""The ``advmon`` command line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.exc import OperationalError

from detectors import DetectorError
from detectors.runtime import check_device
from monitor.event_files import BadLine
from monitor.offline import calibrate_file, score_file
from monitor.settings import Settings, UnknownSettingError
from schemas import SchemaError

__all__ = ["main"]

_MAX_BAD_LINES_SHOWN = 20

# soft_wrap: long paths and commands stay on one line in logs and pipes.
console = Console(stderr=True, highlight=False, soft_wrap=True)


def _settings() -> Settings:
    try:
        return Settings.from_environment()
    except UnknownSettingError as exc:
        raise click.ClickException(
            f"unknown setting {exc}: check the spelling (nested settings use a double "
            "underscore, e.g. ADVMON_KAFKA__BOOTSTRAP)"
        ) from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = "ADVMON_" + "__".join(str(part) for part in error["loc"]).upper()
            if error["type"] == "extra_forbidden":
                problems.append(f"{variable} is not a known setting")
            else:
                problems.append(f"{variable}={error['input']!r}: {error['msg']}")
        raise click.ClickException("invalid setting " + "; ".join(problems)) from None


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


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn errors a user can cause into one clear message instead of a traceback."""
    try:
        yield
    except (DetectorError, SchemaError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}") from None


_device_option = click.option(
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="advmon", prog_name="advmon")
@click.pass_context
def main(ctx: click.Context) -> None:
    """advmon: catch adversarial inputs and drift in ML inference traffic."""
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = settings


@main.command()
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
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the detector file (JSON).",
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
@_device_option
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
    with _user_errors(), _file_progress("calibrating", 2 * events_path.stat().st_size) as tick:
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


@main.command()
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
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help='Where to write one line per event: {"event_id", "score", "flagged"}.',
)
@_batch_option
@_device_option
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
    with _user_errors(), _file_progress("scoring", events_path.stat().st_size) as tick:
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


@main.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        # Leave -h to Faust's worker (--web-host).
        "help_option_names": ["--help"],
    },
    epilog="Any other option goes to Faust's worker command, e.g. -l info, --web-port 6066, "
    "--web-host 0.0.0.0 (see `faust worker --help`).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Worker config (YAML): the monitored models, their topics and policy. "
    "[default: ADVMON_CONFIG]",
)
@click.pass_context
def worker(ctx: click.Context, config_path: Path | None) -> None:
    """Run the stream processor: score inference topics, publish decisions.

    Kafka is reached through ADVMON_KAFKA__BOOTSTRAP (and the other ADVMON_KAFKA__
    settings); scale out by starting more workers with the same ADVMON_WORKER__APP_ID.
    """
    from monitor.config import ConfigError, load_config
    from monitor.incidents.storage.engine import DatabaseUrlError, incident_store
    from monitor.incidents.storage.schema import SchemaBehindError, ensure_current
    from monitor.worker.agents import register
    from monitor.worker.app import BrokerUnreachableError, check_broker, create_app
    from monitor.worker.stages.drift import drift_plans
    from monitor.worker.stages.scoring import load_model_detectors

    settings: Settings = ctx.obj
    path = config_path or settings.config
    if path is None:
        raise click.UsageError("give the worker config with --config or ADVMON_CONFIG")
    try:
        config = load_config(path)
        models = load_model_detectors(config)
        drift_plans(models)  # a drift signal that does not fit its model stops here
        check_device(settings.scoring.device)
        store = None
        if settings.database.url is not None:
            store = incident_store(settings.database, settings.incidents)
            ensure_current(store.engine)
    except (ConfigError, DetectorError, DatabaseUrlError, SchemaBehindError) as exc:
        raise click.ClickException(str(exc)) from None
    except OperationalError as exc:
        # Decisions do not need the database: start, and let incidents wait in Kafka.
        logging.getLogger("monitor").warning(
            "incident database unreachable at start (%s); detections wait in Kafka until "
            "it is back",
            exc.orig or exc,
        )
    try:
        check_broker(settings.kafka)
    except BrokerUnreachableError as exc:
        raise click.ClickException(str(exc)) from None
    wiring = create_app(settings, config, models, store)
    register(wiring)
    # Hand the remaining options to Faust's own worker command.
    sys.argv = [str(ctx.find_root().info_name), "worker", *ctx.args]
    wiring.app.main()


@main.command("inspect")
@click.option(
    "--topic",
    required=True,
    metavar="NAME",
    help="The topic to read (as a plain consumer: no group).",
)
@click.option(
    "--format",
    "event_format",
    type=click.Choice(["native", "oip-v2", "sagemaker", "mapped"]),
    default=None,
    help="How the messages are written. [default: the model's format in --config]",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Worker config: the model's format, mapping and OIP v2 options come from it, and "
    "inputs are checked against its detector.",
)
@click.option(
    "--model",
    "model_id",
    default=None,
    metavar="ID",
    help="With --config, the model to use (default: the one listing --topic); without, the "
    "model id given to the events (default: inspected).",
)
@click.option(
    "--mapping",
    default=None,
    metavar="JSON|PATH",
    help="For format mapped: the field mapping, as a JSON object or a YAML/JSON file; "
    "replaces the config's.",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    default=5,
    show_default=True,
    help="How many messages to read.",
)
@click.option(
    "--from-beginning/--from-end",
    default=False,
    help="Read the first COUNT messages instead of the last COUNT (the default).",
)
@click.option(
    "--partition", type=click.IntRange(min=0), default=None, help="Read only this partition."
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker and the messages.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per message.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the events the worker would accept to this file as native JSON lines (the "
    "input of advmon calibrate --events) instead of printing each message.",
)
@click.pass_obj
def inspect_topic(
    settings: Settings,
    topic: str,
    event_format: Any,
    config_path: Path | None,
    model_id: str | None,
    mapping: str | None,
    count: int,
    from_beginning: bool,
    partition: int | None,
    timeout: float,
    as_json: bool,
    export_path: Path | None,
) -> None:
    """Show how the messages on a topic decode, before running the worker.

    Each message is decoded as the worker would, with the Kafka settings of the worker
    (ADVMON_KAFKA__*): its events, or the reason it would go to the dead-letter topic.
    OIP v2 requests and responses among the messages read are joined.
    """
    from monitor import inspect as inspection
    from monitor.worker.app import BrokerUnreachableError, check_broker

    try:
        decoding, notes = inspection.resolve_decoding(
            topic, event_format, config_path=config_path, model_id=model_id, mapping=mapping
        )
        for note in notes:
            console.print(f"[yellow]note[/] {escape(note)}")
        check_broker(settings.kafka, timeout_s=timeout)
        read = inspection.read_records(
            settings.kafka,
            topic,
            count,
            latest=not from_beginning,
            partition=partition,
            timeout_s=timeout,
        )
    except inspection.InspectUsageError as exc:
        raise click.UsageError(str(exc)) from None
    except (inspection.InspectError, BrokerUnreachableError) as exc:
        raise click.ClickException(str(exc)) from None
    reports = inspection.inspect_records(read.records, decoding)
    if export_path is not None:
        try:
            written = inspection.export_events(reports, export_path)
        except OSError as exc:
            raise click.ClickException(f"cannot write {export_path}: {exc}") from None
        console.print(f"wrote {written} event(s) to {export_path}", markup=False)
    elif as_json:
        for report in reports:
            click.echo(json.dumps(report.to_json(topic)))
    else:
        out = Console(highlight=False)
        out = out if out.is_terminal else Console(width=250, highlight=False)
        for table in inspection.report_tables(reports, decoding) if reports else []:
            out.print(table)
    summary = inspection.summary_line(topic, read, reports, latest=not from_beginning, count=count)
    console.print(summary, markup=False)


@main.command()
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for the demo model, events, detector and scores.",
)
@click.option("--offline", is_flag=True, help="Stop after the offline calibrate and score.")
@_device_option
@click.pass_obj
def demo(settings: Settings, out_dir: Path, device: Any, offline: bool) -> None:
    """Run the embedded demo end to end: train a digit classifier, calibrate, score attacks
    offline, then stream live traffic through a local broker and an advmon worker."""
    from monitor.demo.run import run_demo
    from monitor.demo.streaming import DemoError, run_streaming_demo
    from monitor.kafka.local_broker import BrokerError

    with _user_errors():
        artifacts = run_demo(out_dir, device=device or settings.scoring.device, console=console)
        if offline:
            return
        try:
            run_streaming_demo(out_dir, artifacts, console)
        except (DemoError, BrokerError) as exc:
            raise click.ClickException(str(exc)) from None


from monitor.cli.incidents import api, db, incidents  # noqa: E402

main.add_command(incidents)
main.add_command(db)
main.add_command(api)
