"""Offline calibration and scoring of JSON-lines event files (``advmon calibrate/score``).

Each line is decoded and its input checked through :mod:`monitor.decoding`, as the worker
decodes and checks a native record. A line the worker would refuse is reported with its
line number, in the words of its dead letter, through a callback and skipped: one bad
line never stops a run.

Calibration reads the events file twice (statistics, then scores), or three times when it
chooses the squeezers by search (:mod:`monitor.evaluate._search`): the first pass then
also keeps the search's bounded sample of the benign events.

Scoring also replays the file's traffic through per-source query histories
(:mod:`detectors.queries`), as the worker's query stage watches a stream: every event
that names a ``source`` is fingerprinted and matched against the earlier queries of its
source to the same model, in file order, and a source is flagged when a query is linked
to at least ``min_linked`` of them (see :func:`score_file`).
"""

from __future__ import annotations

import errno
import math
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
    QueryHistory,
    QuerySettings,
    SearchBudget,
    SqueezerSearch,
    calibrate_detector,
    check_benign_inputs,
    detect_output_kind,
    fingerprints,
    inspect_model,
    load_model,
    request_digest,
)
from detectors.queries import DEFAULT_MAX_AGE_SECONDS
from monitor.decoding import RecordFormat, event_input, record_events
from monitor.errors import InvalidRecordError
from schemas import InferenceEvent

