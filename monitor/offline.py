"""Offline calibration and scoring of JSON-lines event files (``advmon calibrate/score``).

Each line is decoded and its input checked through :mod:`monitor.decoding`, as the worker
decodes and checks a native record. A line the worker would refuse is reported with its
line number, in the words of its dead letter, through a callback and skipped: one bad
line never stops a run.

Calibration reads the events file twice (statistics, then scores), or three times when it
chooses the squeezers by search (:mod:`monitor.evaluate._search`): the first pass then
also keeps the search's bounded sample of the benign events.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import orjson

from detectors import (
    Detector,
    DetectorConfig,
    Device,
    FeatureStats,
    OutputKind,
    SearchBudget,
    SqueezerSearch,
    calibrate_detector,
    check_benign_inputs,
    detect_output_kind,
    inspect_model,
    load_model,
)
from monitor.decoding import RecordFormat, event_input, record_events
from monitor.errors import InvalidRecordError
from schemas import InferenceEvent

__all__ = [
    "PRESET",
    "BadLine",
    "CalibrateReport",
    "EventBatch",
    "ScoreReport",
    "calibrate_file",
    "read_event_batches",
    "score_file",
]

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes of the events file read so far (over all passes)."""

#: The squeezer spec that asks for the preset of the input's shape, without a search.
PRESET = "preset"


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


@dataclass
class CalibrateReport:
    """What ``advmon calibrate`` did."""

    config: DetectorConfig
    preset_used: bool
    """Whether the detector holds the preset squeezers (asked for, or the search fell back)."""
    bad_lines: list[BadLine] = field(default_factory=list)
    seconds: float = 0.0
    """Wall-clock time of the whole calibration, search included."""

    @property
    def squeezer_search(self) -> SqueezerSearch | None:
        """The evidence the squeezers were chosen on, when they were searched for."""
        return self.config.squeezer_search


@dataclass
class ScoreReport:
    """What ``advmon score`` did."""

    scored: int = 0
    flagged: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    provider: str = ""
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        """Scored events per wall-clock second."""
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def _check_writable(path: Path) -> None:
    """Fail now, not after a long calibration, when ``path`` cannot be written."""
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    if not os.access(folder, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def calibrate_file(
    model_path: Path,
    events_path: Path,
    out_path: Path,
    *,
    fpr: float = 0.05,
    squeezer_spec: str | None = None,
    search: SearchBudget | None = None,
    seed: int = 0,
    output_kind: OutputKind | Literal["auto"] = "auto",
    output_name: str | None = None,
    input_range: tuple[float, float] | None = None,
    batch_size: int = 256,
    device: Device = "auto",
    on_bad_line: Callable[[BadLine], None] | None = None,
    on_progress: ProgressCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> CalibrateReport:
    """Calibrate a detector on the benign events in ``events_path`` and save it.

    The squeezers are ``squeezer_spec``; without it (or with :data:`PRESET`), the preset
    for the input's shape, unless ``search`` names a budget: then
    :func:`monitor.evaluate._search.search_squeezers` chooses them from attacks on the
    model (seeded by ``seed``), and the detector file records the evidence. The final
    threshold is always calibrated on every benign event. ``on_stage`` is told, in words,
    each step as it starts.
    """
    if squeezer_spec is not None and search is not None:
        raise ValueError("give squeezers or a search budget, not both")
    started = time.perf_counter()
    _check_writable(out_path)
    model = load_model(str(model_path))
    signature = inspect_model(model, output_name)
    spec = None if squeezer_spec == PRESET else squeezer_spec
    bad_lines: list[BadLine] = []
    passes = 0

    def record(bad: BadLine) -> None:
        # Every pass reads the same file; report each bad line once.
        if passes == 1:
            bad_lines.append(bad)
            if on_bad_line is not None:
                on_bad_line(bad)

    def batches() -> Iterator[np.ndarray]:
        nonlocal passes
        passes += 1
        for batch in read_event_batches(events_path, signature.input_shape, batch_size, record):
            if on_progress is not None:
                on_progress(batch.bytes_read + (passes - 1) * events_path.stat().st_size)
            yield batch.inputs

    def stage(description: str) -> None:
        if on_stage is not None:
            on_stage(description)

    found: SqueezerSearch | None = None
    if search is not None:
        from monitor.evaluate._search import SEARCH_LIMITS, BenignSample, search_squeezers

        stage("reading the benign events")
        sample = BenignSample(SEARCH_LIMITS[search].sample_events, seed)
        stats = FeatureStats()
        first_batch: np.ndarray | None = None
        for batch in batches():
            if first_batch is None and len(batch):
                first_batch = batch
            sample.update(batch)
            stats.update(batch)
        # The same checks and defaults as calibration, so the search's bit depths and
        # the detector's agree.
        input_range = check_benign_inputs(stats, signature, input_range)
        assert first_batch is not None  # check_benign_inputs saw enough events
        if output_kind == "auto":
            output_kind = signature.output_kind or detect_output_kind(
                model, signature.output_name, first_batch
            )
        found = search_squeezers(
            model_path,
            sample,
            fpr=fpr,
            input_range=input_range,
            output_kind=output_kind,
            output_name=output_name,
            budget=search,
            seed=seed,
            device=device,
            batch_size=batch_size,
            on_stage=on_stage,
        )
        spec = found.chosen

    stage("calibrating the threshold on every benign event")
    config = calibrate_detector(
        model_path,
        batches,
        fpr=fpr,
        squeezer_spec=spec,
        output_kind=output_kind,
        output_name=output_name,
        input_range=input_range,
        device=device,
    )
    if found is not None:
        config = replace(config, squeezer_search=found)
    config.save(out_path)
    preset_used = spec is None or (found is not None and not found.searched)
    return CalibrateReport(
        config=config,
        preset_used=preset_used,
        bad_lines=bad_lines,
        seconds=time.perf_counter() - started,
    )


def score_file(
    detector_path: Path,
    events_path: Path,
    out_path: Path,
    *,
    batch_size: int = 256,
    device: Device = "auto",
    on_bad_line: Callable[[BadLine], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ScoreReport:
    """Score every valid event of ``events_path``; one ``ScoreRecord`` line per event."""
    detector = Detector.from_file(detector_path, device=device)
    report = ScoreReport(provider=detector.provider)

    def record(bad: BadLine) -> None:
        report.bad_lines.append(bad)
        if on_bad_line is not None:
            on_bad_line(bad)

    started = time.perf_counter()
    config = detector.config
    with open(out_path, "wb") as out:
        # The same checks as the worker: images must lie in the calibrated value range.
        for batch in read_event_batches(
            events_path, config.input_shape, batch_size, record, config.accepted_range
        ):
            result = detector.score(batch.inputs)
            scores = result.scores.score.tolist()
            flagged = result.flagged.tolist()
            out.write(
                b"".join(
                    orjson.dumps({"event_id": event.event_id, "score": s, "flagged": f}) + b"\n"
                    for event, s, f in zip(batch.events, scores, flagged, strict=True)
                )
            )
            report.scored += len(batch.events)
            report.flagged += int(result.flagged.sum())
            if on_progress is not None:
                on_progress(batch.bytes_read)
    report.seconds = time.perf_counter() - started
    return report
