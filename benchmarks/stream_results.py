"""What one run of :mod:`benchmarks.worker_throughput` measured: its plan, the traffic and
polling parameters, and the figures, as :mod:`benchmarks.stream_report` renders them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from benchmarks.machine import Machine

__all__ = [
    "ADVERSARIAL_EVERY",
    "ATTACKERS",
    "EMPTY_HISTOGRAM",
    "EMPTY_METRICS",
    "FULL_PLAN",
    "HALF_LOAD",
    "IDLE_SECONDS",
    "IDLE_SLEEP_S",
    "LATENCY_P50_TARGET_S",
    "LATENCY_P99_TARGET_S",
    "PIPELINE_RATIO_TARGET",
    "POLL_MS",
    "PY_SPY_RATE_HZ",
    "QUICK_PLAN",
    "USERS",
    "BaselineResult",
    "CpuSeconds",
    "Histogram",
    "LatencyResult",
    "PipelineResult",
    "Plan",
    "ProfileResult",
    "ProfileRow",
    "Report",
    "ScalingResult",
    "StageCost",
    "StepSplit",
    "StreamInfo",
    "StreamPlan",
    "StreamReport",
    "WorkerMetrics",
    "WorkerResult",
]

USERS = tuple(f"user-{i:02d}" for i in range(1, 21))
ATTACKERS = ("attacker-1", "attacker-2")
#: Every ADVERSARIAL_EVERY-th event is a perturbed input from an attacker (5 %).
ADVERSARIAL_EVERY = 20
#: The decisions watcher asks the broker for new records at most this long per poll ...
POLL_MS = 2
#: ... and sleeps this long, its partition paused, when a poll came back empty. The
#: embedded broker answers an empty fetch at once instead of holding it, so an idle
#: consumer that never pauses spins a CPU core; this bounds the watcher's share while
#: adding at most POLL_MS + IDLE_SLEEP_S to a measured receive time.
IDLE_SLEEP_S = 0.004
PY_SPY_RATE_HZ = 100
#: How long to watch the worker's CPU with no traffic at all, after the latency phase.
IDLE_SECONDS = 3.0

#: Issue 13's targets: the worker reaches at least this share of the bare pipeline's
#: events/s on the same topic ...
PIPELINE_RATIO_TARGET = 0.5
#: ... and, at half its measured throughput, decides within these (event send → decision
#: received).
LATENCY_P50_TARGET_S = 0.010
LATENCY_P99_TARGET_S = 0.050
#: The latency phase's offered load, as a share of the worker's measured throughput.
HALF_LOAD = 0.5


@dataclass(frozen=True)
class StreamPlan:
    """How much of one stream to run."""

    events: int
    """Events in the stream's pre-filled single-partition topic."""
    batchings: tuple[tuple[int, int], ...]
    """(max_events, max_wait_ms) settings to run the worker with; the first is the
    recommended one (its latency is the one held against the targets)."""
    scale_events: int
    """Events in the stream's multi-partition topic for the scaling runs; 0 skips them."""
    stage_batches: int
    """Batches of the in-process stage timing."""


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    digits: StreamPlan
    """Stream (a): the demo's 8×8 digits."""
    mnist: StreamPlan
    """Stream (b): 28×28 images, a small CNN."""
    latency_seconds: float
    """How long to offer load in each latency phase."""
    sweep_fractions: tuple[float, ...]
    """Lower loads offered in turn after the half-throughput latency phase, as shares of
    the measured throughput, with each stream's recommended batching only; empty skips
    the sweep."""
    baseline_repeats: int
    """Runs of the bare consumer and of the bare pipeline (median reported)."""
    stage_rounds: int
    """Repeats of the in-process stage timing (median reported)."""
    profile: bool
    """Profile another worker run of stream (a) with py-spy when it is installed."""
    profile_events: int
    """Events decided in the profiled run (the topic's first ones)."""
    scale_workers: tuple[int, ...]
    """Worker processes in one consumer group, per scaling run."""
    scale_partitions: int
    """Partitions of the scaling topics."""

    def stream(self, key: str) -> StreamPlan:
        plans = {"digits": self.digits, "mnist": self.mnist}
        return plans[key]