__all__ = [
    "PRESET",
    "BadLine",
    "CalibrateReport",
    "EventBatch",
    "QueryAttackSummary",
    "QueryFlag",
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


@dataclass(frozen=True)
class QueryFlag:
    """A source whose queries to a model crossed the query-attack threshold."""

    model_id: str
    source: str
    event_id: str
    """The source's first event that crossed it."""
    queries: int
    """Events the source had sent to the model up to and including that one (retries,
    repeats and low-information queries included)."""
    linked: int
    """Held queries of the source that event was linked to."""


@dataclass
class QueryAttackSummary:
    """What query-attack detection saw in an events file."""

    min_linked: int
    """The threshold applied: the detector file's, or the one asked for."""
    min_linked_overridden: bool = False
    """Whether ``min_linked`` was asked for rather than read from the detector file."""
    sources: int = 0
    """Distinct (model, source) pairs watched."""
    queries: int = 0
    """Events that named a source."""
    attack_queries: int = 0
    """Queries linked to at least ``min_linked`` held queries of their source."""
    flags: list[QueryFlag] = field(default_factory=list)
    """Each flagged (model, source) pair once, at its first query over the threshold, in
    file order."""


@dataclass
class ScoreReport:
    """What ``advmon score`` did."""

    scored: int = 0
    flagged: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    provider: str = ""
    seconds: float = 0.0
    query_attacks: QueryAttackSummary | None = None
    """Per-source query-attack detection; ``None`` when it was turned off or unavailable."""
    query_attacks_unavailable: str | None = None
    """Why query-attack detection did not run although it was asked for."""

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


@dataclass(slots=True)
class _Source:
    """One (model, source) pair's state while a file is replayed."""

    history: QueryHistory | None
    """Its held queries; ``None`` once all of them are older than the maximum age."""
    last_time: float
    queries: int = 0
    flagged: bool = False


class _QueryWatch:
    """Per-source query histories over an events file, fed batch by batch in file order.

    An event's time is its ``ts``; an event without one is placed one second after the
    event before it (the first at 0), so a file without timestamps is replayed one event
    a second. The histories of sources silent for longer than the maximum age are
    dropped (their queries have all expired), so memory follows the sources active
    within that age, not every source the file ever names.
    """

    def __init__(
        self,
        settings: QuerySettings,
        match_bits: int,
        min_linked: int | None,
        max_age_seconds: float,
    ) -> None:
        self.settings = settings
        self.match_bits = match_bits
        self.min_linked = settings.min_linked if min_linked is None else min_linked
        self.max_age_seconds = max_age_seconds
        self.summary = QueryAttackSummary(self.min_linked, min_linked is not None)
        self._sources: dict[tuple[str, str], _Source] = {}
        self._time = -1.0
        self._newest = -math.inf
        self._swept = -math.inf

    def observe(
        self, events: Sequence[InferenceEvent], inputs: np.ndarray
    ) -> list[dict[str, object]]:
        """The query fields of each event's score line (empty for one without a source)."""
        fields: list[dict[str, object]] = [{} for _ in events]
        times = []
        for event in events:
            self._time = event.ts.timestamp() if event.ts is not None else self._time + 1.0
            times.append(self._time)
        rows = [i for i, event in enumerate(events) if event.source]
        if not rows:
            return fields
        spec = self.settings.fingerprint
        prints = fingerprints(spec, inputs if len(rows) == len(events) else inputs[rows])
        summary = self.summary
        for j, i in enumerate(rows):
            event, when = events[i], times[i]
            assert event.source  # rows hold the events that name one
            key = (event.model_id, event.source)
            state = self._sources.get(key)
            if state is None:
                state = self._sources[key] = _Source(None, when)
                summary.sources += 1
            if state.history is None:
                state.history = QueryHistory(
                    self.settings.history_size, self.max_age_seconds, self.match_bits
                )
            state.queries += 1
            state.last_time = max(state.last_time, when)
            seen = state.history.observe(
                prints.bitmaps[j],
                int(prints.windows[j]),
                int(prints.digests[j]),
                when,
                event.event_id,
                request_digest(event.request_id),
            )
            attack = seen.outcome == "new" and seen.linked >= self.min_linked
            if attack:
                summary.attack_queries += 1
                if not state.flagged:
                    state.flagged = True
                    summary.flags.append(
                        QueryFlag(key[0], key[1], event.event_id, state.queries, seen.linked)
                    )
            fields[i] = {
                "query_outcome": seen.outcome,
                "query_matches": seen.matches,
                "query_linked": seen.linked,
                "query_attack": attack,
                "query_matched_event_ids": seen.matched_event_ids,
            }
            self._newest = max(self._newest, when)
        summary.queries += len(rows)
        self._sweep()
        return fields

    def _sweep(self) -> None:
        """Drop the histories whose every query is older than the maximum age (looked at
        each time the newest event time moves on by a quarter of that age)."""
        if self._newest - self._swept < self.max_age_seconds / 4:
            return
        self._swept = self._newest
        oldest = self._newest - self.max_age_seconds
        for state in self._sources.values():
            if state.history is not None and state.last_time < oldest:
                state.history = None


def _query_watch(
    config: DetectorConfig,
    report: ScoreReport,
    query_attacks: bool,
    min_linked: int | None,
    max_age_seconds: float,
) -> _QueryWatch | None:
    if not query_attacks:
        return None
    settings = config.query_settings
    if settings is None:
        report.query_attacks_unavailable = (
            "query-attack detection needs a re-calibration: this detector file of a "
            f"{config.input_kind} model has no query-attack settings (re-run advmon calibrate)"
        )
        return None
    match_bits = config.query_match_bits
    if match_bits is None:
        report.query_attacks_unavailable = (
            "query-attack detection is off: the model takes inputs of varying shape, "
            "which cannot be fingerprinted"
        )
        return None
    watch = _QueryWatch(settings, match_bits, min_linked, max_age_seconds)
    report.query_attacks = watch.summary
    return watch


def score_file(
    detector_path: Path,
    events_path: Path,
    out_path: Path,
    *,
    batch_size: int = 256,
    device: Device = "auto",
    query_attacks: bool = False,
    min_linked: int | None = None,
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
    on_bad_line: Callable[[BadLine], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ScoreReport:
    """Score every valid event of ``events_path``; one ``ScoreRecord`` line per event.

    With ``query_attacks`` (``advmon score`` turns it on unless told not to), every event
    that names a ``source`` also goes through its (model, source) pair's query history
    (:class:`detectors.queries.QueryHistory` of the detector file's ``history_size``
    queries, at most ``max_age_seconds`` old), in file order, and its line gets the
    ``query_*`` fields: the query's outcome, the held queries it matches and is linked
    to, and whether it is linked to at least ``min_linked`` of them (the detector file's
    threshold unless given). A flagged source's later events are scored and written like
    any other; :attr:`ScoreReport.query_attacks` lists each flagged pair once, at its
    first query over the threshold. A detector file without query-attack settings (a
    tabular model calibrated before they existed), or a model whose inputs vary in
    shape, scores without them, and :attr:`ScoreReport.query_attacks_unavailable` says
    why.
    """
    if min_linked is not None and min_linked < 1:
        raise ValueError(f"min_linked must be at least 1, got {min_linked}")
    if not max_age_seconds > 0:
        raise ValueError(f"max_age_seconds must be positive, got {max_age_seconds}")
    detector = Detector.from_file(detector_path, device=device)
    report = ScoreReport(provider=detector.provider)

    def record(bad: BadLine) -> None:
        report.bad_lines.append(bad)
        if on_bad_line is not None:
            on_bad_line(bad)

    started = time.perf_counter()
    config = detector.config
    watch = _query_watch(config, report, query_attacks, min_linked, max_age_seconds)
    with open(out_path, "wb") as out:
        # The same checks as the worker: images must lie in the calibrated value range.
        for batch in read_event_batches(
            events_path, config.input_shape, batch_size, record, config.accepted_range
        ):
            result = detector.score(batch.inputs)
            scores = result.scores.score.tolist()
            flagged = result.flagged.tolist()
            queries = (
                watch.observe(batch.events, batch.inputs)
                if watch is not None
                else [{}] * len(batch.events)
            )
            out.write(
                b"".join(
                    orjson.dumps({"event_id": event.event_id, "score": s, "flagged": f, **q})
                    + b"\n"
                    for event, s, f, q in zip(batch.events, scores, flagged, queries, strict=True)
                )
            )
            report.scored += len(batch.events)
            report.flagged += int(result.flagged.sum())
            if on_progress is not None:
                on_progress(batch.bytes_read)
    report.seconds = time.perf_counter() - started
    return report
