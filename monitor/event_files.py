"""Read JSON-lines files of inference events into scoring batches.

Each line is decoded and its input checked through :mod:`monitor.decoding`, as the
worker decodes and checks a native record. A line that is not a valid event, or whose
input does not fit the model, is reported with its line number and the worker's words
through a callback and skipped: one bad line never stops a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.decoding import RecordFormat, event_input, record_events
from monitor.errors import InvalidRecordError
from schemas import InferenceEvent

__all__ = ["BadLine", "EventBatch", "read_event_batches"]

_NATIVE = RecordFormat()
"""Event files hold native events, one a line."""


@dataclass(frozen=True)
class BadLine:
    """A line of an events file that was skipped, and why."""

    line_number: int
    reason: str
    """What was wrong, in the words of the worker's dead letter (its ``error``)."""


@dataclass(frozen=True)
class EventBatch:
    """Consecutive valid events and their inputs stacked as ``[N, *input_shape]``."""

    events: list[InferenceEvent]
    inputs: np.ndarray
    bytes_read: int
    """Bytes of the file consumed up to the end of this batch (for progress)."""


def read_event_batches(
    path: str | Path,
    input_shape: Sequence[int | None],
    batch_size: int,
    on_bad_line: Callable[[BadLine], None],
    value_range: tuple[float, float] | None = None,
) -> Iterator[EventBatch]:
    """Yield batches of up to ``batch_size`` valid events from a JSON-lines file.

    Blank lines are ignored; every other line that fails to decode or validate is passed
    to ``on_bad_line`` and skipped. With ``value_range``, inputs outside it are bad lines
    too. Inputs of different shapes (for models with symbolic axes) never share a batch.
    """
    events: list[InferenceEvent] = []
    inputs: list[np.ndarray] = []
    consumed = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            consumed += len(line)
            if not line.strip():
                continue
            try:
                (event,) = record_events(line, _NATIVE)
                array = event_input(event, input_shape, value_range)
            except InvalidRecordError as error:
                on_bad_line(BadLine(number, str(error)))
                continue
            if inputs and array.shape != inputs[0].shape:
                # Models with symbolic axes accept several sizes, but not in one batch.
                yield EventBatch(events, np.stack(inputs), consumed - len(line))
                events, inputs = [], []
            events.append(event)
            inputs.append(array)
            if len(events) == batch_size:
                yield EventBatch(events, np.stack(inputs), consumed)
                events, inputs = [], []
    if events:
        yield EventBatch(events, np.stack(inputs), consumed)
