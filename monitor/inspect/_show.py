"""Showing reports: rich tables, the summary line, and the export of accepted events."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from monitor.inspect._options import Decoding
from monitor.inspect._reports import EventSummary, MessageReport, OipHalfSummary, key_text
from monitor.inspect._topic import TopicRead

__all__ = ["export_events", "report_tables", "summary_line"]


def report_tables(reports: Sequence[MessageReport], decoding: Decoding) -> list[Table]:
    """Rich tables of the reports: one row per record, one per event, and for OIP v2 the
    halves without a partner. Text from the records is never read as markup.

    A record is named ``partition/offset`` in the event and halves tables.
    """
    oip = decoding.format == "oip-v2"
    messages = _table("messages")
    messages.add_column("partition", justify="right", no_wrap=True)
    messages.add_column("offset", justify="right", no_wrap=True)
    messages.add_column("key", overflow="fold", max_width=24)
    messages.add_column("decoded", overflow="fold", ratio=1)
    for report in reports:
        messages.add_row(
            str(report.partition), str(report.offset), _key_cell(report.key), _outcome(report)
        )
    tables = [messages]
    events = _table("events of the requests read, joined with their responses" if oip else "events")
    events.add_column("message", no_wrap=True)
    events.add_column("event", overflow="fold")
    events.add_column("data", overflow="fold")
    if oip:
        events.add_column("response", overflow="fold")
    events.add_column("input check", overflow="fold")
    for report in reports:
        for event in report.events:
            cells = [Text(_at(report.coordinates)), _event_cell(event), _data_cell(event)]
            if oip and report.oip is not None:
                cells.append(Text(_at(report.oip.partner) if report.oip.partner else "none read"))
            events.add_row(*cells, _input_check(event))
    if events.row_count:
        tables.append(events)
    alone = [(r, r.oip) for r in reports if r.oip is not None and r.oip.partner is None]
    if alone:
        halves = _table("halves without a partner among the messages read")
        halves.add_column("message", no_wrap=True)
        halves.add_column("kind", no_wrap=True)
        halves.add_column("CloudEvent id", overflow="fold")
        halves.add_column("what the worker does", min_width=24)
        for report, half in alone:
            halves.add_row(_at(report.coordinates), half.kind, Text(half.id), _alone_fate(half))
        tables.append(halves)
    return tables


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left")


def export_events(reports: Sequence[MessageReport], path: Path) -> int:
    """Write the events the worker would accept as native JSON lines; return how many.

    The file is what ``advmon calibrate --events`` reads, so benign traffic logged in any
    format can calibrate a detector.
    """
    written = 0
    with path.open("wb") as out:
        for report in reports:
            for summary in report.events:
                if summary.event is not None and summary.input_problem is None:
                    out.write(summary.event.model_dump_json(exclude_none=True).encode() + b"\n")
                    written += 1
    return written


def summary_line(
    topic: str, read: TopicRead, reports: Sequence[MessageReport], *, latest: bool, count: int
) -> str:
    """One line saying what was read and how much of it decoded."""
    if not read.records:
        return f"topic {topic!r} holds no messages ({_partitions(read.partitions)})"
    which = "last" if latest else "first"
    failed = sum(1 for r in reports if r.error is not None)
    events = sum(len(r.events) for r in reports)
    refused = sum(1 for r in reports for e in r.events if e.input_problem is not None)
    line = (
        f"{len(read.records)} message(s) read from topic {topic!r} (the {which} {count} "
        f"asked for, from {_partitions(read.partitions)}): {len(reports) - failed} decoded, "
        f"{failed} not; "
        f"{events} event(s), {refused} with an input the worker would refuse"
    )
    if any(r.oip is not None for r in reports):
        joined = sum(1 for r in reports if r.oip and r.oip.kind == "request" and r.oip.partner)
        alone = sum(1 for r in reports if r.oip and r.oip.partner is None)
        line += f"; {joined} request(s) joined with their response, {alone} half(s) alone"
        if alone:
            line += " (the other half may be among messages not read: raise --count)"
    if not read.complete:
        line += "; the timeout passed before every message asked for arrived"
    return line


def _outcome(report: MessageReport) -> Text:
    text = Text()
    if report.oip is not None:
        half = report.oip
        text.append(f"{half.kind} ", style="bold")
        text.append(half.id)
        text.append(f" ({'; '.join(map(str, half.tensors))})")
        if half.duplicate_of is not None:
            text.append(f", duplicate of {_at(half.duplicate_of)}", style="yellow")
        elif half.partner is not None:
            text.append(f", joined with {_at(half.partner)}", style="green")
        if report.error is None and half.kind == "request":
            text.append(f": {len(report.events)} event(s)")
    elif report.error is None:
        text.append(f"{len(report.events)} event(s)", style="green")
    if report.error is not None:
        if text:
            text.append(": ")
        text.append(report.error.reason, style="bold red")
        text.append(f": {report.error.message}")
    return text


def _labelled(lines: Sequence[tuple[str, str | None]]) -> Text:
    text = Text()
    for index, (label, value) in enumerate(lines):
        if index:
            text.append("\n")
        if label:
            text.append(f"{label} ", style="dim")
        text.append(value if value is not None else "—")
    return text


def _event_cell(event: EventSummary) -> Text:
    return _labelled(
        [
            ("", event.event_id),
            ("request_id", event.request_id),
            ("source", event.source),
            ("ts", event.ts.isoformat() if event.ts else None),
        ]
    )


def _data_cell(event: EventSummary) -> Text:
    output = f"{event.output_length} values" if event.output_length is not None else None
    return _labelled([("input", str(event.input)), ("output", output)])


def _input_check(event: EventSummary) -> Text:
    if event.input_problem is not None:
        text = Text(event.input_problem.reason, style="bold red")
        text.append(f": {event.input_problem.message}")
        return text
    if event.checked:
        return Text("fits the detector", style="green")
    return Text("decodes (no detector)")


def _partitions(partitions: Sequence[int]) -> str:
    listed = ", ".join(map(str, partitions))
    return f"partition {listed}" if len(partitions) == 1 else f"partitions {listed}"


def _alone_fate(half: OipHalfSummary) -> str:
    if half.duplicate_of is not None:
        return f"ignores it: a duplicate of {_at(half.duplicate_of)}"
    if half.kind == "request":
        return "scores it without output after join_timeout_seconds unless the response comes"
    return "drops it after join_timeout_seconds unless the request comes"


def _at(coordinates: tuple[int, int] | None) -> str:
    return "—" if coordinates is None else f"{coordinates[0]}/{coordinates[1]}"


def _key_cell(key: bytes | None) -> Text:
    if key is None:
        return Text("—")
    text = key_text(key)
    return Text(text if text is not None else f"base64:{base64.b64encode(key).decode()}")
