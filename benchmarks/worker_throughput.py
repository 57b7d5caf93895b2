"""How fast ``advmon worker`` turns Kafka topics of inference events into decisions.

Run ``.venv/bin/python -m benchmarks.worker_throughput`` (5–10 minutes on 2 cores);
``--quick`` for a smoke run of a minute or two, ``--output PATH`` to write the page
somewhere other than ``docs/benchmarks-stream.md``, ``--broker embedded`` to run on the
demo's noida-db broker instead of Apache Kafka (:class:`tests.kafka.ApacheKafkaBroker`,
whose jars ``make kafka`` fetches). On one broker, for each of two streams
(:mod:`benchmarks.stream_traffic`: (a) the demo's 8×8 digits and MLP, (b) 28×28 uint8
images and a small CNN with three squeezers), it measures on one pre-filled
single-partition topic:

1. **bare consumer**: events/s of a plain aiokafka consumer that reads the topic from
   the beginning to the end and JSON-decodes every value (``orjson.loads``);
2. **bare pipeline**: the same consumer decoding each value into a float32 batch array
   and scoring every ``max_events`` with the stream's fused squeeze graph
   (``detectors.Detector.score``, CPU), producing nothing;
3. **worker throughput**: events/s of ``advmon worker`` (a subprocess, exactly as
   deployed) on the same topic, from its first to its N-th request decision seen on the
   decisions topic, for each batching setting; worker start-up is excluded;
4. **latency**: event-to-decision p50/p99 at a fixed offered load of half the
   throughput measured in step 3, events carrying their send time in ``ts``; then, with
   the stream's recommended batching only, a **sweep** of lower loads (the plan's
   ``sweep_fractions`` of that throughput: 1/4 and 1/10) on the same worker;
5. **where the time goes**: the worker's ``/metrics`` (histograms, and the seconds per
   step of ``advmon_pipeline_seconds_total`` when it exports it), the CPU time of the
   worker, the broker and this process per phase, the per-event cost of the pipeline's
   stages in-process, and a py-spy profile of another worker run of stream (a) when
   ``py-spy`` is installed (the ``dev`` dependency group; ``--no-profile`` skips it);
6. **scaling**: 1, 2 and 4 workers in one consumer group on a topic of 8 partitions,
   aggregate events/s from the first to the N-th decision (``--no-scaling`` skips it).

Everything runs in a temporary folder; the figures go into a
:class:`benchmarks.stream_results.Report`, which :mod:`benchmarks.stream_report` renders
to ``--output``. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.machine import describe_machine
from benchmarks.page import command_line, write_page
from benchmarks.stream_kafka import (
    STALL_TIMEOUT_S,
    CpuMeter,
    DecisionWatcher,
    bare_consume,
    bare_pipeline,
    create_topics,
    fill_topic,
    offer_load,
)
from benchmarks.stream_profile import (
    parse_py_spy,
    py_spy,
    stage_costs,
    start_py_spy,
    stop_py_spy,
)
from benchmarks.stream_report import render_markdown
from benchmarks.stream_results import (
    ADVERSARIAL_EVERY,
    FULL_PLAN,
    HALF_LOAD,
    IDLE_SECONDS,
    QUICK_PLAN,
    BaselineResult,
    LatencyResult,
    PipelineResult,
    Plan,
    ProfileResult,
    Report,
    ScalingResult,
    StepSplit,
    StreamPlan,
    StreamReport,
    WorkerMetrics,
    WorkerResult,
)
from benchmarks.stream_traffic import Stream, build_streams
from benchmarks.stream_worker import (
    WORKER_START_TIMEOUT_S,
    Worker,
    stop_workers,
    wait_for_split,
    write_worker_config,
)
from detectors import Detector
from monitor.kafka.local_broker import BrokerProcess, LocalKafkaBroker
from tests.kafka import ApacheKafkaBroker

__all__ = ["main", "run_benchmark"]

MODULE = "benchmarks.worker_throughput"
DEFAULT_OUTPUT = Path("docs/benchmarks-stream.md")
#: Distributions whose versions the page lists.
PACKAGES = (
    *("advmon", "faust-streaming", "aiokafka", "noida-db", "onnxruntime-gpu"),
    *("onnxruntime", "orjson", "pydantic", "numpy", "river", "py-spy"),
)
#: How long the latency phase waits for decisions after its last event was sent.
DRAIN_S = 60.0
#: Time py-spy gets to attach before the profiled worker's topic is filled.
PY_SPY_ATTACH_S = 1.0


def events_topic(stream: Stream) -> str:
    return f"bench-{stream.key}-events"


# -- one worker ------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstDecision:
    """What was taken when a worker's first decision arrived."""

    meter: CpuMeter
    """Started then."""
    metrics: WorkerMetrics
    """``/metrics`` scraped right after."""
    decided: int
    """Decisions seen when the scrape returned."""
    scraped: float
    """time.time() when the scrape returned."""


