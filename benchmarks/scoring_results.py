"""What one run of :mod:`benchmarks.squeeze_scoring` measured: its plan and the figures,
as :mod:`benchmarks.scoring_report` renders them."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.machine import Machine
from benchmarks.models import BenchmarkModel

__all__ = [
    "FULL_PLAN",
    "PROFILE_BATCH",
    "QUICK_PLAN",
    "SCORE_BATCH_SIZE",
    "BenchmarkPlan",
    "EndToEndResult",
    "GraphResult",
    "ProfileRow",
    "ScoringReport",
]

#: Events per graph run in ``advmon score`` (the CLI's default batch size).
SCORE_BATCH_SIZE = 256
#: Batch size of the per-operator profile.
PROFILE_BATCH = 32


@dataclass(frozen=True)
class BenchmarkPlan:
    """How much to measure: the full run or the ``--quick`` smoke run."""

    name: str
    digits_events: int
    """Events per end-to-end file for the digits MLP."""
    cnn_events: int
    """Events per end-to-end file for the MNIST-like CNN."""
    end_to_end_repeats: int
    batch_sizes: tuple[int, ...]
    warmup_runs: int
    min_rounds: int
    min_seconds: float
    """Timing rounds continue until both ``min_rounds`` and ``min_seconds`` are reached…"""
    max_rounds: int
    """…or until this many rounds."""
    profile_runs: int


FULL_PLAN = BenchmarkPlan(
    name="full",
    digits_events=4096,
    cnn_events=1024,
    end_to_end_repeats=3,
    batch_sizes=(1, 32, 256),
    warmup_runs=3,
    min_rounds=9,
    min_seconds=3.0,
    max_rounds=2000,
    profile_runs=10,
)
QUICK_PLAN = BenchmarkPlan(
    name="quick",
    digits_events=512,
    cnn_events=128,
    end_to_end_repeats=1,
    batch_sizes=(1, 32),
    warmup_runs=1,
    min_rounds=3,
    min_seconds=0.1,
    max_rounds=200,
    profile_runs=2,
)


@dataclass(frozen=True)
class EndToEndResult:
    """``advmon score`` on one events file."""

    model: str
    encoding: str
    events: int
    file_mb: float
    provider: str
    read_seconds: float
    """Median time to decode and validate the file into batches, without scoring."""
    loop_seconds: float
    """Median ``ScoreReport.seconds``: read, score, write (what ``advmon score`` prints)."""
    call_seconds: float
    """Median wall time of ``score_file``: the loop plus loading the detector."""
    cli_seconds: float | None
    """Wall time of one ``advmon score`` process (interpreter start-up included)."""


@dataclass(frozen=True)
class GraphResult:
    """The fused graph against bare model passes at one batch size."""

    model: str
    squeezer_spec: str
    k: int
    batch: int
    rounds: int
    fused_seconds: float
    bare_passes_seconds: float
    """Median time of ``1 + k`` bare passes over the batch, run back to back."""
    stacked_seconds: float
    """Median time of one bare pass over the ``(1 + k)·N`` stacked copies."""
    ratio: float
    """Median over rounds of fused ÷ ``1 + k`` bare passes."""
    stacked_ratio: float
    """Median over rounds of fused ÷ one bare pass over the stacked copies."""
    ratio_quartiles: tuple[float, float]
    """First and third quartiles of the per-round ratios: how much the load moved them."""

    @property
    def events_per_second(self) -> float:
        """Events scored per second by the fused graph alone."""
        return self.batch / self.fused_seconds


@dataclass(frozen=True)
class ProfileRow:
    """Kernel time of one operator type in one part of the fused graph."""

    part: str
    op_type: str
    microseconds: float
    """Mean per run."""
    share: float


@dataclass(frozen=True)
class ScoringReport:
    """Everything one run measured."""

    plan: BenchmarkPlan
    command: str
    """The command line that ran the benchmark."""
    machine: Machine
    intra_op_threads: int
    """ONNX Runtime intra-op threads of the graph runs (one per physical core)."""
    provider: str
    """The execution provider ``advmon score`` ran on."""
    models: tuple[BenchmarkModel, ...]
    end_to_end: tuple[EndToEndResult, ...]
    graphs: tuple[GraphResult, ...]
    profiles: dict[str, list[ProfileRow]]
    """Per model name, the heaviest operators first."""
