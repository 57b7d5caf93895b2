"""Reading labelled clean events for ``advmon evaluate``: bad lines are reported, never fatal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import orjson
import pytest

from monitor.evaluate._data import default_input_range, read_labelled_events
from monitor.offline import BadLine


def _line(number: int, value: object, **fields: object) -> bytes:
    event = {"event_id": f"e{number}", "model_id": "m", "input": value, **fields}
    return orjson.dumps(event) + b"\n"


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b"".join(
            [
                _line(1, [0.1, 0.2, 0.3], label=0),  # 1: valid
                _line(2, [0.1, 0.2, 0.3]),  # 2: no label
                b"\n",  # 3: blank, ignored
                _line(4, [0.4, 0.5, 0.6], label=2),  # 4: valid
                _line(5, [0.1, 0.2, 0.3], label=3),  # 5: not a class
                _line(6, [0.1, 0.2, 0.3], label="1"),  # 6: not an integer
                b"not json\n",  # 7: refused by the decoder
                _line(8, [0.1, 0.2], label=1),  # 8: wrong shape, refused by the decoder
                _line(9, [0.7, 0.8, 0.9], label=True),  # 9: a boolean is no class
                _line(10, [0.7, 0.8, 0.9], label=-1),  # 10: not a class
                _line(11, [0.7, 0.8, 0.9], label=1),  # 11: valid
                _line(12, [0.0, 0.0, 0.0], klass=2),  # 12: the label in another field
            ]
        )
    )
    return path


def test_bad_lines_are_reported_in_order_and_skipped(events: Path) -> None:
    seen: list[BadLine] = []
    read = read_labelled_events(events, [3], num_classes=3, on_bad_line=seen.append)

    assert read.labels.tolist() == [0, 2, 1]
    np.testing.assert_array_equal(
        read.inputs, np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]], np.float32)
    )
    assert [bad.line_number for bad in seen] == [2, 5, 6, 7, 8, 9, 10, 12]
    assert seen == read.bad_lines
    reasons = {bad.line_number: bad.reason for bad in seen}
    assert reasons[2] == "the event has no 'label' field with its true class"
    assert reasons[5] == "the event's 'label' is 3, not a class of the model (0 to 2)"
    assert reasons[6] == "the event's 'label' must be an integer class, got '1'"
    assert reasons[9] == "the event's 'label' must be an integer class, got True"
    assert "shape" in reasons[8]
    assert read.sha256 == hashlib.sha256(events.read_bytes()).hexdigest()


def test_label_field_names_the_true_class(events: Path) -> None:
    read = read_labelled_events(events, [3], num_classes=3, label_field="klass")

    assert read.labels.tolist() == [2]
    assert read.label_field == "klass"
    np.testing.assert_array_equal(read.inputs, np.zeros((1, 3), np.float32))


def test_image_values_outside_the_range_are_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(_line(1, [[0.5, 2.0]], label=0) + _line(2, [[0.5, 1.0]], label=1))
    seen: list[BadLine] = []
    read = read_labelled_events(
        path, [1, 2], num_classes=2, on_bad_line=seen.append, value_range=(0.0, 1.0)
    )

    assert read.labels.tolist() == [1]
    assert [bad.line_number for bad in seen] == [1]


def test_no_valid_event_gives_empty_arrays(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(_line(1, [0.1, 0.2], label=9))
    read = read_labelled_events(path, [2], num_classes=2)

    assert read.inputs.shape == (0, 2)
    assert read.labels.shape == (0,)
    assert len(read.bad_lines) == 1


def test_arguments_are_checked(events: Path) -> None:
    with pytest.raises(ValueError, match="label_field"):
        read_labelled_events(events, [3], num_classes=3, label_field="")
    with pytest.raises(ValueError, match="num_classes"):
        read_labelled_events(events, [3], num_classes=1)


def test_default_input_range() -> None:
    assert default_input_range("image", (0.0, 1.0)) == (0.0, 1.0)
    assert default_input_range("image", (3.0, 200.0)) == (0.0, 255.0)
    assert default_input_range("image", (-0.5, 0.5)) == (-1.0, 1.0)
    assert default_input_range("tabular", (-3.0, 70.0)) == (-3.0, 70.0)
    with pytest.raises(ValueError, match="not one of the usual ranges"):
        default_input_range("image", (0.0, 300.0))
    with pytest.raises(ValueError, match="vary"):
        default_input_range("tabular", (1.0, 1.0))
