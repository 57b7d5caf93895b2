"""Reading JSON-lines event files into scoring batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from monitor.demo.run import demo_event
from monitor.offline import BadLine, EventBatch, read_event_batches
from tests.monitor.cli_support import write_events

_SHAPE = (1, 8, 8)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(_SHAPE, dtype=np.float32)


def _events(n: int, prefix: str = "e") -> list[bytes]:
    return [
        demo_event(f"{prefix}-{i}", _image(i), as_tensor=i % 2 == 1, source="t") for i in range(n)
    ]


def _read(
    path: Path, batch_size: int, shape: tuple[int | None, ...] = _SHAPE
) -> tuple[list[EventBatch], list[BadLine]]:
    bad: list[BadLine] = []
    batches = list(read_event_batches(path, shape, batch_size, bad.append))
    return batches, bad


@pytest.mark.parametrize(
    ("n_events", "batch_size", "sizes"),
    [
        (10, 4, [4, 4, 2]),
        (8, 4, [4, 4]),
        (3, 1, [1, 1, 1]),
        (10, 256, [10]),
        (0, 4, []),
    ],
)
def test_batches_hold_up_to_batch_size_events(
    tmp_path: Path, n_events: int, batch_size: int, sizes: list[int]
) -> None:
    path = write_events(tmp_path / "events.jsonl", _events(n_events))
    batches, bad = _read(path, batch_size)
    assert [len(batch.events) for batch in batches] == sizes
    assert [batch.inputs.shape for batch in batches] == [(size, *_SHAPE) for size in sizes]
    assert all(batch.inputs.dtype == np.float32 for batch in batches)
    assert [e.event_id for batch in batches for e in batch.events] == [
        f"e-{i}" for i in range(n_events)
    ]
    assert bad == []


def test_inputs_follow_their_events(tmp_path: Path) -> None:
    path = write_events(tmp_path / "events.jsonl", _events(7))
    batches, _ = _read(path, 3)
    stacked = np.concatenate([batch.inputs for batch in batches])
    np.testing.assert_array_equal(stacked, np.stack([_image(i) for i in range(7)]))


def test_bad_lines_are_reported_with_their_number_and_skipped(tmp_path: Path) -> None:
    good = _events(5)
    lines = [
        good[0],
        b"not json",
        good[1],
        b"",
        orjson.dumps({"event_id": "x", "input": [0.0]}),
        good[2],
        good[3],
        orjson.dumps({"event_id": "y", "model_id": "digits", "input": [[0.0]]}),
        good[4],
    ]
    path = write_events(tmp_path / "events.jsonl", lines)
    batches, bad = _read(path, 2)
    assert [len(batch.events) for batch in batches] == [2, 2, 1]
    assert [b.line_number for b in bad] == [2, 5, 8]
    assert "JSON" in bad[0].reason
    assert "model_id" in bad[1].reason
    assert "shape" in bad[2].reason


def test_blank_lines_are_ignored_silently(tmp_path: Path) -> None:
    good = _events(3)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n" + good[0] + b"\n   \n\t\n" + good[1] + b"\r\n\r\n" + good[2] + b"\n\n")
    batches, bad = _read(path, 10)
    assert bad == []
    assert [e.event_id for batch in batches for e in batch.events] == ["e-0", "e-1", "e-2"]


def test_bytes_read_grows_to_the_file_size(tmp_path: Path) -> None:
    lines = [*_events(11), b"", b"not json", b"  "]
    lines.insert(4, b"{}")
    path = write_events(tmp_path / "events.jsonl", lines)
    batches, bad = _read(path, 3)
    progress = [batch.bytes_read for batch in batches]
    assert len(bad) == 2
    assert progress == sorted(set(progress)), "bytes_read must grow strictly"
    assert progress[0] > 0
    assert progress[-1] == path.stat().st_size


def test_bytes_read_ends_at_the_file_size_without_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(_events(5)))
    batches, _ = _read(path, 2)
    assert [len(batch.events) for batch in batches] == [2, 2, 1]
    assert batches[-1].bytes_read == path.stat().st_size


def test_bytes_read_is_where_each_batch_ends(tmp_path: Path) -> None:
    lines = _events(4)
    path = write_events(tmp_path / "events.jsonl", lines)
    batches, _ = _read(path, 2)
    sizes = [len(line) + 1 for line in lines]
    assert [batch.bytes_read for batch in batches] == [sum(sizes[:2]), sum(sizes)]


def test_file_with_both_encodings_batches_identical_arrays(tmp_path: Path) -> None:
    image = _image(7)
    lines = [
        demo_event("list", image, as_tensor=False, source="t"),
        demo_event("tensor", image, as_tensor=True, source="t"),
    ]
    batches, bad = _read(write_events(tmp_path / "events.jsonl", lines), 2)
    assert bad == []
    (batch,) = batches
    np.testing.assert_array_equal(batch.inputs[0], batch.inputs[1])


def _sized_events(widths: list[int]) -> list[bytes]:
    return [
        orjson.dumps({"event_id": f"e-{i}", "model_id": "m", "input": [[float(i)] * width]})
        for i, width in enumerate(widths)
    ]


def test_symbolic_dimensions_accept_any_size(tmp_path: Path) -> None:
    path = write_events(tmp_path / "events.jsonl", _sized_events([3, 2, 3]))
    batches, bad = _read(path, 1, shape=(1, None))
    assert [batch.inputs.shape for batch in batches] == [(1, 1, 3), (1, 1, 2), (1, 1, 3)]
    assert bad == []


def test_events_of_different_sizes_never_share_a_batch(tmp_path: Path) -> None:
    """With a symbolic axis, inputs of several sizes cannot be stacked into one array."""
    widths = [3, 2, 3, 3, 2, 2, 3]
    path = write_events(tmp_path / "events.jsonl", _sized_events(widths))
    batches, bad = _read(path, 4, shape=(1, None))
    assert bad == []
    assert [e.event_id for batch in batches for e in batch.events] == [
        f"e-{i}" for i in range(len(widths))
    ]
    for batch in batches:
        assert len(batch.events) <= 4
        assert batch.inputs.shape[0] == len(batch.events)
    widths_seen = [batch.inputs.shape[-1] for batch in batches for _ in batch.events]
    assert widths_seen == widths
    assert batches[-1].bytes_read == path.stat().st_size
