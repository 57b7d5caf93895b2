"""How fast ``advmon worker`` turns a Kafka topic of inference events into decisions.

Run ``.venv/bin/python -m benchmarks.worker_throughput`` (about 4 minutes on 2 cores);
``--quick`` for a smoke run of about a minute, ``--output PATH`` to write the page
somewhere other than ``docs/benchmarks-stream.md``, ``--broker embedded`` to run on the
demo's noida-db broker instead of Apache Kafka (:class:`tests.kafka.ApacheKafkaBroker`,
whose jars ``make kafka`` fetches). On one broker and one pre-filled topic of demo digit
events, it measures:

1. **bare consumer**: events/s of a plain aiokafka consumer that reads the topic from
   the beginning to the end and JSON-decodes every value (``orjson.loads``); the
   ceiling any consumer of this topic on this machine can reach;
2. **worker throughput**: events/s of ``advmon worker`` (a subprocess, exactly as
   deployed) on the same topic, from its first to its N-th request decision seen on the
   decisions topic, for each batching setting; worker start-up is excluded;
3. **latency**: event-to-decision p50/p99 at a fixed offered load of half the
   throughput measured in step 2, events carrying their send time in ``ts``;
4. **where the time goes**: the worker's own ``/metrics`` histograms, the CPU time of
   the worker, the broker and this process per phase, the per-event cost of the
   pipeline's stages in-process, and a py-spy profile of a third worker run when
   ``py-spy`` is installed (``.venv/bin/pip install py-spy``; ``--no-profile`` skips it);
5. **an experiment**: the worker with a different ``AdvmonApp.publish`` patched in by
   a wrapper script, to measure what that change would buy (``--no-experiment``).

Everything runs in a temporary folder and the page goes to ``--output``. Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from detectors import Detector, DetectorConfig, file_sha256, load_model
from monitor.config import load_config
from monitor.demo.attacks import pgd
from monitor.demo.model import DigitsData, load_digits_data, mlp_to_onnx, train_mlp
from monitor.demo.run import ATTACK_EPS, demo_event
from monitor.kafka.local_broker import BrokerProcess, LocalKafkaBroker, free_loopback_port
from monitor.offline import calibrate_file
from monitor.worker.stages.scoring_pipeline import InputMessage, ModelDetector, ScoringPipeline
from tests.kafka import ApacheKafkaBroker

__all__ = [
    "FULL_PLAN",
    "QUICK_PLAN",
    "BaselineResult",
    "LatencyResult",
    "Plan",
    "ProfileResult",
    "StageCost",
    "WorkerResult",
    "main",
]

DEFAULT_OUTPUT = Path("docs/benchmarks-stream.md")
COMMAND = ".venv/bin/python -m benchmarks.worker_throughput --no-experiment"
#: The worker should reach at least this share of the bare consumer's events/s.
TARGET_RATIO = 0.5
EVENTS_TOPIC = "bench-inference-events"
USERS = tuple(f"user-{i:02d}" for i in range(1, 21))
ATTACKERS = ("attacker-1", "attacker-2")
#: Every ADVERSARIAL_EVERY-th event is a PGD digit from an attacker (5 %).
ADVERSARIAL_EVERY = 20
WORKER_START_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 60.0
#: The decisions watcher asks the broker for new records at most this long per poll ...
POLL_MS = 2
#: ... and sleeps this long, its partition paused, when a poll came back empty. The
#: broker answers an empty fetch at once instead of holding it, so an idle consumer that
#: never pauses spins a CPU core; this bounds the watcher's share while adding at most
#: POLL_MS + IDLE_SLEEP_S to a measured receive time.
IDLE_SLEEP_S = 0.004
PY_SPY_RATE_HZ = 100
#: How long to watch the worker's CPU with no traffic at all, after the latency phase.
IDLE_SECONDS = 3.0
#: The experiment (skipped with ``--no-experiment``): ``advmon worker`` with
#: ``AdvmonApp.publish`` replaced by one that hands each record straight to Faust's
#: producer instead of going through ``Topic.send``, whose
#: ``App.maybe_start_producer`` is wrapped in mode's ``@stampede`` (three
#: ``asyncio.sleep(0)`` per call, so three trips round the event loop per record), which
#: lets aiokafka's sender ship produce requests of one or two records. Not the shipped
#: code: a measurement of what that change would buy.
EXPERIMENT = "direct-publish"
EXPERIMENT_WRAPPER = """\
# Written by benchmarks.worker_throughput: advmon worker with an experimental publish.
import asyncio
import runpy
import sys

import monitor.worker.app


async def publish(self, records):
    producer = await self.app.maybe_start_producer()
    pending = [
        await producer.send(r.topic, r.key, r.value, None, None, None) for r in records
    ]
    await asyncio.gather(*pending)