async def _on_first(
    watcher: DecisionWatcher, prefix: str, worker: Worker, broker_pid: int | None
) -> FirstDecision:
    """Wait for the first decision of ``prefix``; start a CPU meter and scrape metrics."""
    await watcher.wait_for(prefix, 1, stall_s=WORKER_START_TIMEOUT_S + STALL_TIMEOUT_S)
    meter = CpuMeter([worker.pid], broker_pid)
    metrics = await worker.metrics()
    return FirstDecision(meter, metrics, watcher.count(prefix), time.time())


def _step_split(first: FirstDecision, end: WorkerMetrics, events: int, last: float) -> StepSplit:
    """The per-step seconds from the first scrape to ``end`` (``last``: when the N-th
    decision arrived), or over the whole run when the first scrape came too late."""
    window = events - first.decided
    if first.metrics.steps_found and window >= events // 2 and last > first.scraped:
        diff = end - first.metrics
        return StepSplit(diff.steps, True, window, last - first.scraped, whole_run=False)
    return StepSplit(end.steps, end.steps_found, events, math.nan, whole_run=True)


@dataclass(frozen=True)
class LatencyRig:
    """What the latency phases of one worker share: it reads ``topic`` and decides onto
    the topic ``watcher`` reads; ``throughput`` is what it measured, events/s."""

    bootstrap: str
    topic: str
    stream: Stream
    watcher: DecisionWatcher
    worker: Worker
    meter: CpuMeter
    throughput: float
    seconds: float
    """How long each phase offers load."""

    async def phase(self, prefix: str, fraction: float) -> LatencyResult:
        """Offer ``fraction`` of the throughput for :attr:`seconds`, events sent one by
        one with ids starting with ``prefix`` (one of its own per phase, so that
        decisions are matched to their phase), and wait for their decisions; the
        worker's ``/metrics`` and the CPU are taken over the phase."""
        rate, seconds = self.throughput * fraction, self.seconds
        _progress(f"  latency at {rate:,.0f} events/s ({fraction:g} × throughput), {seconds:.0f} s")
        before = await self.worker.metrics()
        self.meter.restart()
        producing = asyncio.create_task(
            offer_load(self.bootstrap, self.topic, self.stream, prefix, rate, seconds)
        )
        expected = max(1, round(rate * seconds))
        # An overloaded worker still decides, slowly: give up a while after the last send.
        await self.watcher.wait_for(prefix, expected, timeout_s=seconds + DRAIN_S)
        sent = await producing
        cpu = self.meter.read()
        metrics = await self.worker.metrics() - before
        seen = {e: self.watcher.seen[e] for e in sent if e in self.watcher.seen}
        result = LatencyResult(
            rate=rate,
            seconds=seconds,
            sent=len(sent),
            received=len(seen),
            latencies=tuple(s.received - sent[e] for e, s in seen.items()),
            created_latencies=tuple(s.created - sent[e] for e, s in seen.items()),
            metrics=metrics,
            cpu=cpu,
            fraction=fraction,
        )
        _progress(f"    {_latency_line(result)}")
        return result