FULL_PLAN = Plan(
    digits=StreamPlan(
        events=40_000, batchings=((64, 5), (256, 20)), scale_events=40_000, stage_batches=20
    ),
    mnist=StreamPlan(
        events=8_000, batchings=((64, 5), (256, 20)), scale_events=4_000, stage_batches=8
    ),
    latency_seconds=20.0,
    sweep_fractions=(0.25, 0.1),
    baseline_repeats=3,
    stage_rounds=5,
    profile=True,
    profile_events=8_000,
    scale_workers=(1, 2, 4),
    scale_partitions=8,
)
QUICK_PLAN = Plan(
    digits=StreamPlan(
        events=2_000, batchings=((64, 5), (256, 20)), scale_events=2_000, stage_batches=10
    ),
    mnist=StreamPlan(events=1_000, batchings=((64, 5),), scale_events=0, stage_batches=4),
    latency_seconds=5.0,
    sweep_fractions=(0.1,),
    baseline_repeats=1,
    stage_rounds=1,
    profile=True,
    profile_events=2_000,
    scale_workers=(1, 2),
    scale_partitions=8,
)


@dataclass(frozen=True)
class CpuSeconds:
    """CPU seconds (user + system) each process used during a phase."""

    wall: float
    worker: float
    """Of the worker process, or of all the worker processes together."""
    broker: float
    bench: float
    machine: float
    """Busy CPU seconds of the whole machine (``/proc/stat``), everything included."""

    def cores(self, seconds: float) -> float:
        return seconds / self.wall if self.wall > 0 else math.nan

    @property
    def others(self) -> float:
        """CPU seconds of every other process on the machine (other users' jobs too)."""
        return max(0.0, self.machine - self.worker - self.broker - self.bench)


@dataclass(frozen=True)
class BaselineResult:
    """The bare consumer: aiokafka + ``orjson.loads``."""

    events: int
    seconds: float
    """From the first fetch request to the N-th record decoded (median of the repeats)."""
    first_to_last_seconds: float
    """From the first record received to the N-th."""
    all_seconds: tuple[float, ...]
    cpu: CpuSeconds
    """Over all the repeats."""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_per_event(self) -> float:
        """CPU seconds of the consumer's process per event."""
        return self.cpu.bench / (self.events * len(self.all_seconds))

    @property
    def broker_cpu_per_event(self) -> float:
        return self.cpu.broker / (self.events * len(self.all_seconds))


@dataclass(frozen=True)
class PipelineResult:
    """The bare pipeline: aiokafka + orjson + a float32 batch + ``Detector.score``."""

    max_events: int
    """Events per scored batch (the worker's ``batching.max_events``)."""
    events: int
    seconds: float
    """From the first fetch request to the N-th event scored (median of the repeats)."""
    all_seconds: tuple[float, ...]
    cpu: CpuSeconds
    """Over all the repeats."""
    flagged: int
    """Events the detector flagged, in the last repeat."""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_per_event(self) -> float:
        """CPU seconds of the pipeline's process (ONNX Runtime's threads too) per event."""
        return self.cpu.bench / (self.events * len(self.all_seconds))


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram's cumulative buckets, sum and count (a difference of two
    scrapes when subtracted)."""

    buckets: tuple[tuple[float, float], ...]
    total: float
    count: float

    def __sub__(self, other: Histogram) -> Histogram:
        before = dict(other.buckets)
        return Histogram(
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            self.total - other.total,
            self.count - other.count,
        )

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile ``q`` (Prometheus-style, no
        interpolation)."""
        if not self.count:
            return math.nan
        rank = q * self.count
        for le, n in self.buckets:
            if n >= rank:
                return le
        return math.inf


EMPTY_HISTOGRAM = Histogram((), 0.0, 0.0)


