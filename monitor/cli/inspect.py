"""``advmon inspect``: how the messages on a topic decode, before running the worker.

The decoding, reading and reporting are :mod:`monitor.inspect`'s; this is the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from monitor.cli._console import console, file_option, print_table, user_errors
from monitor.settings import Settings

__all__ = ["inspect_topic"]


@click.command("inspect")
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
@file_option(
    "--config",
    "config_path",
    "Worker config: the model's format, mapping and OIP v2 options come from it, and "
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
@file_option(
    "--export",
    "export_path",
    "Write the events the worker would accept to this file as native JSON lines (the "
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
    from monitor.kafka.metadata import check_broker

    with user_errors():
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
        for table in inspection.report_tables(reports, decoding) if reports else []:
            print_table(table)
    summary = inspection.summary_line(topic, read, reports, latest=not from_beginning, count=count)
    console.print(summary, markup=False)