def _latency_line(result: LatencyResult) -> str:
    """A latency phase's figures, for the progress output."""
    ms = [result.quantile(q) * 1e3 for q in (0.5, 0.9, 0.99)]
    cpu = result.cpu
    cores = [cpu.cores(s) for s in (cpu.worker, cpu.broker, cpu.bench, cpu.machine)]
    return (
        f"{result.received:,} of {result.sent:,} decided; p50 {ms[0]:.1f} ms, p90 "
        f"{ms[1]:.1f} ms, p99 {ms[2]:.1f} ms, max "
        f"{max(result.latencies, default=math.nan) * 1e3:.1f} ms; worker histogram p99 ≤ "
        f"{result.metrics.event_to_decision.quantile(0.99) * 1e3:g} ms; cores: worker "
        "{:.2f}, broker {:.2f}, this process {:.2f}, machine {:.2f}".format(*cores)
    )


async def run_worker(
    bootstrap: str,
    stream: Stream,
    workdir: Path,
    plan: Plan,
    max_events: int,
    max_wait_ms: int,
    *,
    events: int | None = None,
    latency: bool = True,
    sweep: Sequence[float] = (),
    profile_out: Path | None = None,
    broker_pid: int | None = None,
) -> WorkerResult:
    """Start a worker on the stream's pre-filled topic and time it to the ``events``-th
    decision (default: the whole topic), then, with ``latency``, offer half that rate on
    a second topic for the latency phase, and then each ``sweep`` share of that rate in
    turn (a failure there ends the sweep, not the run: see ``sweep_error``).

    With ``profile_out``, the worker reads a topic of its own instead, which is filled
    with ``events`` events once the worker is healthy and py-spy records it (to
    ``profile_out``) until the ``events``-th decision.
    """
    events = events or plan.stream(stream.key).events
    tag = f"{stream.key}-{max_events}-{max_wait_ms}" + ("-profile" if profile_out else "")
    decisions, latency_topic = f"bench-decisions-{tag}", f"bench-latency-{tag}"
    source = f"bench-{tag}-events" if profile_out else events_topic(stream)
    await create_topics(
        bootstrap, {decisions: 1, latency_topic: 1} | ({source: 1} if profile_out else {})
    )
    config = workdir / f"worker-{tag}.yaml"
    write_worker_config(config, stream, tag, max_events, max_wait_ms, [source, latency_topic])
    watcher = DecisionWatcher(bootstrap, decisions)
    await watcher.start()
    launched = time.time()
    app_id = f"advmon-bench-{tag}-{os.getpid()}"
    worker = Worker(config, bootstrap, app_id, workdir / tag / "worker.log")
    # The worker may decide before /healthz answers 200: CPU is metered from the first
    # decision, when the timed interval starts.
    first = asyncio.create_task(_on_first(watcher, "fill-", worker, broker_pid))
    spy: subprocess.Popen[bytes] | None = None
    try:
        await worker.wait_healthy()
        startup = time.time() - launched
        spy_started = time.perf_counter()
        if profile_out is not None:
            spy = start_py_spy(worker.pid, profile_out)
            await asyncio.sleep(PY_SPY_ATTACH_S)
            spy_started = time.perf_counter()
            await fill_topic(bootstrap, source, stream, "fill-", events)
        got = await watcher.wait_for("fill-", events)
        if got < events:
            raise RuntimeError(f"only {got} of {events} decisions arrived:\n{worker.tail()}")
        started = await first
        meter = started.meter
        cpu = meter.read()
        profile_seconds = 0.0
        if spy is not None:
            stop_py_spy(spy)
            spy = None
            profile_seconds = time.perf_counter() - spy_started
        fill = watcher.of("fill-")[:events]
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
            actions=watcher.actions_of("fill-"),
            metrics=after_fill,
            cpu=cpu,
            profile_seconds=profile_seconds,
            steps=_step_split(started, after_fill, events, max(received)),
        )
        if not latency:
            return replace(result, metrics_error=worker.metrics_error)
        rig = LatencyRig(
            bootstrap,
            latency_topic,
            stream,
            watcher,
            worker,
            meter,
            result.events_per_second,
            plan.latency_seconds,
        )
        half = await rig.phase(f"lat-{tag}-", HALF_LOAD)
        meter.restart()
        await asyncio.sleep(IDLE_SECONDS)
        idle = meter.read()
        swept: list[LatencyResult] = []
        sweep_error = ""
        for k, fraction in enumerate(sweep, 1):
            try:
                swept.append(await rig.phase(f"sweep{k}-{tag}-", fraction))
            except Exception as error:
                sweep_error = f"{type(error).__name__}: {error}".strip()
                break
        return replace(
            result,
            idle=idle,
            metrics_error=worker.metrics_error,
            latency=half,
            sweep=tuple(swept),
            sweep_error=sweep_error,
        )
    finally:
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await first
        if spy is not None:
            stop_py_spy(spy)
        await watcher.stop()
        worker.stop()