def _minus(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple((k, v - b.get(k, 0.0)) for k, v in a.items())


@dataclass(frozen=True)
class WorkerMetrics:
    """What the report reads from the worker's ``/metrics``."""

    scoring: Histogram
    batch_size: Histogram
    event_to_decision: Histogram
    steps: tuple[tuple[str, float], ...] = ()
    """``advmon_pipeline_seconds_total`` by ``step``: wall seconds spent per step of the
    hot path (summed over any other label), in the order the page listed them."""
    steps_found: bool = False
    """Whether the page had ``advmon_pipeline_seconds_total`` at all."""
    counters: tuple[tuple[str, float], ...] = ()
    """A few counters (:data:`benchmarks.worker_throughput.COUNTERS`), summed over labels."""

    def __sub__(self, other: WorkerMetrics) -> WorkerMetrics:
        return WorkerMetrics(
            self.scoring - other.scoring,
            self.batch_size - other.batch_size,
            self.event_to_decision - other.event_to_decision,
            _minus(dict(self.steps), dict(other.steps)),
            self.steps_found,
            _minus(dict(self.counters), dict(other.counters)),
        )

    def counter(self, name: str) -> float:
        """A counter's value; NaN when the page did not have it."""
        return dict(self.counters).get(name, math.nan)


EMPTY_METRICS = WorkerMetrics(EMPTY_HISTOGRAM, EMPTY_HISTOGRAM, EMPTY_HISTOGRAM)


@dataclass(frozen=True)
class StepSplit:
    """The worker's ``advmon_pipeline_seconds_total`` by step over a window of the
    throughput phase."""

    steps: tuple[tuple[str, float], ...]
    """(step, wall seconds) in the window."""
    found: bool
    """Whether ``/metrics`` had the counter at all."""
    events: int
    """Events decided in the window."""
    seconds: float
    """The window's wall seconds."""
    whole_run: bool
    """The window is the worker's whole run (start-up included), not first → N-th
    decision: the worker had decided too much of the topic by the first scrape."""


@dataclass(frozen=True)
class LatencyResult:
    """One latency phase: a steady offered load, events sent one by one."""

    rate: float
    """Offered load, events/s."""
    seconds: float
    sent: int
    received: int
    latencies: tuple[float, ...]
    """Decision receive time − event send time, seconds, one per received decision."""
    created_latencies: tuple[float, ...]
    """Decision record timestamp (set by the worker's producer) − event send time."""
    metrics: WorkerMetrics
    """The worker's ``/metrics`` over the phase (a difference of two scrapes)."""
    cpu: CpuSeconds
    fraction: float = HALF_LOAD
    """The offered load as a share of the worker's measured throughput."""

    def quantile(self, q: float, created: bool = False) -> float:
        values = self.created_latencies if created else self.latencies
        return float(np.quantile(values, q)) if values else math.nan

    @property
    def p50_met(self) -> bool:
        return self.received == self.sent and self.quantile(0.5) <= LATENCY_P50_TARGET_S

    @property
    def p99_met(self) -> bool:
        return self.received == self.sent and self.quantile(0.99) <= LATENCY_P99_TARGET_S

    @property
    def targets_met(self) -> bool:
        """Both latency targets held (and every event sent got its decision)."""
        return self.p50_met and self.p99_met


@dataclass(frozen=True)
class WorkerResult:
    max_events: int
    max_wait_ms: int
    events: int
    startup_seconds: float
    """Worker launch to ``/healthz`` answering 200."""
    launch_to_first_seconds: float
    """Worker launch to the first decision received."""
    received_seconds: float
    """First to N-th decision, by this process's receive times."""
    created_seconds: float
    """First to N-th decision, by the decisions' record timestamps."""
    duplicates: int
    source_decisions: int
    """Source-scoped (quarantine) decisions seen."""
    actions: tuple[tuple[str, int], ...]
    """Request decisions of the timed events by action (allow, flag, quarantine)."""
    metrics: WorkerMetrics
    cpu: CpuSeconds
    latency: LatencyResult | None = None
    """The latency phase at half the measured throughput."""
    sweep: tuple[LatencyResult, ...] = ()
    """The lower loads offered after it (the recommended batching only), in turn."""
    sweep_error: str = ""
    """Why the sweep stopped short, when it did."""
    idle: CpuSeconds | None = None
    """CPU while no events arrive, after the latency phase."""
    profile_seconds: float = 0.0
    """How long py-spy recorded, when it did."""
    metrics_error: str = ""
    """Why ``/metrics`` could not be read, when it could not."""
    steps: StepSplit | None = None

    @property
    def events_per_second(self) -> float:
        return (self.events - 1) / self.received_seconds if self.received_seconds > 0 else math.nan

    @property
    def cpu_per_event(self) -> float:
        """CPU seconds of the worker process per event decided."""
        return self.cpu.worker / self.events

    @property
    def broker_cpu_per_event(self) -> float:
        return self.cpu.broker / self.events

    @property
    def created_events_per_second(self) -> float:
        return (self.events - 1) / self.created_seconds if self.created_seconds > 0 else math.nan

    @property
    def label(self) -> str:
        """The batching setting, ``max_events/max_wait_ms``."""
        return f"{self.max_events}/{self.max_wait_ms}"

    def action(self, name: str) -> int:
        return dict(self.actions).get(name, 0)


@dataclass(frozen=True)
class ScalingResult:
    """``workers`` worker processes in one consumer group on a multi-partition topic."""

    workers: int
    partitions: int
    max_events: int
    max_wait_ms: int
    events: int
    ready_seconds: float
    """Launch of the workers to all of them healthy and holding their partitions."""
    shares: tuple[int, ...]
    """Partitions of the topic each worker held before the topic was filled (from
    ``/healthz``); empty when the split could not be read."""
    split_note: str
    """Why the split could not be confirmed, when it could not."""
    fill_seconds: float
    """Producing the events, which starts once the group holds every partition."""
    received_seconds: float
    """First to N-th decision, by this process's receive times."""
    duplicates: int
    cpu: CpuSeconds
    """From the first produce to the N-th decision; ``worker`` is all workers together."""

    @property
    def events_per_second(self) -> float:
        return (self.events - 1) / self.received_seconds if self.received_seconds > 0 else math.nan

    @property
    def worker_cores(self) -> float:
        return self.cpu.cores(self.cpu.worker)

    @property
    def events_per_worker_core(self) -> float:
        """Events/s per core of worker CPU (all workers' CPU seconds ÷ wall)."""
        cores = self.worker_cores
        return self.events_per_second / cores if cores > 0 else math.nan

    @property
    def broker_cpu_per_event(self) -> float:
        return self.cpu.broker / self.events


@dataclass(frozen=True)
class StageCost:
    """In-process cost of one pipeline stage on a batch, per event."""

    stage: str
    microseconds_per_event: float


@dataclass(frozen=True)
class StreamInfo:
    """What a stream is: its events, model and detector, as the page describes them."""

    key: str
    """``digits`` or ``mnist``: topic names, worker tags."""
    name: str
    """``(a) demo digits`` …"""
    model: str
    """The classifier, in words."""
    squeezers: str
    detector: str
    """How the detector was made, in words."""
    threshold: float
    benign: str
    """The benign inputs, in words."""
    payloads: str
    """How inputs are written in the events (tensor payloads, nested lists)."""
    perturbed: str
    """The perturbed events (every ADVERSARIAL_EVERY-th), exactly what they are."""
    perturbed_pool: int
    """Distinct perturbed inputs the stream cycles through."""
    benign_flagged_share: float
    """Share of the stream's benign inputs that the detector flags (in this process)."""
    perturbed_flagged_share: float
    """Share of the perturbed inputs in the pool that the detector flags."""


@dataclass
class StreamReport:
    """Everything measured on one stream, filled in as the run goes."""

    info: StreamInfo
    plan: StreamPlan
    event_bytes: float = 0.0
    produce_seconds: float = 0.0
    perturbed_events: int = 0
    """Perturbed events in the pre-filled topic."""
    baseline: BaselineResult | None = None
    pipelines: list[PipelineResult] = field(default_factory=list)
    workers: list[WorkerResult] = field(default_factory=list)
    scaling: list[ScalingResult] = field(default_factory=list)
    scaling_batching: tuple[int, int] = (64, 5)
    stages: list[StageCost] = field(default_factory=list)
    stage_batch: int = 64
    stage_note: str = ""
    """Why the in-process stage timing did not run, when it did not."""
    flagged_share: float = math.nan
    """Share of the stage timing's events that were flagged."""

    def pipeline(self, max_events: int) -> PipelineResult | None:
        """The bare pipeline run with batches of ``max_events``."""
        return next((p for p in self.pipelines if p.max_events == max_events), None)

    def recommended(self) -> WorkerResult | None:
        """The worker run with the plan's recommended (first) batching, when it ran."""
        max_events, max_wait_ms = self.plan.batchings[0]
        batching = (max_events, max_wait_ms)
        return next((w for w in self.workers if (w.max_events, w.max_wait_ms) == batching), None)


@dataclass(frozen=True)
class ProfileRow:
    label: str
    share: float


@dataclass(frozen=True)
class ProfileResult:
    max_events: int
    max_wait_ms: int
    samples: int
    """Samples taken while a thread of the worker held the GIL."""
    seconds: float
    """How long py-spy recorded."""
    events_per_second: float
    threads: tuple[ProfileRow, ...]
    """Share of the samples taken in each thread."""
    parts: tuple[ProfileRow, ...]
    """Inclusive share of samples with the named code on the stack."""
    leaves: tuple[ProfileRow, ...]
    """Top functions by self samples."""

    @property
    def gil_busy(self) -> float:
        """Share of the time some thread of the worker held the GIL."""
        return self.samples / (PY_SPY_RATE_HZ * self.seconds) if self.seconds else math.nan


@dataclass
class Report:
    """Everything one run measured, filled in as the run goes."""

    plan: Plan
    command: str
    """The command line that ran the benchmark."""
    streams: list[StreamReport] = field(default_factory=list)
    profile: ProfileResult | None = None
    profile_note: str = ""
    machine: Machine | None = None
    broker_description: str = ""
    """Which broker the run used: Apache Kafka (:class:`tests.kafka.ApacheKafkaBroker`) or
    the embedded noida-db one."""
    seconds: float = 0.0
    """How long the whole run took."""
    failures: list[str] = field(default_factory=list)
    """Phases that failed (the run went on without them), with why."""
