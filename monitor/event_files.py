"""Read JSON-lines files of inference events into scoring batches.

A line that is not a valid event, or whose input does not fit the model, is reported
with its line number through a callback and skipped: one bad line never stops a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors import InvalidInputError, input_from_bytes, input_from_nested_list, validate_input
from schemas import InferenceEvent, InvalidEventError, TensorPayload, decode_event

__all__ = ["BadLine", "EventBatch", "event_input", "read_event_batches"]


@dataclass(frozen=True)
class BadLine:
    """A line of an events file that was skipped, and why."""

    line_number: int
    reason: str


@dataclass(frozen=True)
class EventBatch:
    """Consecutive valid events and their inputs stacked as ``[N, *input_shape]``."""

    events: list[InferenceEvent]
    inputs: np.ndarray
    bytes_read: int
    """Bytes of the file consumed up to the end of this batch (for progress)."""


def event_input(
    event: InferenceEvent,
    shape: Sequence[int | None],
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """The event's input as a float32 array checked against the model's input shape."""
    value = event.input
    if isinstance(value, TensorPayload):
        array = input_from_bytes(value.to_bytes(), value.dtype.value, value.shape)
    else:
        array = input_from_nested_list(value)
    return validate_input(array, shape, value_range)


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
                event = decode_event(line)
                array = event_input(event, input_shape, value_range)
            except (InvalidEventError, InvalidInputError) as exc:
                on_bad_line(BadLine(number, str(exc)))
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
