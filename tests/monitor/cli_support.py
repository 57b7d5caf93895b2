"""Event files, the shared demo model and checks of CLI failures for the monitor tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import Result

from monitor.demo.model import DigitsData, MLPClassifierWeights
from monitor.demo.run import demo_event

#: Benign events in the shared calibration file: enough for --fpr 0.01 (needs 100).
N_BENIGN = 200


@dataclass(frozen=True)
class DemoModel:
    """The demo MLP, its data and its ONNX file (shared by the whole session: read only)."""

    data: DigitsData
    weights: MLPClassifierWeights
    path: Path


@dataclass(frozen=True)
class Traffic:
    """An events file to score: its path, its event ids and images, in file order."""

    path: Path
    event_ids: list[str]
    images: np.ndarray


def write_events(path: Path, lines: Sequence[bytes]) -> Path:
    """Write ``lines`` as a JSON-lines file and return its path."""
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def image_events(
    images: np.ndarray, prefix: str, *, tensor_every: int = 2, source: str = "tests"
) -> list[bytes]:
    """One event ``{prefix}-{i}`` per image; every ``tensor_every``-th is a tensor payload."""
    return [
        demo_event(f"{prefix}-{i}", image, as_tensor=i % tensor_every == 1, source=source)
        for i, image in enumerate(images)
    ]


def normalized(text: str) -> str:
    """``text`` with every run of whitespace made one space (undoes console wrapping)."""
    return " ".join(text.split())


def assert_clean_failure(result: Result, exit_code: int = 1) -> str:
    """Check that a command failed with a click error and no traceback; return the message.

    The message is the text after ``Error: ``, which must fit on one line.
    """
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    if exit_code == 1:
        # A ClickException: the one line is all there is.
        assert result.stderr.strip() == errors[0], result.stderr
    return errors[0].removeprefix("Error: ")
