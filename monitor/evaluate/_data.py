"""The clean events of an evaluation: inputs decoded as the worker decodes them, plus the
true class each line carries.

Inputs go through :func:`monitor.offline.read_event_batches`, so a line is refused for
the same reason, in the same words, as ``advmon score`` and the worker would refuse it.
The true class is read from the same line (``label`` unless told otherwise); a line whose
class is missing, not an integer, or not one of the model's classes is a bad line too.
Bad lines are reported in file order and skipped; they never stop an evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from detectors import InputKind, file_sha256
from monitor.offline import BadLine, read_event_batches

__all__ = ["LabelledEvents", "default_input_range", "read_labelled_events"]

_BATCH = 1024
_IMAGE_RANGES = ((0.0, 1.0), (0.0, 255.0), (-1.0, 1.0))


@dataclass(frozen=True)
class LabelledEvents:
    """The valid events of an events file: inputs ``[N, *shape]`` and true classes ``[N]``."""

    path: Path
    sha256: str
    inputs: np.ndarray
    labels: np.ndarray
    bad_lines: list[BadLine]
    label_field: str

    @property
    def observed_range(self) -> tuple[float, float]:
        """The smallest and largest input value of the events."""
        return float(self.inputs.min()), float(self.inputs.max())


def _label_reason(line: bytes, label_field: str, num_classes: int) -> tuple[int | None, str]:
    """The line's true class, or ``None`` and why it has none."""
    try:
        value = orjson.loads(line).get(label_field)
    except (orjson.JSONDecodeError, AttributeError):
        return None, "the line is not a JSON object"
    if value is None:
        return None, f"the event has no {label_field!r} field with its true class"
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"the event's {label_field!r} must be an integer class, got {value!r}"
    if not 0 <= value < num_classes:
        return None, (
            f"the event's {label_field!r} is {value}, not a class of the model "
            f"(0 to {num_classes - 1})"
        )
    return value, ""


def read_labelled_events(
    path: str | os.PathLike[str],
    input_shape: Sequence[int | None],
    num_classes: int,
    *,
    label_field: str = "label",
    on_bad_line: Callable[[BadLine], None] | None = None,
    value_range: tuple[float, float] | None = None,
) -> LabelledEvents:
    """Read every valid, labelled event of a JSON-lines events file.

    ``input_shape`` excludes the batch axis; with ``value_range``, image inputs outside it
    are bad lines (as for a calibrated detector). Each bad line is passed to
    ``on_bad_line`` in file order and kept in :attr:`LabelledEvents.bad_lines`.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     events = Path(folder) / "events.jsonl"
    ...     _ = events.write_text(
    ...         '{"event_id": "a", "model_id": "m", "input": [0.5, 1.0], "label": 1}\\n'
    ...         '{"event_id": "b", "model_id": "m", "input": [0.5, 1.0], "label": 7}\\n'
    ...     )
    ...     read = read_labelled_events(events, [2], num_classes=2)
    >>> read.labels.tolist(), [(b.line_number, b.reason) for b in read.bad_lines]
    ([1], [(2, "the event's 'label' is 7, not a class of the model (0 to 1)")])
    """
    source = Path(path)
    if not label_field:
        raise ValueError("label_field must name the events' true-class field")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    refused: list[BadLine] = []
    inputs: list[np.ndarray] = []
    for batch in read_event_batches(source, input_shape, _BATCH, refused.append, value_range):
        inputs.append(batch.inputs)
    refused_lines = {bad.line_number for bad in refused}

    # The events come out of read_event_batches in file order, one per line that is
    # neither blank nor refused; the same walk over the lines pairs each with its label.
    labels: list[int] = []
    keep: list[bool] = []
    bad_lines = list(refused)
    with open(source, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip() or number in refused_lines:
                continue
            label, reason = _label_reason(line, label_field, num_classes)
            keep.append(label is not None)
            if label is None:
                bad_lines.append(BadLine(number, reason))
            else:
                labels.append(label)
    bad_lines.sort(key=lambda bad: bad.line_number)
    if on_bad_line is not None:
        for bad in bad_lines:
            on_bad_line(bad)

    stacked = _stack(inputs, input_shape)
    if len(keep) != len(stacked):
        raise RuntimeError(f"{source} changed while it was read; evaluate a file not being written")
    return LabelledEvents(
        path=source,
        sha256=file_sha256(source),
        inputs=stacked[np.asarray(keep, dtype=bool)],
        labels=np.asarray(labels, dtype=np.int64),
        bad_lines=bad_lines,
        label_field=label_field,
    )


def _stack(batches: list[np.ndarray], input_shape: Sequence[int | None]) -> np.ndarray:
    if not batches:
        return np.zeros((0, *(d or 0 for d in input_shape)), dtype=np.float32)
    shapes = {b.shape[1:] for b in batches}
    if len(shapes) > 1:
        sizes = ", ".join(str(list(s)) for s in sorted(shapes))
        raise ValueError(
            f"the events' inputs have different shapes ({sizes}); an evaluation needs "
            "inputs of one shape"
        )
    return np.concatenate(batches).astype(np.float32, copy=False)


def default_input_range(kind: InputKind, observed: tuple[float, float]) -> tuple[float, float]:
    """The input range assumed without a detector: the usual image range that holds the
    observed values, or the observed range of tabular inputs.

    Examples
    --------
    >>> default_input_range("image", (0.0, 0.93))
    (0.0, 1.0)
    >>> default_input_range("tabular", (-2.5, 4.0))
    (-2.5, 4.0)
    """
    low, high = observed
    if kind == "image":
        for candidate in _IMAGE_RANGES:
            if candidate[0] <= low and high <= candidate[1]:
                return candidate
        raise ValueError(
            f"the events' image values span [{low:g}, {high:g}], which is not one of the "
            "usual ranges [0, 1], [0, 255] or [-1, 1]; give a detector calibrated with the "
            "model's input range"
        )
    if not high > low:
        raise ValueError(
            f"every input value of the events is {low:g}; an evaluation needs inputs that vary"
        )
    return low, high