# -- a consumer group ------------------------------------------------------------------


async def run_scaling(
    bootstrap: str,
    stream: Stream,
    workdir: Path,
    plan: Plan,
    count: int,
    broker_pid: int | None,
) -> ScalingResult:
    """``count`` workers with one app id (one consumer group) on a fresh topic of
    ``plan.scale_partitions`` partitions: once they are healthy and hold every partition
    between them, fill the topic and time the first to the N-th decision."""
    stream_plan = plan.stream(stream.key)
    events, partitions = stream_plan.scale_events, plan.scale_partitions
    max_events, max_wait_ms = stream_plan.batchings[0]
    tag = f"{stream.key}-scale-{count}"
    topic, decisions = f"bench-{tag}", f"bench-decisions-{tag}"
    await create_topics(bootstrap, {topic: partitions, decisions: 1})
    config = workdir / f"worker-{tag}.yaml"
    write_worker_config(config, stream, tag, max_events, max_wait_ms, [topic])
    watcher = DecisionWatcher(bootstrap, decisions)
    await watcher.start()
    app_id = f"advmon-bench-{tag}-{os.getpid()}"
    launched = time.monotonic()
    workers = [
        Worker(config, bootstrap, app_id, workdir / tag / f"worker-{k}" / "worker.log")
        for k in range(count)
    ]
    try:
        await asyncio.gather(*(w.wait_healthy() for w in workers))
        shares, note = await wait_for_split(workers, topic, partitions)
        ready = time.monotonic() - launched
        meter = CpuMeter([w.pid for w in workers], broker_pid)
        filling = asyncio.create_task(
            fill_topic(bootstrap, topic, stream, "scale-", events, partitions)
        )
        got = await watcher.wait_for("scale-", events)
        fill_seconds, _ = await filling
        cpu = meter.read()
        if got < events:
            tails = "\n".join(w.tail() for w in workers)
            raise RuntimeError(f"only {got} of {events} decisions arrived:\n{tails}")
        received = [s.received for s in watcher.of("scale-")]
        return ScalingResult(
            workers=count,
            partitions=partitions,
            max_events=max_events,
            max_wait_ms=max_wait_ms,
            events=events,
            ready_seconds=ready,
            shares=shares,
            split_note=note,
            fill_seconds=fill_seconds,
            received_seconds=max(received) - min(received),
            duplicates=watcher.duplicates,
            cpu=cpu,
        )
    finally:
        await watcher.stop()
        stop_workers(workers)


# -- baselines -------------------------------------------------------------------------