monitor.worker.app.AdvmonApp.publish = publish
sys.argv = ["advmon", *sys.argv[1:]]
runpy.run_module("monitor", run_name="__main__", alter_sys=True)
"""


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
    side_events: int
    """Events decided in the profile and A/B runs (the topic's first ones)."""
    experiment_rounds: int
    """Rounds of (shipped worker, :data:`EXPERIMENT`), throughput only, first batching
    setting; 0 for none."""


FULL_PLAN = Plan(
    events=20_000,
    batchings=((64, 20), (256, 50)),
    latency_seconds=20.0,
    baseline_repeats=3,
    stage_rounds=5,
    profile=True,
    side_events=8_000,
    experiment_rounds=2,
)
QUICK_PLAN = Plan(
    events=2_000,
    batchings=((64, 20), (256, 50)),
    latency_seconds=5.0,
    baseline_repeats=1,
    stage_rounds=1,
    profile=True,
    side_events=2_000,
    experiment_rounds=1,
)


# -- results ---------------------------------------------------------------------------


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
    variant: str
    """"" for the main runs, else the run's name."""
    experiment: bool
    """Whether the worker ran with :data:`EXPERIMENT_WRAPPER`."""
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
        return f"{self.max_events}/{self.max_wait_ms}" + (
            f" ({self.variant})" if self.variant else ""
        )


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

    @property
    def gil_busy(self) -> float:
        """Share of the time some thread of the worker held the GIL."""
        return self.samples / (PY_SPY_RATE_HZ * self.seconds) if self.seconds else math.nan

    parts: tuple[ProfileRow, ...]
    """Inclusive share of samples with the named code on the stack."""
    leaves: tuple[ProfileRow, ...]
    """Top functions by self samples."""


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    logical_cpus: int
    versions: tuple[tuple[str, str], ...]
    commit: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    date: str


@dataclass
class Report:
    plan: Plan
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
    experiments: list[WorkerResult] = field(default_factory=list)
    experiment_note: str = ""
    broker: str = "apache"
    """``apache`` (:class:`tests.kafka.ApacheKafkaBroker`) or ``embedded`` (noida-db)."""
    broker_description: str = ""
    broker_pid: int | None = None


# -- process accounting ----------------------------------------------------------------


def _process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a process so far; 0 when it cannot be read."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """Busy CPU seconds of all CPUs since boot (``/proc/stat``: all but idle and iowait)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    ticks = [int(f) for f in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Wall time and CPU seconds of the worker, the broker and this process."""

    def __init__(self, worker: int | None, broker: int | None) -> None:
        self.worker, self.broker = worker, broker
        self._start = self._now()

    def _now(self) -> tuple[float, float, float, float, float]:
        return (
            time.perf_counter(),
            _process_cpu(self.worker) if self.worker else 0.0,
            _process_cpu(self.broker) if self.broker else 0.0,
            _process_cpu(None),
            _machine_busy(),
        )

    def restart(self) -> None:
        self._start = self._now()

    def read(self) -> CpuSeconds:
        now = self._now()
        wall, worker, broker, bench, machine = (
            b - a for a, b in zip(self._start, now, strict=True)
        )
        return CpuSeconds(wall, worker, broker, bench, machine)


# -- traffic ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifacts:
    data: DigitsData
    adversarial: np.ndarray
    detector_path: Path


def build_artifacts(workdir: Path) -> Artifacts:
    """Train the demo MLP, export it, calibrate its detector and make PGD digits."""
    data = load_digits_data()
    weights = train_mlp(data.train_x, data.train_y)
    model_path, benign_path = workdir / "model.onnx", workdir / "benign.jsonl"
    detector_path = workdir / "detector.json"
    onnx.save(mlp_to_onnx(weights), model_path)
    with benign_path.open("wb") as out:
        for i, image in enumerate(data.calibration_x):
            out.write(demo_event(f"cal-{i}", image, as_tensor=i % 2 == 1, source="cal") + b"\n")
    calibrate_file(model_path, benign_path, detector_path, device="cpu")
    adversarial = pgd(weights, data.test_x, data.test_y, ATTACK_EPS)
    fooled = weights.logits(adversarial).argmax(axis=1) != data.test_y
    return Artifacts(data, adversarial[fooled], detector_path)


def traffic_event(artifacts: Artifacts, prefix: str, i: int) -> bytes:
    """Event ``i`` of a stream: benign digits from 20 users, half as nested lists, half
    as tensor payloads; every 20th a PGD digit (tensor payload) from one of 2 attackers.

    The value has no ``ts``; :func:`with_ts` adds one.
    """
    if i % ADVERSARIAL_EVERY == ADVERSARIAL_EVERY - 1:
        k = i // ADVERSARIAL_EVERY
        image = artifacts.adversarial[k % len(artifacts.adversarial)]
        return demo_event(
            f"{prefix}{i}", image, as_tensor=True, source=ATTACKERS[k % len(ATTACKERS)]
        )
    clean = artifacts.data.test_x
    return demo_event(
        f"{prefix}{i}", clean[i % len(clean)], as_tensor=i % 2 == 0, source=USERS[i % len(USERS)]
    )


def rfc3339(epoch_seconds: float) -> str:
    """``2026-01-02T03:04:05.678901+00:00``."""
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat()


def with_ts(event: bytes, epoch_seconds: float) -> bytes:
    """The event with a ``ts`` field (RFC 3339 with offset) appended."""
    return event[:-1] + b',"ts":"' + rfc3339(epoch_seconds).encode() + b'"}'


# -- broker helpers --------------------------------------------------------------------


async def create_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Create single-partition topics (one worker reads one partition in order)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        await admin.close()


async def fill_topic(bootstrap: str, artifacts: Artifacts, events: int) -> tuple[float, float]:
    """Produce the pre-filled topic; return (seconds, mean value bytes)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    size = 0
    started = time.perf_counter()
    try:
        for i in range(events):
            value = with_ts(traffic_event(artifacts, "fill-", i), time.time())
            size += len(value)
            await producer.send(EVENTS_TOPIC, value)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started, size / events


async def bare_consume(bootstrap: str, events: int) -> tuple[float, float]:
    """Read and ``orjson.loads`` the whole topic once; return (from the first fetch,
    from the first record) seconds to the N-th record."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partition = TopicPartition(EVENTS_TOPIC, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        count = 0
        started = time.perf_counter()
        first = 0.0
        while count < events:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                if not first:
                    first = time.perf_counter()
                for record in records:
                    orjson.loads(record.value or b"")
                count += sum(len(records) for records in batches.values())
        ended = time.perf_counter()
    finally:
        # Stop at once: an idle consumer busy-polls this broker.
        await consumer.stop()
    return ended - started, ended - first


@dataclass(frozen=True)
class Seen:
    received: float
    """time.time() when this process got the record."""
    created: float
    """The record's timestamp (CreateTime, set by the worker's producer), epoch seconds."""


class DecisionWatcher:
    """Reads a decisions topic from the beginning, noting when each decision arrived.

    It polls for at most :data:`POLL_MS` and, after an empty poll, pauses its partition
    and sleeps :data:`IDLE_SLEEP_S`: the local broker answers empty fetches at once, and
    an unpaused idle consumer would spin a core that the worker needs.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.partition = TopicPartition(topic, 0)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        self.seen: dict[str, Seen] = {}
        self.duplicates = 0
        self.source_decisions = 0
        self._counts: Counter[str] = Counter()

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign([self.partition])
        await self.consumer.seek_to_beginning(self.partition)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def wait_for(self, prefix: str, count: int, timeout_s: float) -> int:
        """Poll until ``count`` request decisions whose event id starts with ``prefix``
        have arrived, or ``timeout_s`` passed; return how many did."""
        deadline = time.monotonic() + timeout_s
        while self._counts[prefix] < count and time.monotonic() < deadline:
            batches = await self.consumer.getmany(timeout_ms=POLL_MS)
            now = time.time()
            if not batches:
                self.consumer.pause(self.partition)
                await asyncio.sleep(IDLE_SLEEP_S)
                self.consumer.resume(self.partition)
                continue
            for records in batches.values():
                for record in records:
                    self._note(record.value or b"", record.timestamp / 1000, now)
        return self._counts[prefix]

    def _note(self, value: bytes, created: float, now: float) -> None:
        decision = orjson.loads(value)
        if decision.get("scope") != "request":
            self.source_decisions += 1
            return
        event_id = decision["event_id"]
        if event_id in self.seen:
            self.duplicates += 1
            return
        self.seen[event_id] = Seen(now, created)
        self._counts[event_id.rsplit("-", 1)[0] + "-"] += 1


# -- the worker ------------------------------------------------------------------------


def write_worker_config(path: Path, detector: Path, tag: str, max_events: int, wait: int) -> None:
    """A worker config with topics of its own (``tag``), reading the events topic and
    this run's latency topic."""
    path.write_text(
        "# Written by benchmarks.worker_throughput.\n"
        "topics:\n"
        f"  decisions: bench-decisions-{tag}\n"
        f"  dead_letter: bench-dead-letter-{tag}\n"
        f"  detections: bench-detections-{tag}\n"
        f"  source_flags: bench-source-flags-{tag}\n"
        f"batching: {{max_events: {max_events}, max_wait_ms: {wait}}}\n"
        "quarantine: {limit: 20, window_seconds: 60, ttl_seconds: 900}\n"
        "models:\n"
        f"  - id: digits\n    detector: {detector}\n"
        f"    topics: [{EVENTS_TOPIC}, bench-latency-{tag}]\n"
        "    policy: enforce\n"
    )
    load_config(path)  # fail here, not in the worker, if the config is wrong


class Worker:
    """``python -m monitor worker`` as a subprocess, as ``advmon demo`` runs it."""

    def __init__(
        self, config: Path, bootstrap: str, app_id: str, log: Path, wrapper: Path | None = None
    ) -> None:
        self.web_port = free_loopback_port()
        self.log = log
        self.metrics_error = ""
        env = {
            **os.environ,
            "ADVMON_KAFKA__BOOTSTRAP": bootstrap,
            "ADVMON_WORKER__APP_ID": app_id,
            "ADVMON_SCORING__DEVICE": "cpu",
        }
        entry = [str(wrapper)] if wrapper else ["-m", "monitor"]
        command = [sys.executable, *entry, "worker", "--config", str(config)]
        command += ["--web-port", str(self.web_port), "-l", "warn"]
        with log.open("ab") as out:
            # In the scratch folder: Faust writes its data dir ({app id}-data) there.
            self.process = subprocess.Popen(
                command,
                cwd=log.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def _get(self, path: str) -> bytes | None:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body if response.status == 200 else None
        except OSError:
            return None

    async def wait_healthy(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.process.returncode}):\n{self.tail()}")
            if await asyncio.to_thread(self._get, "/healthz") is not None:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the worker was not healthy in time:\n{self.tail()}")

    async def metrics(self) -> WorkerMetrics:
        """The worker's histograms; empty ones (and :attr:`metrics_error` set) when
        ``/metrics`` does not answer 200."""
        body = await asyncio.to_thread(self._get, "/metrics")
        if body is None:
            error = [line for line in self.tail(200).splitlines() if "Error" in line]
            self.metrics_error = error[-1].strip() if error else "no answer"
            return EMPTY_METRICS
        return parse_metrics(body.decode())

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "<empty log>"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def parse_metrics(text: str) -> WorkerMetrics:
    """The three histograms the report uses, summed over their labels."""
    found: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (
            "advmon_scoring_seconds",
            "advmon_batch_size_events",
            "advmon_event_to_decision_seconds",
        ):
            continue
        buckets: dict[float, float] = {}
        total = count = 0.0
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
        found[family.name] = Histogram(tuple(sorted(buckets.items())), total, count)
    return WorkerMetrics(
        found.get("advmon_scoring_seconds", EMPTY_HISTOGRAM),
        found.get("advmon_batch_size_events", EMPTY_HISTOGRAM),
        found.get("advmon_event_to_decision_seconds", EMPTY_HISTOGRAM),
    )


async def offer_load(
    bootstrap: str, topic: str, artifacts: Artifacts, prefix: str, rate: float, seconds: float
) -> dict[str, float]:
    """Send events at ``rate``/s for ``seconds``, each with its send time in ``ts``;
    return the send time (epoch seconds) of each event id."""
    total = max(1, round(rate * seconds))
    bodies = [traffic_event(artifacts, prefix, i) for i in range(total)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: dict[str, float] = {}
    try:
        started = time.monotonic()
        i = 0
        while i < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while i < due:
                now = time.time()
                await producer.send(topic, with_ts(bodies[i], now))
                sent[f"{prefix}{i}"] = now
                i += 1
            await asyncio.sleep(max(0.0005, started + i / rate - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def run_worker(
    bootstrap: str,
    artifacts: Artifacts,
    workdir: Path,
    plan: Plan,
    max_events: int,
    max_wait_ms: int,
    *,
    events: int | None = None,
    latency: bool = True,
    profile_out: Path | None = None,
    variant: str = "",
    experiment: bool = False,
    broker_pid: int | None = None,
) -> WorkerResult:
    """Start a worker on the pre-filled topic, time it to the ``events``-th decision
    (default: the whole topic), then offer half that rate for the latency phase.

    ``variant`` names the run; with ``experiment`` the worker runs through
    :data:`EXPERIMENT_WRAPPER` instead of ``python -m monitor``.
    """
    events = events or plan.events
    tag = f"{max_events}-{max_wait_ms}" + ("-profile" if profile_out else "")
    tag += "-" + "".join(c if c.isalnum() else "-" for c in variant) if variant else ""
    wrapper = None
    if experiment:
        wrapper = workdir / "experiment_worker.py"
        wrapper.write_text(EXPERIMENT_WRAPPER)
    decisions, latency_topic = f"bench-decisions-{tag}", f"bench-latency-{tag}"
    await create_topics(bootstrap, [decisions, latency_topic])
    config = workdir / f"worker-{tag}.yaml"
    write_worker_config(config, artifacts.detector_path, tag, max_events, max_wait_ms)
    watcher = DecisionWatcher(bootstrap, decisions)
    await watcher.start()
    launched = time.time()
    app_id = f"advmon-bench-{tag}-{os.getpid()}"
    worker = Worker(config, bootstrap, app_id, workdir / f"{tag}.log", wrapper)
    spy: subprocess.Popen[bytes] | None = None
    try:
        await worker.wait_healthy()
        startup = time.time() - launched
        if profile_out is not None:
            spy = _start_py_spy(worker.pid, profile_out)
        spy_started = time.perf_counter()
        meter = CpuMeter(worker.pid, broker_pid)
        got = await watcher.wait_for("fill-", events, DRAIN_TIMEOUT_S + events / 200)
        cpu = meter.read()
        if got < events:
            raise RuntimeError(f"only {got} of {events} decisions arrived:\n{worker.tail()}")
        profile_seconds = 0.0
        if spy is not None:
            _stop_py_spy(spy)
            spy = None
            profile_seconds = time.perf_counter() - spy_started
        fill = [s for e, s in watcher.seen.items() if e.startswith("fill-")][:events]
        received = [s.received for s in fill]
        created = [s.created for s in fill]
        after_fill = await worker.metrics()
        result = WorkerResult(
            variant=variant,
            experiment=experiment,
            max_events=max_events,
            max_wait_ms=max_wait_ms,
            events=events,
            startup_seconds=startup,
            launch_to_first_seconds=min(received) - launched,
            received_seconds=max(received) - min(received),
            created_seconds=max(created) - min(created),
            duplicates=watcher.duplicates,
            source_decisions=watcher.source_decisions,
            metrics=after_fill,
            cpu=cpu,
            profile_seconds=profile_seconds,
        )
        if not latency:
            return replace(result, metrics_error=worker.metrics_error)
        rate = result.events_per_second / 2
        prefix = f"lat-{tag}-"
        _progress(f"  latency at {rate:,.0f} events/s for {plan.latency_seconds:.0f} s")
        meter.restart()
        producing = asyncio.create_task(
            offer_load(bootstrap, latency_topic, artifacts, prefix, rate, plan.latency_seconds)
        )
        expected = max(1, round(rate * plan.latency_seconds))
        await watcher.wait_for(prefix, expected, plan.latency_seconds + DRAIN_TIMEOUT_S)
        sent = await producing
        cpu = meter.read()
        metrics = await worker.metrics() - after_fill
        meter.restart()
        await asyncio.sleep(IDLE_SECONDS)
        idle = meter.read()
        seen = {e: watcher.seen[e] for e in sent if e in watcher.seen}
        return replace(
            result,
            idle=idle,
            metrics_error=worker.metrics_error,
            latency=LatencyResult(
                rate=rate,
                seconds=plan.latency_seconds,
                sent=len(sent),
                received=len(seen),
                latencies=tuple(s.received - sent[e] for e, s in seen.items()),
                created_latencies=tuple(s.created - sent[e] for e, s in seen.items()),
                metrics=metrics,
                cpu=cpu,
            ),
        )
    finally:
        if spy is not None:
            _stop_py_spy(spy)
        await watcher.stop()
        worker.stop()


# -- py-spy ----------------------------------------------------------------------------


def _py_spy() -> Path | None:
    found = Path(sys.executable).with_name("py-spy")
    return found if found.exists() else None


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    binary = _py_spy()
    assert binary is not None
    command = [str(binary), "record", "--pid", str(pid), "--rate", str(PY_SPY_RATE_HZ)]
    command += ["--format", "raw", "--threads", "--nonblocking", "--gil", "--output", str(out)]
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


#: Inclusive profile rows: (label, substrings any of which on the stack counts). py-spy
#: names frames ``Class.method (package/module.py:line)``.
PROFILE_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("`ScoringStage.process`: a batch's work in the event loop", ("ScoringStage.process (",)),
    ("  `ScoringPipeline.decode` (JSON, pydantic, numpy input)", ("ScoringPipeline.decode (",)),
    ("  `ScoringPipeline.decide` (decision models, JSON)", ("ScoringPipeline.decide (",)),
    ("  `AdvmonApp.publish` (sending every output record)", ("AdvmonApp.publish (",)),
    ("`Detector.score` (scoring thread; ONNX Runtime's threads unseen)", ("Detector.score (",)),
    ("aiokafka producer: building and sending produce requests", ("aiokafka/producer/",)),
    ("aiokafka consumer: fetch requests and records", ("aiokafka/consumer/",)),
    ("socket writes (`_SelectorSocketTransport.write`)", ("_SelectorSocketTransport.write (",)),
    ("Faust streams and agents (`take_events`, acks)", ("faust/streams.py", "faust/agents/")),
    ("log records created (`Logger._log`)", ("Logger._log (",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("waiting in epoll (`EpollSelector.select`)", ("EpollSelector.select (",)),
)


def parse_py_spy(path: Path) -> tuple[int, list[ProfileRow], list[ProfileRow], list[ProfileRow]]:
    """Samples, per-thread shares, inclusive part shares and top self functions of a
    ``py-spy record --format raw --threads`` file."""
    threads: Counter[str] = Counter()
    consumer_threads: set[str] = set()
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        name = frames[0].partition(": ")[2] or frames[0]
        threads[name] += count
        if "mode/threads.py" in stack:
            consumer_threads.add(name)
        for label, needles in PROFILE_PARTS:
            if any(n in stack for n in needles):
                parts[label] += count
        if len(frames) > 1:
            leaves[_short_frame(frames[-1])] += count
    if not total:
        return 0, [], [], []
    return (
        total,
        [
            ProfileRow(_thread_label(name, name in consumer_threads), n / total)
            for name, n in threads.most_common()
        ],
        [ProfileRow(label, parts[label] / total) for label, _ in PROFILE_PARTS],
        [ProfileRow(label, n / total) for label, n in leaves.most_common(12)],
    )


def _thread_label(name: str, runs_mode_thread: bool) -> str:
    """A thread's name → what the thread does."""
    if name == "MainThread":
        return "main thread: Faust's event loop (agents, producer, web)"
    if name.startswith("advmon-score"):
        return "advmon-score: the scoring executor thread"
    if runs_mode_thread:
        return f"{name}: Faust's consumer thread (aiokafka consumer, its own loop)"
    return name


def _short_frame(frame: str) -> str:
    """``Class.method (pkg/mod.py:12)`` → ``Class.method (pkg/mod.py)``."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rstrip(')').rsplit(':', 1)[0]})"


# -- stages in-process -----------------------------------------------------------------


def stage_costs(
    artifacts: Artifacts, batch_size: int, rounds: int
) -> tuple[list[StageCost], float]:
    """Per-event cost of decode, stack + score and decide on batches of the benchmark's
    traffic, in this process without Kafka or Faust; and the flagged share."""
    config = load_config(_stage_config(artifacts))
    model = config.models[0]
    detector_config = DetectorConfig.load(model.detector)
    pipeline = ScoringPipeline(
        config,
        {model.id: ModelDetector(model, detector_config, file_sha256(model.detector))},
    )
    detector = Detector(detector_config, load_model(detector_config.model_path), device="cpu")
    events = 20 * batch_size
    messages = [
        InputMessage(EVENTS_TOPIC, 0, i, None, with_ts(traffic_event(artifacts, "s-", i), 0.0))
        for i in range(events)
    ]
    chunks = [messages[i : i + batch_size] for i in range(0, events, batch_size)]
    timings: dict[str, list[float]] = {"decode": [], "score": [], "decide": [], "loads": []}
    flagged = 0
    for chunk in chunks[:4]:  # warm-up: pydantic, numpy and ONNX Runtime first calls
        for batch in pipeline.decode(chunk).batches:
            pipeline.decide(batch, detector.score(batch.stacked()))
    # CPU time, not wall time, so that other jobs on the machine do not inflate it: of
    # this thread for the Python stages, of the process (ONNX Runtime's threads too) for
    # scoring.
    for _ in range(rounds):
        started = time.thread_time()
        for chunk in chunks:
            for message in chunk:
                orjson.loads(message.value)
        timings["loads"].append(time.thread_time() - started)
        decode = score = decide = 0.0
        flagged = 0
        for chunk in chunks:
            t0 = time.thread_time()
            decoded = pipeline.decode(chunk)
            decode += time.thread_time() - t0
            t1 = time.process_time()
            verdicts = [detector.score(batch.stacked()) for batch in decoded.batches]
            score += time.process_time() - t1
            t2 = time.thread_time()
            for batch, verdict in zip(decoded.batches, verdicts, strict=True):
                pipeline.decide(batch, verdict)
                flagged += int(verdict.flagged.sum())
            decide += time.thread_time() - t2
        timings["decode"].append(decode)
        timings["score"].append(score)
        timings["decide"].append(decide)
    per_event = {k: statistics.median(v) / events * 1e6 for k, v in timings.items()}
    rows = [
        StageCost("orjson.loads alone (what the bare consumer does)", per_event["loads"]),
        StageCost("pipeline.decode (orjson + pydantic + numpy input)", per_event["decode"]),
        StageCost("np.stack + Detector.score (fused ONNX graph)", per_event["score"]),
        StageCost("pipeline.decide (Decision/Detection/SourceFlag + JSON)", per_event["decide"]),
    ]
    return rows, flagged / events


def _stage_config(artifacts: Artifacts) -> Path:
    path = artifacts.detector_path.with_name("stages.yaml")
    write_worker_config(path, artifacts.detector_path, "stages", 64, 20)
    return path


# -- machine ---------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    """The short commit, and which code folders had uncommitted changes."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "monitor", "detectors", "schemas"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = sorted({line[3:] for line in dirty.stdout.splitlines() if line[3:]})
    commit = found.stdout.strip()
    return f"{commit} + uncommitted changes to {', '.join(changed)}" if changed else commit


def describe_machine(load_before: tuple[float, float, float]) -> Machine:
    packages = (
        *("advmon", "faust-streaming", "aiokafka", "noida-db", "onnxruntime-gpu"),
        *("onnxruntime", "orjson", "pydantic", "numpy", "py-spy"),
    )
    versions = [("Python", platform.python_version())]
    versions += [(p, v) for p in packages if (v := _version(p)) != "not installed"]
    return Machine(
        cpu_model=_cpu_model(),
        logical_cpus=os.cpu_count() or 1,
        versions=tuple(versions),
        commit=_commit(),
        load_before=load_before,
        load_after=os.getloadavg(),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


# -- report ----------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> str:
    rules = [":--" if a == "l" else "--:" for a in align]
    lines = [header, rules, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    if math.isinf(seconds):
        return "> 30 000"
    value = seconds * 1e3
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _num(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.1f}"


def _cores(cpu: CpuSeconds) -> list[str]:
    return [
        f"{cpu.cores(cpu.worker):.2f}",
        f"{cpu.cores(cpu.broker):.2f}",
        f"{cpu.cores(cpu.bench):.2f}",
        f"{cpu.cores(cpu.others):.2f}",
        f"{cpu.cores(cpu.machine):.2f}",
    ]


def _ratio(events_per_second: float, baseline: BaselineResult) -> str:
    return f"{events_per_second / baseline.events_per_second:.3f}"


@dataclass(frozen=True)
class ABSummary:
    """Medians of the A/B runs: the shipped worker against :data:`EXPERIMENT`."""

    max_events: int
    max_wait_ms: int
    shipped_events_per_second: float
    tried_events_per_second: float
    shipped_cpu_per_event: float
    tried_cpu_per_event: float


def _ab_summary(report: Report) -> ABSummary | None:
    shipped = [w for w in report.experiments if not w.experiment]
    tried = [w for w in report.experiments if w.experiment]
    if not shipped or not tried:
        return None
    return ABSummary(
        shipped[0].max_events,
        shipped[0].max_wait_ms,
        statistics.median(w.events_per_second for w in shipped),
        statistics.median(w.events_per_second for w in tried),
        statistics.median(w.cpu_per_event for w in shipped),
        statistics.median(w.cpu_per_event for w in tried),
    )


def _throughput_spread(report: Report) -> str:
    """A sentence comparing the batching settings' events/s with the A/B runs' spread."""
    rates = ", ".join(f"{w.label} {w.events_per_second:,.0f}" for w in report.workers)
    text = f"Throughput by batching setting: {rates} events/s"
    shipped = [w.events_per_second for w in report.experiments if not w.experiment]
    if len(shipped) > 1:
        text += (
            f"; for scale, the shipped worker's {len(shipped)} A/B runs with one setting "
            f"spread by {max(shipped) / min(shipped) - 1:.0%}"
        )
    return text + ". Per-event costs dominate, so batching moves throughput little."


def _share(profile: ProfileResult | None, label_start: str) -> float:
    if profile is None:
        return math.nan
    for row in (*profile.parts, *profile.threads):
        if row.label.startswith(label_start):
            return row.share
    return 0.0


def render_markdown(report: Report) -> str:
    """The markdown page for ``report``."""
    plan, baseline, machine = report.plan, report.baseline, report.machine
    assert baseline is not None
    assert machine is not None
    workers = report.workers
    flags = (" --quick" if plan == QUICK_PLAN else "") + (
        " --broker embedded" if report.broker == "embedded" else ""
    )
    out: list[str] = []
    add = out.append
    add("# Benchmarks: the stream worker end to end\n")
    add(
        f"Generated by `{COMMAND}{flags}`; the whole page is rewritten on each run, so edit "
        "`benchmarks/worker_throughput.py` rather than this file. The scoring graph on its "
        "own is in [benchmarks.md](benchmarks.md).\n"
    )

    add("## Summary\n")
    rows = [
        [
            "bare aiokafka consumer + `orjson.loads`",
            "–",
            f"{baseline.events_per_second:,.0f}",
            "1",
            f"{baseline.cpu_per_event * 1e6:,.0f}",
            "–",
            "–",
        ]
    ]
    for w in workers:
        lat = w.latency
        rows.append(
            [
                "`advmon worker`",
                w.label,
                f"{w.events_per_second:,.0f}",
                f"**{_ratio(w.events_per_second, baseline)}**",
                f"{w.cpu_per_event * 1e6:,.0f}",
                _ms(lat.quantile(0.5)) if lat else "–",
                _ms(lat.quantile(0.99)) if lat else "–",
            ]
        )
    ab = _ab_summary(report)
    if ab is not None:
        for label, value, cpu in (
            (
                "A/B: `advmon worker` as shipped",
                ab.shipped_events_per_second,
                ab.shipped_cpu_per_event,
            ),
            (
                f"A/B: experiment `{EXPERIMENT}` (not the shipped code)",
                ab.tried_events_per_second,
                ab.tried_cpu_per_event,
            ),
        ):
            rows.append(
                [
                    f"{label}, median of {plan.experiment_rounds}",
                    f"{ab.max_events}/{ab.max_wait_ms}",
                    f"{value:,.0f}",
                    _ratio(value, baseline),
                    f"{cpu * 1e6:,.0f}",
                    "–",
                    "–",
                ]
            )
    add(
        _table(
            [
                "",
                "batching max_events / max_wait_ms",
                "events/s",
                "÷ bare consumer",
                "CPU µs per event (consumer's process)",
                "latency p50, ms",
                "latency p99, ms",
            ],
            rows,
            "llrrrrr",
        )
        + "\n"
    )
    add(
        f"Target: worker ÷ bare consumer ≥ {TARGET_RATIO} with the demo model. Latency is "
        "event send → decision received, at an offered load of half the worker's measured "
        f"throughput. {plan.events:,} events, {machine.logical_cpus} CPUs shared by the "
        "broker, the worker and the clients (and, during this run, by other jobs: see "
        "*other processes* under [CPU per phase](#cpu-per-phase)).\n"
    )

    add("## What is measured\n")
    add(
        f"**Broker:** {report.broker_description}, on this machine. One "
        "single-partition topic pre-filled with "
        f"**{plan.events:,} demo digit events** (mean {report.event_bytes:,.0f} bytes each): "
        f"benign 8×8 digits from {len(USERS)} users, half as nested lists and half as base64 "
        f"tensor payloads, and every {ADVERSARIAL_EVERY}th event ({report.adversarial:,} in "
        f"all, 5 %) a PGD adversarial digit (L∞ ε={ATTACK_EPS}) as a tensor payload from one "
        f"of {len(ATTACKERS)} attacking sources. Every event carries `ts`. The detector is "
        "the demo's (`monitor.demo.model.train_mlp` → `mlp_to_onnx` → "
        "`monitor.offline.calibrate_file`, preset squeezers), on the CPU execution provider, "
        "policy `enforce` (so flagged events also produce detections and source flags, and "
        "the attackers get quarantined).\n"
    )
    add(
        "1. **Bare consumer** — an `aiokafka.AIOKafkaConsumer` (defaults, no group) "
        "assigned the partition seeks to the beginning and `getmany`s until it has "
        f"`orjson.loads`-decoded all {plan.events:,} values; events/s = N ÷ (first fetch "
        f"request → N-th record decoded), median of {plan.baseline_repeats} run(s). The most "
        "a Python consumer of this topic can do here: no validation, no scoring, no output."
    )
    add(
        "2. **`advmon worker`** — `python -m monitor worker --config … --web-port … -l warn` "
        "as a subprocess (env `ADVMON_KAFKA__BOOTSTRAP`, a fresh `ADVMON_WORKER__APP_ID` "
        "per run so that it reads the topic from the beginning, "
        "`ADVMON_SCORING__DEVICE=cpu`), with decisions, detections, dead-letter and "
        "source-flag topics of its own. A separate aiokafka consumer in this process reads "
        "the decisions topic; **events/s = (N − 1) ÷ (receive time of the first request "
        "decision → receive time of the N-th)**, a receive time being `time.time()` when "
        "`getmany` returned the record: the decision was written and acknowledged "
        "(acks=all) before it could be read. Worker start-up (interpreter, Faust, ONNX "
        "session, group join) is excluded and shown on its own. The same interval from "
        "the decisions' record timestamps (CreateTime, set by the worker's producer) is "
        "shown as a cross-check. Source-scoped (quarantine) decisions are not counted."
    )
    add(
        "3. **Latency** — right after step 2, the same worker is offered **half the "
        f"throughput it just measured** for {plan.latency_seconds:.0f} s, on a second "
        "topic it also reads (empty until then): events of the same mix, sent one by one "
        "at a steady rate by an `AIOKafkaProducer` (acks=all, linger 0), each with `ts` = "
        "its send time (RFC 3339, `+00:00`). Latency = decision receive time − event send "
        "time, for every event; decision record timestamp − send time (without the broker "
        "acknowledgement and the fetch) is shown too. The decisions consumer polls for at "
        f"most {POLL_MS} ms and, after an empty poll, pauses its partition for "
        f"{IDLE_SLEEP_S * 1e3:.0f} ms (see the broker caveat), so a receive time is late "
        f"by at most {POLL_MS + IDLE_SLEEP_S * 1e3:.0f} ms. Then {IDLE_SECONDS:.0f} s "
        "without traffic, to see what an idle worker costs."
    )
    add(
        "4. **Where the time goes** — the worker's `/metrics` histograms "
        "(`advmon_scoring_seconds`, `advmon_batch_size_events`, "
        "`advmon_event_to_decision_seconds`) after each phase; CPU seconds of the worker, "
        "the broker, this process and the whole machine per phase; the per-event cost of "
        f"the pipeline's stages in-process on batches of {report.stage_batch} "
        "(`ScoringPipeline.decode`, `Detector.score`, `ScoringPipeline.decide`, no Kafka, "
        f"no Faust); and a py-spy profile (`--gil`, {PY_SPY_RATE_HZ} Hz, all threads) of "
        f"another worker run on the topic's first {plan.side_events:,} events."
    )
    if plan.experiment_rounds:
        add(
            f"5. **Experiment `{EXPERIMENT}`** — {plan.experiment_rounds} round(s) of two "
            f"more worker runs, each deciding the topic's first {plan.side_events:,} events "
            "(throughput only, first batching setting): the shipped worker, then the worker "
            "started through a wrapper script that replaces `AdvmonApp.publish` by one handing "
            "each record straight to Faust's producer "
            "(`await (await app.maybe_start_producer()).send(...)` per record, then "
            "`asyncio.gather` of the acknowledgements) instead of `Topic.send`. Everything "
            "else is the shipped worker; alternating the two evens out load from elsewhere. "
            "It measures what that one change would buy.\n"
        )
    add(
        "**Caveats.** The broker shares the machine's cores with the worker and with this "
        "process, so every figure is for *worker + broker + clients on "
        f"{machine.logical_cpus} cores*; a worker next to a real Kafka cluster has its "
        "cores to itself. "
        + (
            "This broker answers an empty fetch at once instead of holding it for "
            "`fetch.max.wait.ms`, so an idle consumer busy-polls and burns most of a core, "
            "the worker's own consumer included (see the *idle* rows below): the worker "
            "figures, latency above all, are pessimistic for a deployment on Apache Kafka. "
            if report.broker == "embedded"
            else "Apache Kafka holds an empty fetch for `fetch.max.wait.ms` (500 ms by "
            "default), so an idle consumer costs next to nothing here, as on a cluster. "
        )
        + "Other jobs may run on the same machine: their CPU is shown per phase.\n"
    )

    add("## Command and machine\n")
    add(f"```\n{COMMAND}{flags}\n```\n")
    rows = [
        ["CPU", f"{machine.cpu_model}, {machine.logical_cpus} logical CPUs, no GPU"],
        ["execution provider", "CPUExecutionProvider (`ADVMON_SCORING__DEVICE=cpu`)"],
        ["ONNX Runtime intra-op threads", "the worker's default (unset: ONNX Runtime chooses)"],
        *[[name, version] for name, version in machine.versions],
        ["commit", machine.commit],
        [
            "load average (1, 5, 15 min)",
            "before "
            + ", ".join(f"{x:.2f}" for x in machine.load_before)
            + "; after "
            + ", ".join(f"{x:.2f}" for x in machine.load_after),
        ],
        ["date", machine.date],
    ]
    add(_table(["", ""], rows, "ll") + "\n")

    add("## Results\n")
    add("### Throughput\n")
    rows = [
        [
            "bare consumer",
            f"{baseline.seconds:.3f}",
            f"{baseline.events_per_second:,.0f}",
            f"{baseline.events / baseline.first_to_last_seconds:,.0f}",
            f"{baseline.cpu_per_event * 1e6:,.1f} / {baseline.broker_cpu_per_event * 1e6:,.1f}",
            "–",
            "–",
            "–",
            "–",
            "–",
            "–",
        ]
    ]
    for w in [*workers, *report.experiments]:
        rows.append(
            [
                f"worker {w.label}" + (f", {w.events:,} events" if w.events != plan.events else ""),
                f"{w.received_seconds:.2f}",
                f"{w.events_per_second:,.0f}",
                f"{w.created_events_per_second:,.0f}",
                f"{w.cpu_per_event * 1e6:,.0f} / {w.broker_cpu_per_event * 1e6:,.0f}",
                f"{w.startup_seconds:.1f} / {w.launch_to_first_seconds:.1f}",
                _num(w.metrics.batch_size.mean),
                _ms(w.metrics.scoring.mean),
                f"{w.metrics.scoring.total / w.received_seconds:.0%}"
                if w.metrics.scoring.count
                else "–",
                str(w.duplicates),
                str(w.source_decisions),
            ]
        )
    add(
        _table(
            [
                "",
                "seconds",
                "events/s",
                "events/s, other clock",
                "CPU µs per event: client or worker / broker",
                "start-up: healthy / first decision, s",
                "mean batch",
                "mean scoring per batch, ms",
                "scoring ÷ wall",
                "duplicate decisions",
                "quarantine decisions",
            ],
            rows,
            "lrrrrrrrrrr",
        )
        + "\n"
    )
    add(
        "*CPU µs per event*: CPU seconds of the consumer's or the worker's process, and of "
        "the broker, over the measured phase ÷ events; unlike events/s, hardly moved by "
        "other jobs on the machine. *seconds*: bare consumer, first fetch → N-th record "
        "(median; runs: "
        + ", ".join(f"{s:.3f}" for s in baseline.all_seconds)
        + "); worker, first → N-th decision received. *Other clock*: bare consumer from "
        "its first record instead of its first fetch; worker from the decisions' record "
        "timestamps. *Mean batch* and *scoring* come from the worker's "
        "`advmon_batch_size_events` and `advmon_scoring_seconds` (time from handing a "
        "batch to the scoring thread to its verdict) over the run; *scoring ÷ wall* is "
        f"their sum over the measured interval. Producing the {plan.events:,} events took "
        f"{report.produce_seconds:.1f} s.\n"
    )
    errors = sorted({w.metrics_error for w in [*workers, *report.experiments] if w.metrics_error})
    if errors:
        add(
            "**The worker's `/metrics` page did not answer 200 in this run**, so the columns "
            "from its histograms are empty. The worker logged: "
            + "; ".join(f"`{e}`" for e in errors)
            + " (`monitor/worker/agents.py` passes `prometheus_client.CONTENT_TYPE_LATEST`, which "
            "includes `charset=utf-8`, as the content type of `web.bytes`, which aiohttp "
            "refuses).\n"
        )
    if report.experiment_note:
        add(report.experiment_note + "\n")

    add("### Latency at half the measured throughput\n")
    rows = []
    for w in workers:
        lat = w.latency
        if lat is None:
            continue
        rows.append(
            [
                w.label,
                f"{lat.rate:,.0f}",
                f"{lat.received:,} / {lat.sent:,}",
                _ms(lat.quantile(0.5)),
                _ms(lat.quantile(0.99)),
                _ms(max(lat.latencies, default=math.nan)),
                f"{_ms(lat.quantile(0.5, True))} / {_ms(lat.quantile(0.99, True))}",
                f"{_ms(lat.metrics.event_to_decision.quantile(0.5))} / "
                f"{_ms(lat.metrics.event_to_decision.quantile(0.99))}",
                _num(lat.metrics.batch_size.mean),
                _ms(lat.metrics.scoring.mean),
            ]
        )
    add(
        _table(
            [
                "batching",
                "offered, events/s",
                "decisions / events sent",
                "p50, ms",
                "p99, ms",
                "max, ms",
                "record timestamp − send: p50 / p99, ms",
                "worker histogram p50 / p99 (bucket bound), ms",
                "mean batch",
                "mean scoring per batch, ms",
            ],
            rows,
            "lrrrrrrrrr",
        )
        + "\n"
    )
    add(
        "The worker's own `advmon_event_to_decision_seconds` runs from the event's `ts` "
        "to the acknowledgement of its outputs; its quantiles are the upper bounds of the "
        "histogram buckets holding them.\n"
    )

    add("### CPU per phase\n")
    rows = [["bare consumer", f"{baseline.cpu.wall:.2f}", *_cores(baseline.cpu)]]
    for w in [*workers, *report.experiments]:
        rows.append([f"worker {w.label}: throughput", f"{w.cpu.wall:.2f}", *_cores(w.cpu)])
        if w.latency is not None:
            rows.append(
                [f"worker {w.label}: latency", f"{w.latency.cpu.wall:.2f}", *_cores(w.latency.cpu)]
            )
        if w.idle is not None:
            rows.append(
                [f"worker {w.label}: idle, no traffic", f"{w.idle.wall:.2f}", *_cores(w.idle)]
            )
    add(
        _table(
            [
                "phase",
                "wall, s",
                "worker, cores",
                "broker, cores",
                "this process",
                "other processes",
                "machine busy",
            ],
            rows,
            "lrrrrrr",
        )
        + "\n"
    )
    add(
        "CPU seconds ÷ wall seconds: `/proc/PID/stat` for the worker and the broker, "
        "`getrusage` for this process (the bare consumer, the producer, the decisions "
        "consumer), `/proc/stat` for the whole machine (*machine busy*, all CPUs); *other "
        "processes* is the difference — other jobs on the machine. Throughput phases run "
        "from the worker answering `/healthz` to its N-th decision (the worker may have "
        f"started deciding just before). The machine has {machine.logical_cpus} cores.\n"
    )

    add(f"### Pipeline stages in-process (batches of {report.stage_batch})\n")
    rows = [
        [s.stage, f"{s.microseconds_per_event:.1f}", f"{1e6 / s.microseconds_per_event:,.0f}"]
        for s in report.stages
    ]
    compute = sum(s.microseconds_per_event for s in report.stages[1:])
    if compute:
        rows.append(["decode + score + decide", f"**{compute:.1f}**", f"**{1e6 / compute:,.0f}**"])
    add(_table(["stage", "µs per event", "events/s on one core"], rows, "lrr") + "\n")
    add(
        f"Median of {plan.stage_rounds} run(s) over {20 * report.stage_batch:,} events of "
        "the benchmark's mix, on one thread of this process, without Kafka, Faust or "
        "publishing: what the worker's event loop must spend per event before any I/O. "
        "CPU time (`time.thread_time`; `time.process_time` for scoring, which includes "
        "ONNX Runtime's threads), so that other jobs on the machine do not inflate it. "
        f"{report.flagged_share:.1%} of these events were flagged (a flagged event adds a "
        "detection and a source flag to its decision).\n"
    )

    add("### Profile of the worker (py-spy)\n")
    profile = report.profile
    if profile is None:
        add((report.profile_note or "Not run.") + "\n")
    else:
        add(
            f"Batching {profile.max_events}/{profile.max_wait_ms}; py-spy recorded "
            f"{profile.seconds:.1f} s (the worker decided the pre-filled topic at "
            f"{profile.events_per_second:,.0f} events/s under it) and kept the "
            f"{profile.samples:,} samples in which a thread of the worker held the GIL: some "
            f"thread held it **{profile.gil_busy:.0%}** of the time. Shares below are of "
            "those samples, i.e. of the worker's Python work; time in ONNX Runtime, in "
            "system calls and waiting for the GIL is not in them.\n"
        )
        add(
            _table(
                ["thread", "share"], [[r.label, f"{r.share:.0%}"] for r in profile.threads], "lr"
            )
            + "\n"
        )
        add(
            _table(
                ["code on the stack (inclusive; rows overlap)", "share"],
                [[r.label, f"{r.share:.0%}"] for r in profile.parts],
                "lr",
            )
            + "\n"
        )
        add(
            _table(
                ["top functions by own samples", "share"],
                [[f"`{r.label}`", f"{r.share:.1%}"] for r in profile.leaves],
                "lr",
            )
            + "\n"
        )

    return "\n".join(out).rstrip() + "\n"


# -- driver ----------------------------------------------------------------------------


_STARTED = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


async def _run(
    plan: Plan, workdir: Path, bootstrap: str, artifacts: Artifacts, report: Report
) -> None:
    await create_topics(bootstrap, [EVENTS_TOPIC])
    _progress(f"filling {EVENTS_TOPIC} with {plan.events:,} events")
    report.produce_seconds, report.event_bytes = await fill_topic(bootstrap, artifacts, plan.events)
    broker_pid = report.broker_pid
    runs: list[tuple[float, float]] = []
    meter = CpuMeter(None, broker_pid)
    for _ in range(plan.baseline_repeats):
        runs.append(await bare_consume(bootstrap, plan.events))
    cpu = meter.read()
    seconds = statistics.median(r[0] for r in runs)
    report.baseline = BaselineResult(
        plan.events,
        seconds,
        statistics.median(r[1] for r in runs),
        tuple(r[0] for r in runs),
        cpu,
    )
    _progress(f"bare consumer: {report.baseline.events_per_second:,.0f} events/s")
    for max_events, max_wait_ms in plan.batchings:
        _progress(f"worker, batching {max_events}/{max_wait_ms}")
        result = await run_worker(
            bootstrap,
            artifacts,
            workdir,
            plan,
            max_events,
            max_wait_ms,
            broker_pid=report.broker_pid,
        )
        _progress(f"  {result.events_per_second:,.0f} events/s")
        report.workers.append(result)
    if plan.profile:
        await _profile(bootstrap, artifacts, workdir, plan, report)
    max_events, max_wait_ms = plan.batchings[0]
    for round_ in range(1, plan.experiment_rounds + 1):
        for experiment in (False, True):
            variant = f"{EXPERIMENT if experiment else 'shipped'} #{round_}"
            _progress(f"A/B {variant}, batching {max_events}/{max_wait_ms}")
            try:
                result = await run_worker(
                    bootstrap,
                    artifacts,
                    workdir,
                    plan,
                    max_events,
                    max_wait_ms,
                    events=plan.side_events,
                    latency=False,
                    variant=variant,
                    experiment=experiment,
                    broker_pid=report.broker_pid,
                )
            except RuntimeError as error:
                report.experiment_note = f"The A/B run {variant} failed: {error}"
                return
            _progress(f"  {result.events_per_second:,.0f} events/s")
            report.experiments.append(result)


async def _profile(
    bootstrap: str, artifacts: Artifacts, workdir: Path, plan: Plan, report: Report
) -> None:
    if _py_spy() is None:
        report.profile_note = (
            "py-spy is not installed (`.venv/bin/pip install py-spy` and run again)."
        )
        return
    max_events, max_wait_ms = plan.batchings[0]
    _progress(f"worker under py-spy, batching {max_events}/{max_wait_ms}")
    out = workdir / "py-spy.txt"
    result = await run_worker(
        bootstrap,
        artifacts,
        workdir,
        plan,
        max_events,
        max_wait_ms,
        events=plan.side_events,
        latency=False,
        profile_out=out,
        broker_pid=report.broker_pid,
    )
    if not out.exists():
        report.profile_note = "py-spy wrote no profile (is ptrace allowed here?)."
        return
    samples, threads, parts, leaves = parse_py_spy(out)
    report.profile = ProfileResult(
        max_events,
        max_wait_ms,
        samples,
        result.profile_seconds,
        result.events_per_second,
        tuple(threads),
        tuple(parts),
        tuple(leaves),
    )


def run_benchmark(plan: Plan, output: Path, broker_kind: str = "apache") -> str:
    """Run everything on ``broker_kind``, write the markdown page to ``output``, return it."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="advmon-stream-bench-") as tmp:
        workdir = Path(tmp)
        _progress("training the demo model and calibrating its detector")
        artifacts = build_artifacts(workdir)
        report = Report(
            plan=plan,
            event_bytes=0.0,
            adversarial=plan.events // ADVERSARIAL_EVERY,
            produce_seconds=0.0,
            broker=broker_kind,
        )
        _progress("timing the pipeline stages in-process")
        report.stages, report.flagged_share = stage_costs(
            artifacts, report.stage_batch, plan.stage_rounds
        )
        broker: BrokerProcess
        if broker_kind == "embedded":
            broker = LocalKafkaBroker(workdir / "kafka")
            report.broker_description = (
                "the embedded noida-db broker "
                "(`monitor.kafka.local_broker.LocalKafkaBroker`, the one "
                "`make demo` uses)"
            )
        else:
            broker = ApacheKafkaBroker(workdir / "kafka")
            report.broker_description = (
                f"Apache Kafka {broker.version}, one KRaft node (broker and controller) on "
                "loopback, settings in [kafka.md](kafka.md)"
            )
        _progress(f"starting {report.broker_description}")
        # The broker's start-up check runs its own event loop: start it outside ours.
        with broker as bootstrap:
            report.broker_pid = broker.pid
            asyncio.run(_run(plan, workdir, bootstrap, artifacts, report))
    report.machine = describe_machine(load_before)
    page = render_markdown(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    return page


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the page and writes it to ``--output``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.worker_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the markdown page (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--events", type=int, help="events in the pre-filled topic")
    parser.add_argument(
        "--broker",
        choices=("apache", "embedded"),
        default="apache",
        help="Apache Kafka from tests/kafka/pom.xml (default; `make kafka` fetches it) or "
        "the demo's embedded noida-db broker",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the py-spy run of the worker"
    )
    parser.add_argument(
        "--no-experiment", action="store_true", help=f"skip the {EXPERIMENT} experiment"
    )
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.events:
        plan = replace(plan, events=args.events, side_events=min(plan.side_events, args.events))
    if args.no_profile:
        plan = replace(plan, profile=False)
    if args.no_experiment:
        plan = replace(plan, experiment_rounds=0)
    started = time.perf_counter()
    page = run_benchmark(plan, args.output, args.broker)
    print(page)
    _progress(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
