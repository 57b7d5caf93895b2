"""How fast ``advmon worker`` turns a Kafka topic of inference events into decisions.

Run ``.venv/bin/python -m benchmarks.worker_throughput`` (about 4 minutes on 2 cores);
``--quick`` for a smoke run of about a minute, ``--output PATH`` to write the page
somewhere other than ``docs/benchmarks-stream.md``, ``--broker embedded`` to run on the
demo's noida-db broker instead of Apache Kafka (:class:`tests.kafka.ApacheKafkaBroker`,
whose jars ``make kafka`` fetches). On one broker and one pre-filled topic of demo digit
events, it measures:

1. **bare consumer**: events/s of a plain aiokafka consumer that reads the topic from
   the beginning to the end and JSON-decodes every value (``orjson.loads``);
2. **worker throughput**: events/s of ``advmon worker`` (a subprocess, exactly as
   deployed) on the same topic, from its first to its N-th request decision seen on the
   decisions topic, for each batching setting; worker start-up is excluded;
3. **latency**: event-to-decision p50/p99 at a fixed offered load of half the
   throughput measured in step 2, events carrying their send time in ``ts``;
4. **where the time goes**: the worker's own ``/metrics`` histograms, the CPU time of
   the worker, the broker and this process per phase, the per-event cost of the
   pipeline's stages in-process, and a py-spy profile of a third worker run when
   ``py-spy`` is installed (``.venv/bin/pip install py-spy``; ``--no-profile`` skips it).

Everything runs in a temporary folder; the figures go into a
:class:`benchmarks.stream_results.Report`, which :mod:`benchmarks.stream_report` renders
to ``--output``. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.machine import describe_machine
from benchmarks.page import command_line, write_page
from benchmarks.stream_report import render_markdown
from benchmarks.stream_results import (
    ADVERSARIAL_EVERY,
    ATTACKERS,
    EMPTY_HISTOGRAM,
    EMPTY_METRICS,
    FULL_PLAN,
    IDLE_SECONDS,
    IDLE_SLEEP_S,
    POLL_MS,
    PY_SPY_RATE_HZ,
    QUICK_PLAN,
    USERS,
    BaselineResult,
    CpuSeconds,
    Histogram,
    LatencyResult,
    Plan,
    ProfileResult,
    ProfileRow,
    Report,
    StageCost,
    WorkerMetrics,
    WorkerResult,
)
from detectors import Detector, DetectorConfig, file_sha256, load_model
from monitor.config import load_config
from monitor.demo.attacks import pgd
from monitor.demo.model import DigitsData, load_digits_data, mlp_to_onnx, train_mlp
from monitor.demo.run import ATTACK_EPS, demo_event
from monitor.kafka.local_broker import BrokerProcess, LocalKafkaBroker, free_loopback_port
from monitor.offline import calibrate_file
from monitor.worker.models import ModelDetector
from monitor.worker.records import InputMessage
from monitor.worker.stages.scoring import ScoringPipeline
from tests.kafka import ApacheKafkaBroker

__all__ = ["main", "run_benchmark"]

MODULE = "benchmarks.worker_throughput"
DEFAULT_OUTPUT = Path("docs/benchmarks-stream.md")
#: Distributions whose versions the page lists.
PACKAGES = (
    *("advmon", "faust-streaming", "aiokafka", "noida-db", "onnxruntime-gpu"),
    *("onnxruntime", "orjson", "pydantic", "numpy", "py-spy"),
)
EVENTS_TOPIC = "bench-inference-events"
WORKER_START_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 60.0


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

    def __init__(self, config: Path, bootstrap: str, app_id: str, log: Path) -> None:
        self.web_port = free_loopback_port()
        self.log = log
        self.metrics_error = ""
        env = {
            **os.environ,
            "ADVMON_KAFKA__BOOTSTRAP": bootstrap,
            "ADVMON_WORKER__APP_ID": app_id,
            "ADVMON_SCORING__DEVICE": "cpu",
        }
        command = [sys.executable, "-m", "monitor", "worker", "--config", str(config)]
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
    broker_pid: int | None = None,
) -> WorkerResult:
    """Start a worker on the pre-filled topic, time it to the ``events``-th decision
    (default: the whole topic), then, with ``latency``, offer half that rate for the
    latency phase; with ``profile_out``, py-spy records the timed part there."""
    events = events or plan.events
    tag = f"{max_events}-{max_wait_ms}" + ("-profile" if profile_out else "")
    decisions, latency_topic = f"bench-decisions-{tag}", f"bench-latency-{tag}"
    await create_topics(bootstrap, [decisions, latency_topic])
    config = workdir / f"worker-{tag}.yaml"
    write_worker_config(config, artifacts.detector_path, tag, max_events, max_wait_ms)
    watcher = DecisionWatcher(bootstrap, decisions)
    await watcher.start()
    launched = time.time()
    app_id = f"advmon-bench-{tag}-{os.getpid()}"
    worker = Worker(config, bootstrap, app_id, workdir / f"{tag}.log")
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


# -- driver ----------------------------------------------------------------------------


_STARTED = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


async def _run(
    plan: Plan,
    workdir: Path,
    bootstrap: str,
    broker_pid: int | None,
    artifacts: Artifacts,
    report: Report,
) -> None:
    await create_topics(bootstrap, [EVENTS_TOPIC])
    _progress(f"filling {EVENTS_TOPIC} with {plan.events:,} events")
    report.produce_seconds, report.event_bytes = await fill_topic(bootstrap, artifacts, plan.events)
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
            bootstrap, artifacts, workdir, plan, max_events, max_wait_ms, broker_pid=broker_pid
        )
        _progress(f"  {result.events_per_second:,.0f} events/s")
        report.workers.append(result)
    if plan.profile:
        await _profile(bootstrap, broker_pid, artifacts, workdir, plan, report)


async def _profile(
    bootstrap: str,
    broker_pid: int | None,
    artifacts: Artifacts,
    workdir: Path,
    plan: Plan,
    report: Report,
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
        events=plan.profile_events,
        latency=False,
        profile_out=out,
        broker_pid=broker_pid,
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


def run_benchmark(plan: Plan, command: str, broker_kind: str = "apache") -> Report:
    """Run everything on ``broker_kind`` (``apache`` or ``embedded``) and return the
    figures; ``command`` is the command line the report names."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="advmon-stream-bench-") as tmp:
        workdir = Path(tmp)
        _progress("training the demo model and calibrating its detector")
        artifacts = build_artifacts(workdir)
        report = Report(
            plan=plan,
            command=command,
            event_bytes=0.0,
            adversarial=plan.events // ADVERSARIAL_EVERY,
            produce_seconds=0.0,
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
            asyncio.run(_run(plan, workdir, bootstrap, broker.pid, artifacts, report))
    report.machine = describe_machine(load_before, PACKAGES)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the page and writes it to ``--output``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
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
    # Accepted and ignored: `make bench` and docs/kafka.md still pass it. It skipped an A/B
    # run of the direct publish that AdvmonApp.publish has done since 5b04546.
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.events:
        plan = replace(
            plan, events=args.events, profile_events=min(plan.profile_events, args.events)
        )
    if args.no_profile:
        plan = replace(plan, profile=False)
    started = time.perf_counter()
    report = run_benchmark(plan, command_line(MODULE, argv), args.broker)
    write_page(render_markdown(report), args.output)
    _progress(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