async def measure_baselines(
    bootstrap: str, stream: Stream, plan: Plan, report: StreamReport, broker_pid: int | None
) -> None:
    """The bare consumer, and the bare pipeline for each max_events of the plan."""
    topic, stream_plan = events_topic(stream), plan.stream(stream.key)
    events = stream_plan.events
    await bare_consume(bootstrap, topic, events)  # warm-up: connections, metadata, caches
    runs: list[tuple[float, float]] = []
    meter = CpuMeter([], broker_pid)
    for _ in range(plan.baseline_repeats):
        runs.append(await bare_consume(bootstrap, topic, events))
    cpu = meter.read()
    report.baseline = BaselineResult(
        events,
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        tuple(r[0] for r in runs),
        cpu,
    )
    _progress(f"  bare consumer: {report.baseline.events_per_second:,.0f} events/s")
    detector = Detector.from_file(stream.detector_path, device="cpu")
    # Warm-up: ONNX Runtime's first runs allocate; not what the stream costs.
    warm = stream.benign[: stream_plan.batchings[0][0]].astype("float32")
    for _ in range(3):
        detector.score(warm)
    for max_events in dict.fromkeys(m for m, _ in stream_plan.batchings):
        timings: list[tuple[float, int]] = []
        meter = CpuMeter([], broker_pid)
        for _ in range(plan.baseline_repeats):
            timings.append(await bare_pipeline(bootstrap, topic, events, detector, max_events))
        cpu = meter.read()
        result = PipelineResult(
            max_events=max_events,
            events=events,
            seconds=statistics.median(t[0] for t in timings),
            all_seconds=tuple(t[0] for t in timings),
            cpu=cpu,
            flagged=timings[-1][1],
        )
        report.pipelines.append(result)
        _progress(
            f"  bare pipeline, batches of {max_events}: {result.events_per_second:,.0f} events/s"
        )
    del detector
    gc.collect()


# -- driver ----------------------------------------------------------------------------


_STARTED = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def _failed(phase: str, error: Exception) -> str:
    """A failure line for the page (the error's first line; the whole of it on stderr)."""
    text = str(error).strip()
    _progress(f"FAILED: {phase}: {type(error).__name__}: {text}")
    first = text.splitlines()[0] if text else ""
    return f"{phase}: `{type(error).__name__}: {first}`"


async def _run_stream(
    plan: Plan,
    workdir: Path,
    bootstrap: str,
    broker_pid: int | None,
    stream: Stream,
    report: StreamReport,
    failures: list[str],
) -> None:
    stream_plan = plan.stream(stream.key)
    topic = events_topic(stream)
    await create_topics(bootstrap, {topic: 1})
    _progress(f"{stream.info.name}: filling {topic} with {stream_plan.events:,} events")
    report.produce_seconds, report.event_bytes = await fill_topic(
        bootstrap, topic, stream, "fill-", stream_plan.events
    )
    await measure_baselines(bootstrap, stream, plan, report, broker_pid)
    for k, (max_events, max_wait_ms) in enumerate(stream_plan.batchings):
        _progress(f"  worker, batching {max_events}/{max_wait_ms}")
        name = f"{stream.info.name}, worker {max_events}/{max_wait_ms}"
        try:
            result = await run_worker(
                bootstrap,
                stream,
                workdir,
                plan,
                max_events,
                max_wait_ms,
                # The sweep of lower loads: the recommended batching only.
                sweep=plan.sweep_fractions if k == 0 else (),
                broker_pid=broker_pid,
            )
        except Exception as error:
            failures.append(_failed(name, error))
            continue
        _progress(f"    {result.events_per_second:,.0f} events/s")
        if result.sweep_error:
            _progress(f"FAILED: {name}, latency sweep: {result.sweep_error}")
            first_line = result.sweep_error.splitlines()[0]
            failures.append(f"{name}, latency sweep: `{first_line}`")
        report.workers.append(result)


