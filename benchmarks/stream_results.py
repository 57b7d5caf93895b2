"""What one run of :mod:`benchmarks.worker_throughput` measured: its plan, the traffic and
polling parameters, and the figures, as :mod:`benchmarks.stream_report` renders them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from benchmarks.machine import Machine

__all__ = [
    "ADVERSARIAL_EVERY",
    "ATTACKERS",
    "EMPTY_HISTOGRAM",
    "EMPTY_METRICS",
    "FULL_PLAN",
    "IDLE_SECONDS",
    "IDLE_SLEEP_S",
    "POLL_MS",
    "PY_SPY_RATE_HZ",
    "QUICK_PLAN",
    "USERS",
    "BaselineResult",
    "CpuSeconds",
    "Histogram",
    "LatencyResult",
    "Plan",
    "ProfileResult",
    "ProfileRow",
    "Report",
    "StageCost",
    "WorkerMetrics",
    "WorkerResult",
]

USERS = tuple(f"user-{i:02d}" for i in range(1, 21))
ATTACKERS = ("attacker-1", "attacker-2")
#: Every ADVERSARIAL_EVERY-th event is a PGD digit from an attacker (5 %).
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


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    events: int
    """Events in the pre-filled topic."""
    batchings: tuple[tuple[int, int], ...]
    """(max_events, max_wait_ms) settings to run the worker with."""
    latency_seconds: float
    """How long to offer load in the latency phase."""
    baseline_repeats: int
    stage_rounds: int
    """Repeats of the in-process stage timing (median reported)."""
    profile: bool
    """Profile a third worker run with py-spy when it is installed."""
    profile_events: int
    """Events decided in the profiled run (the topic's first ones)."""


FULL_PLAN = Plan(
    events=20_000,
    batchings=((64, 20), (256, 50)),
    latency_seconds=20.0,
    baseline_repeats=3,
    stage_rounds=5,
    profile=True,
    profile_events=8_000,
)
QUICK_PLAN = Plan(
    events=2_000,
    batchings=((64, 20), (256, 50)),
    latency_seconds=5.0,
    baseline_repeats=1,
    stage_rounds=1,
    profile=True,
    profile_events=2_000,
)


@dataclass(frozen=True)
class CpuSeconds:
    """CPU seconds (user + system) each process used during a phase."""

    wall: float
    worker: float
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


@dataclass(frozen=True)
class WorkerMetrics:
    """The worker's own histograms, from ``/metrics``."""

    scoring: Histogram
    batch_size: Histogram
    event_to_decision: Histogram

    def __sub__(self, other: WorkerMetrics) -> WorkerMetrics:
        return WorkerMetrics(
            self.scoring - other.scoring,
            self.batch_size - other.batch_size,
            self.event_to_decision - other.event_to_decision,
        )


EMPTY_METRICS = WorkerMetrics(EMPTY_HISTOGRAM, EMPTY_HISTOGRAM, EMPTY_HISTOGRAM)


@dataclass(frozen=True)
class LatencyResult:
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
    cpu: CpuSeconds

    def quantile(self, q: float, created: bool = False) -> float:
        values = self.created_latencies if created else self.latencies
        return float(np.quantile(values, q)) if values else math.nan


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
    metrics: WorkerMetrics
    cpu: CpuSeconds
    latency: LatencyResult | None = None
    idle: CpuSeconds | None = None
    """CPU while no events arrive, after the latency phase."""
    profile_seconds: float = 0.0
    """How long py-spy recorded, when it did."""
    metrics_error: str = ""
    """Why ``/metrics`` could not be read, when it could not."""

    @property
    def events_per_second(self) -> float:
        return (self.events - 1) / self.received_seconds

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


@dataclass(frozen=True)
class StageCost:
    """In-process cost of one pipeline stage on a batch, per event."""

    stage: str
    microseconds_per_event: float


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
    event_bytes: float
    adversarial: int
    produce_seconds: float
    baseline: BaselineResult | None = None
    workers: list[WorkerResult] = field(default_factory=list)
    stages: list[StageCost] = field(default_factory=list)
    stage_batch: int = 64
    profile: ProfileResult | None = None
    profile_note: str = ""
    flagged_share: float = math.nan
    machine: Machine | None = None
    broker_description: str = ""
    """Which broker the run used: Apache Kafka (:class:`tests.kafka.ApacheKafkaBroker`) or
    the embedded noida-db one."""