async def _run(
    plan: Plan,
    workdir: Path,
    bootstrap: str,
    broker_pid: int | None,
    streams: list[Stream],
    report: Report,
) -> None:
    for stream, stream_report in zip(streams, report.streams, strict=True):
        await _run_stream(
            plan, workdir, bootstrap, broker_pid, stream, stream_report, report.failures
        )
    if plan.profile:
        try:
            await _profile(bootstrap, broker_pid, streams[0], workdir, plan, report)
        except Exception as error:
            report.failures.append(_failed("py-spy profile", error))
    for stream, stream_report in zip(streams, report.streams, strict=True):
        if not stream_report.plan.scale_events or not plan.scale_workers:
            continue
        stream_report.scaling_batching = stream_report.plan.batchings[0]
        for count in plan.scale_workers:
            _progress(
                f"{stream.info.name}: {count} worker(s) in one group, "
                f"{plan.scale_partitions} partitions, {stream_report.plan.scale_events:,} events"
            )
            try:
                result = await run_scaling(bootstrap, stream, workdir, plan, count, broker_pid)
            except Exception as error:
                name = f"{stream.info.name}, {count} worker(s) in one group"
                report.failures.append(_failed(name, error))
                continue
            _progress(f"  {result.events_per_second:,.0f} events/s")
            stream_report.scaling.append(result)


async def _profile(
    bootstrap: str,
    broker_pid: int | None,
    stream: Stream,
    workdir: Path,
    plan: Plan,
    report: Report,
) -> None:
    if py_spy() is None:
        report.profile_note = (
            "py-spy is not installed (it is in the `dev` dependency group: `make install`, or "
            "`.venv/bin/pip install py-spy`, and run again)."
        )
        return
    max_events, max_wait_ms = plan.stream(stream.key).batchings[0]
    _progress(f"{stream.info.name}: worker under py-spy, batching {max_events}/{max_wait_ms}")
    out = workdir / "py-spy.txt"
    result = await run_worker(
        bootstrap,
        stream,
        workdir,
        plan,
        max_events,
        max_wait_ms,
        events=min(plan.profile_events, plan.stream(stream.key).events),
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
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="advmon-stream-bench-") as tmp:
        workdir = Path(tmp)
        _progress("building both streams: models, detectors (calibrate_file), perturbed inputs")
        streams = build_streams(workdir)
        report = Report(plan=plan, command=command)
        for stream in streams:
            stream_plan = plan.stream(stream.key)
            stream_report = StreamReport(
                info=stream.info,
                plan=stream_plan,
                perturbed_events=stream_plan.events // ADVERSARIAL_EVERY,
            )
            _progress(f"{stream.info.name}: timing the pipeline stages in-process")
            stream_report.stages, stream_report.flagged_share, stream_report.stage_note = (
                stage_costs(
                    stream,
                    workdir,
                    stream_report.stage_batch,
                    stream_plan.stage_batches,
                    plan.stage_rounds,
                )
            )
            report.streams.append(stream_report)
        gc.collect()
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
            asyncio.run(_run(plan, workdir, bootstrap, broker.pid, streams, report))
    report.machine = describe_machine(load_before, PACKAGES)
    report.seconds = time.perf_counter() - started
    return report


def _with_events(plan: StreamPlan, events: int | None) -> StreamPlan:
    return replace(plan, events=events) if events else plan


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the page and writes it to ``--output``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (a minute or two)")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the markdown page (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--events", type=int, help="events in stream (a)'s pre-filled topic")
    parser.add_argument("--mnist-events", type=int, help="events in stream (b)'s pre-filled topic")
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
        "--no-scaling", action="store_true", help="skip the consumer-group scaling runs"
    )
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    plan = replace(
        plan,
        digits=_with_events(plan.digits, args.events),
        mnist=_with_events(plan.mnist, args.mnist_events),
    )
    if args.no_profile:
        plan = replace(plan, profile=False)
    if args.no_scaling:
        plan = replace(plan, scale_workers=())
    started = time.perf_counter()
    report = run_benchmark(plan, command_line(MODULE, argv), args.broker)
    write_page(render_markdown(report), args.output)
    _progress(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")
    for failure in report.failures:
        _progress(f"FAILED: {failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
