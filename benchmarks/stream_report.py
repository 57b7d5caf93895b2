"""The markdown page (``docs/benchmarks-stream.md``) for a run of
:mod:`benchmarks.worker_throughput`: what was measured, how, on what, and the figures."""

from __future__ import annotations

import math
from collections.abc import Sequence

from benchmarks.page import generated_by, machine_table, table
from benchmarks.stream_results import (
    ADVERSARIAL_EVERY,
    ATTACKERS,
    IDLE_SECONDS,
    IDLE_SLEEP_S,
    LATENCY_P50_TARGET_S,
    LATENCY_P99_TARGET_S,
    PIPELINE_RATIO_TARGET,
    POLL_MS,
    PY_SPY_RATE_HZ,
    USERS,
    CpuSeconds,
    LatencyResult,
    Report,
    ScalingResult,
    StreamReport,
    WorkerResult,
)

__all__ = ["PROJECTED_CORES", "render_markdown"]

#: Worker cores of the larger machines the per-core projection is given for.
PROJECTED_CORES = (4, 8, 16)


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    if math.isinf(seconds):
        return "> 30 000"
    value = seconds * 1e3
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _num(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.1f}"


def _rate(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.0f}"


def _us(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    value = seconds * 1e6
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _share(fraction: float) -> str:
    """0.25 → ``1/4``: a share of the measured throughput."""
    inverse = 1 / fraction if fraction > 0 else math.nan
    if not math.isnan(inverse) and abs(inverse - round(inverse)) < 1e-6:
        return f"1/{round(inverse)}"
    return f"{fraction:g}"


def _shares(fractions: Sequence[float]) -> str:
    """(0.25, 0.1) → ``1/4 and 1/10``."""
    names = [_share(f) for f in fractions]
    return " and ".join(filter(None, [", ".join(names[:-1]), *names[-1:]]))


def _targets_text() -> str:
    return (
        f"p50 ≤ {LATENCY_P50_TARGET_S * 1e3:.0f} ms and p99 ≤ {LATENCY_P99_TARGET_S * 1e3:.0f} ms"
    )


def _cores(cpu: CpuSeconds) -> list[str]:
    return [
        f"{cpu.cores(seconds):.2f}"
        for seconds in (cpu.worker, cpu.broker, cpu.bench, cpu.others, cpu.machine)
    ]


def _pipeline_ratio(stream: StreamReport, worker: WorkerResult) -> float:
    pipeline = stream.pipeline(worker.max_events)
    return worker.events_per_second / pipeline.events_per_second if pipeline else math.nan


def _consumer_ratio(stream: StreamReport, worker: WorkerResult) -> float:
    baseline = stream.baseline
    return worker.events_per_second / baseline.events_per_second if baseline else math.nan


# -- summary ---------------------------------------------------------------------------


def _summary_rows(stream: StreamReport) -> list[list[str]]:
    name = stream.info.name
    rows = []
    if stream.baseline:
        b = stream.baseline
        rows.append(
            [
                name,
                "bare consumer: aiokafka + `orjson.loads`",
                "–",
                _rate(b.events_per_second),
                "–",
                "1",
                _us(b.cpu_per_event),
                "–",
                "–",
            ]
        )
    for p in stream.pipelines:
        ratio = p.events_per_second / stream.baseline.events_per_second if stream.baseline else 1
        rows.append(
            [
                name,
                "bare pipeline: + float32 batch + `Detector.score`",
                f"{p.max_events}/–",
                _rate(p.events_per_second),
                "1",
                f"{ratio:.3f}",
                _us(p.cpu_per_event),
                "–",
                "–",
            ]
        )
    for w in stream.workers:
        lat = w.latency
        rows.append(
            [
                name,
                "`advmon worker`",
                w.label,
                _rate(w.events_per_second),
                f"**{_pipeline_ratio(stream, w):.3f}**",
                f"{_consumer_ratio(stream, w):.3f}",
                _us(w.cpu_per_event),
                _ms(lat.quantile(0.5)) if lat else "–",
                _ms(lat.quantile(0.99)) if lat else "–",
            ]
        )
    return rows


def _targets(stream: StreamReport) -> list[list[str]]:
    rows = []
    for w in stream.workers:
        ratio = _pipeline_ratio(stream, w)
        lat = w.latency
        p50 = p99 = "–"
        if lat is not None:
            undecided = lat.sent - lat.received
            p50 = f"{_ms(lat.quantile(0.5))}: {_met(lat.p50_met)}"
            p99 = f"{_ms(lat.quantile(0.99))}: {_met(lat.p99_met)}" + (
                f" ({undecided:,} of {lat.sent:,} events undecided)" if undecided else ""
            )
        rows.append(
            [
                stream.info.name,
                w.label,
                f"{ratio:.3f}: {_met(ratio >= PIPELINE_RATIO_TARGET)}",
                f"{_consumer_ratio(stream, w):.3f}",
                p50,
                p99,
            ]
        )
    return rows


def _summary(report: Report) -> list[str]:
    header = [
        "stream",
        "",
        "batching max_events / max_wait_ms",
        "events/s",
        "÷ bare pipeline",
        "÷ bare consumer",
        "CPU µs per event (its process)",
        "latency p50, ms",
        "latency p99, ms",
    ]
    rows = [row for stream in report.streams for row in _summary_rows(stream)]
    targets = [row for stream in report.streams for row in _targets(stream)]
    out = [
        "## Summary\n",
        table(header, rows, "lllrrrrrr") + "\n",
        "Events/s of the worker run from its first to its N-th decision on a pre-filled "
        "single-partition topic; latency is event send → decision received at an offered "
        "load of half the worker's measured throughput. The first batching of each stream "
        "is the recommended one.\n",
        "**Targets** (issue 13): worker ÷ bare pipeline ≥ "
        f"{PIPELINE_RATIO_TARGET}; at half the measured throughput, p50 ≤ "
        f"{LATENCY_P50_TARGET_S * 1e3:.0f} ms and p99 ≤ {LATENCY_P99_TARGET_S * 1e3:.0f} ms "
        "(a latency target counts as met only when every event sent got its decision).\n",
        table(
            [
                "stream",
                "batching",
                f"worker ÷ bare pipeline (≥ {PIPELINE_RATIO_TARGET})",
                "worker ÷ bare consumer",
                f"p50, ms (≤ {LATENCY_P50_TARGET_S * 1e3:.0f})",
                f"p99, ms (≤ {LATENCY_P99_TARGET_S * 1e3:.0f})",
            ],
            targets,
            "llllll",
        )
        + "\n",
    ]
    out += [_sweep_line(stream) for stream in report.streams]
    scaling = [s for s in report.streams if s.scaling]
    for stream in scaling:
        figures = ", ".join(f"{r.workers} → {_rate(r.events_per_second)}" for r in stream.scaling)
        out.append(
            f"**Scaling**, {stream.info.name} on {stream.scaling[0].partitions} partitions, "
            f"workers → aggregate events/s: {figures} (this machine: "
            f"{_machine_cores(report)} shared with the broker; see "
            "[Scaling](#scaling-one-consumer-group) for the per-core projection).\n"
        )
    return out


def _load_curve(stream: StreamReport) -> list[LatencyResult]:
    """The recommended batching's latency phases, highest offered load first."""
    worker = stream.recommended()
    if worker is None or worker.latency is None:
        return []
    return sorted([worker.latency, *worker.sweep], key=lambda p: p.rate, reverse=True)


def _sweep_line(stream: StreamReport) -> str:
    """The highest offered load at which both latency targets held, for the summary."""
    worker, phases = stream.recommended(), _load_curve(stream)
    name = stream.info.name
    if worker is None or not phases:
        return f"**Latency against offered load**, {name}: not measured in this run.\n"
    tried = ", ".join(f"{_share(p.fraction)} ({_rate(p.rate)})" for p in phases)
    held = [p for p in phases if p.targets_met]
    start = (
        f"**Latency against offered load**, {name}, batching {worker.label} "
        f"(recommended; measured throughput {_rate(worker.events_per_second)} events/s), "
        f"loads offered {tried} events/s: "
    )
    if not held:
        lowest = phases[-1]
        return (
            f"{start}{_targets_text()} held at **none** of them (at the lowest, p50 "
            f"{_ms(lowest.quantile(0.5))} ms, p99 {_ms(lowest.quantile(0.99))} ms, "
            f"{lowest.received:,} of {lowest.sent:,} decided); see "
            "[Latency against offered load](#latency-against-offered-load).\n"
        )
    best = held[0]
    return (
        f"{start}{_targets_text()} held up to **{_rate(best.rate)} events/s** "
        f"({_share(best.fraction)} of the throughput: p50 {_ms(best.quantile(0.5))} ms, p99 "
        f"{_ms(best.quantile(0.99))} ms; see "
        "[Latency against offered load](#latency-against-offered-load)).\n"
    )


def _machine_cores(report: Report) -> str:
    machine = report.machine
    return f"{machine.logical_cpus} logical CPUs" if machine else "its CPUs"


# -- method ----------------------------------------------------------------------------


def _stream_method(stream: StreamReport) -> str:
    info, plan = stream.info, stream.plan
    return (
        f"- **{info.name}** — {plan.events:,} events (mean {stream.event_bytes:,.0f} bytes "
        f"each). Benign: {info.benign}, from {len(USERS)} users, alternately as "
        f"{info.payloads}. Every {ADVERSARIAL_EVERY}th event "
        f"({stream.perturbed_events:,} in all, {100 / ADVERSARIAL_EVERY:g} %) from one of "
        f"{len(ATTACKERS)} attacking sources: {info.perturbed}. Model: {info.model}. "
        f"Detector: {info.detector}: squeezers `{info.squeezers}`, threshold "
        f"{info.threshold:.4g}; in this process it flags "
        f"{info.benign_flagged_share:.1%} of the stream's benign inputs and "
        f"{info.perturbed_flagged_share:.1%} of its {info.perturbed_pool:,} perturbed ones."
    )


def _method(report: Report) -> list[str]:
    plan = report.plan
    streams = report.streams
    sizes = ", ".join(f"{s.info.name}: {s.plan.events:,}" for s in streams)
    return [
        "## What is measured\n",
        f"**Broker:** {report.broker_description}, on this machine. The broker, the "
        "workers and this process share the machine's CPUs. **Two streams**, each "
        "pre-filled into a single-partition topic of its own, every event carrying `ts`:\n",
        *[_stream_method(s) for s in streams],
        "",
        "Each worker runs its stream's model with **policy `enforce`** (a flagged event "
        "also produces a detection and a source flag; a source with 20 flagged events "
        "within 60 s is quarantined, which benign users can reach too, since the "
        "detectors flag some benign events) and **drift detection on with the default "
        "signals** (`drift: {enabled: true}` without `signals`: ADWIN on top1, entropy, "
        "score, predicted_class, input_mean and input_std; see [drift.md](drift.md)), on "
        "the CPU execution provider. Per stream, in this order:\n",
        "1. **Bare consumer** — an `aiokafka.AIOKafkaConsumer` (defaults, no group) "
        "assigned the partition seeks to the beginning and `getmany`s until it has "
        "`orjson.loads`-decoded every value; events/s = N ÷ (first fetch request → N-th "
        f"record decoded), median of {plan.baseline_repeats} run(s) after an untimed "
        f"warm-up read ({sizes} events). No "
        "validation, no scoring, no output.",
        "2. **Bare pipeline** — the same consumer `orjson`-decodes each value straight "
        "into a float32 batch array (nested lists through `np.asarray(…, "
        "dtype=float32)`; tensor payloads through base64 decode → `np.frombuffer` → "
        "`astype(float32)`) and, in the event loop, scores every batch of the worker's "
        "`max_events` (and the last, partial one) with the stream's fused squeeze graph "
        "(`detectors.Detector(…).score(batch)`, CPU execution provider, ONNX Runtime's "
        "default threads, warmed up), producing nothing; events/s = N ÷ (first fetch → "
        f"N-th event scored), median of {plan.baseline_repeats} run(s). No validation, no "
        "decisions, no output: what the worker's work costs without the worker.",
        "3. **`advmon worker`** — `python -m monitor worker --config … --web-port … -l "
        "warn` as a subprocess (env `ADVMON_KAFKA__BOOTSTRAP`, a fresh "
        "`ADVMON_WORKER__APP_ID` per run so that it reads the topic from the beginning, "
        "`ADVMON_SCORING__DEVICE=cpu`), with decisions, detections, dead-letter and "
        "source-flag topics of its own. A separate aiokafka consumer in this process reads "
        "the decisions topic; **events/s = (N − 1) ÷ (receive time of the first request "
        "decision → receive time of the N-th)**, a receive time being `time.time()` when "
        "`getmany` returned the record: the decision was written and acknowledged "
        "(acks=all) before it could be read. Worker start-up (interpreter, Faust, ONNX "
        "session, group join) is excluded and shown on its own. The same interval from "
        "the decisions' record timestamps (CreateTime, set by the worker's producer) is "
        "shown as a cross-check. Source-scoped (quarantine) decisions are not counted.",
        "4. **Latency** — right after step 3, the same worker is offered **half the "
        f"throughput it just measured** for {plan.latency_seconds:.0f} s, on a second "
        "topic it also reads (empty until then): events of the same mix, sent one by one "
        "at a steady rate by an `AIOKafkaProducer` (acks=all, linger 0), each with `ts` = "
        "its send time (RFC 3339, `+00:00`). Latency = decision receive time − event send "
        "time, for every event; decision record timestamp − send time (without the broker "
        "acknowledgement and the fetch) is shown too. The decisions consumer polls for at "
        f"most {POLL_MS} ms and, after an empty poll, pauses its partition for "
        f"{IDLE_SLEEP_S * 1e3:.0f} ms, so a receive time is late by at most "
        f"{POLL_MS + IDLE_SLEEP_S * 1e3:.0f} ms. Then {IDLE_SECONDS:.0f} s without traffic, "
        "with the worker's CPU measured. Then, with the stream's recommended batching "
        "only, the same worker is offered lower loads in turn, "
        + (
            _shares(plan.sweep_fractions)
            + f" of its measured throughput for {plan.latency_seconds:.0f} s each, "
            "the same way (a **sweep**: "
            "[Latency against offered load](#latency-against-offered-load))."
            if plan.sweep_fractions
            else "none in this run."
        ),
        "5. **Where the time goes** — the worker's `/metrics` after the throughput phase: "
        "`advmon_pipeline_seconds_total{step=…}` (wall seconds per step of its hot path, "
        "whatever steps it lists) and the histograms `advmon_scoring_seconds`, "
        "`advmon_batch_size_events`, `advmon_event_to_decision_seconds`; CPU seconds of "
        "the worker, the broker, this process and the whole machine per phase; the "
        "per-event cost of the scoring pipeline's stages in-process on batches of "
        f"{streams[0].stage_batch if streams else 64} (`ScoringPipeline.decode`, "
        "`Detector.score`, `ScoringPipeline.decide`, no Kafka, no Faust); and a py-spy "
        f"profile (`--gil`, {PY_SPY_RATE_HZ} Hz, all threads) of another worker run of "
        f"stream (a) on its topic's first {plan.profile_events:,} events.",
        "6. **Scaling** — after both streams: per scaling run, a fresh topic of "
        f"{plan.scale_partitions} partitions and "
        + (
            ", ".join(str(n) for n in plan.scale_workers)
            + " worker processes with one `ADVMON_WORKER__APP_ID` (one consumer group) and "
            "distinct `--web-port`s, with the stream's recommended batching. Once every "
            "worker's `/healthz` answers 200 and between them they list every partition "
            "of the topic, this process produces the events (event *i* to partition "
            f"*i* mod {plan.scale_partitions}) and times the aggregate events/s from the "
            "first to the N-th decision received, as in step 3."
            if plan.scale_workers
            else "no workers: not run (`--no-scaling`)."
        )
        + "\n",
    ]


def _run_rows() -> list[list[str]]:
    return [
        ["execution provider", "CPUExecutionProvider (`ADVMON_SCORING__DEVICE=cpu`)"],
        ["ONNX Runtime intra-op threads", "the worker's default (unset: ONNX Runtime chooses)"],
    ]


# -- results ---------------------------------------------------------------------------


def _throughput(stream: StreamReport) -> list[str]:
    rows = []
    b = stream.baseline
    if b:
        rows.append(
            [
                "bare consumer",
                f"{b.seconds:.3f}",
                _rate(b.events_per_second),
                _rate(b.events / b.first_to_last_seconds),
                f"{_us(b.cpu_per_event)} / {_us(b.broker_cpu_per_event)}",
                *["–"] * 6,
            ]
        )
    for p in stream.pipelines:
        rows.append(
            [
                f"bare pipeline, batches of {p.max_events}",
                f"{p.seconds:.3f}",
                _rate(p.events_per_second),
                "–",
                f"{_us(p.cpu_per_event)} / –",
                "–",
                f"{p.max_events}",
                *["–"] * 4,
            ]
        )
    for w in stream.workers:
        rows.append(
            [
                f"worker {w.label}"
                + (f", {w.events:,} events" if w.events != stream.plan.events else ""),
                f"{w.received_seconds:.2f}",
                _rate(w.events_per_second),
                _rate(w.created_events_per_second),
                f"{_us(w.cpu_per_event)} / {_us(w.broker_cpu_per_event)}",
                f"{w.startup_seconds:.1f} / {w.launch_to_first_seconds:.1f}",
                _num(w.metrics.batch_size.mean),
                _ms(w.metrics.scoring.mean),
                f"{w.metrics.scoring.total / w.received_seconds:.0%}"
                if w.metrics.scoring.count and w.received_seconds > 0
                else "–",
                str(w.duplicates),
                str(w.source_decisions),
            ]
        )
    header = [
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
    ]
    runs = ", ".join(f"{s:.3f}" for s in b.all_seconds) if b else "–"
    out = [
        f"#### Throughput, {stream.info.name}\n",
        table(header, rows, "lrrrrrrrrrr") + "\n",
        "*CPU µs per event*: CPU seconds of the consumer's, the pipeline's or the worker's "
        "process (ONNX Runtime's threads included), and of the broker, over the measured "
        "phase ÷ events. *seconds*: bare consumer and bare pipeline, first fetch → N-th "
        f"record (median; bare consumer runs: {runs}); worker, first → N-th decision "
        "received. *Other clock*: bare consumer from its first record instead of its "
        "first fetch; worker from the decisions' record timestamps. *Mean batch* and "
        "*scoring* come from the worker's `advmon_batch_size_events` and "
        "`advmon_scoring_seconds` over the run; *scoring ÷ wall* is their sum over the "
        f"measured interval. Producing the {stream.plan.events:,} events took "
        f"{stream.produce_seconds:.1f} s.\n",
    ]
    errors = sorted({w.metrics_error for w in stream.workers if w.metrics_error})
    if errors:
        out.append(
            "**The worker's `/metrics` page did not answer 200 in this run**, so the columns "
            "from it are empty. The worker logged: " + "; ".join(f"`{e}`" for e in errors) + ".\n"
        )
    return out


def _outcomes(stream: StreamReport) -> list[str]:
    rows = []
    for w in stream.workers:
        m = w.metrics
        rows.append(
            [
                w.label,
                f"{w.events:,}",
                f"{w.action('allow'):,}",
                f"{w.action('flag'):,}",
                f"{w.action('quarantine'):,}",
                f"{w.source_decisions:,}",
                _count(m.counter("advmon_events_flagged")),
                _count(m.counter("advmon_events_invalid")),
                _count(m.counter("advmon_drift_detections")),
            ]
        )
    header = [
        "batching",
        "events",
        "allow",
        "flag",
        "quarantine (request)",
        "source quarantine decisions",
        "flagged (worker's counter)",
        "refused (dead letters)",
        "drift detections",
    ]
    return [
        f"#### What the worker decided, {stream.info.name}\n",
        table(header, rows, "lrrrrrrrr") + "\n",
        "Request decisions of the pre-filled topic's events by action, as read from the "
        "decisions topic; the rest from the worker's `/metrics` counters "
        "(`advmon_events_flagged`, `advmon_events_invalid`, `advmon_drift_detections`) "
        "after the throughput phase; – when the page did not list the counter.\n",
    ]


def _count(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.0f}"


def _steps(stream: StreamReport) -> list[str]:
    out = [f"#### The worker's time by step, {stream.info.name}\n"]
    found = [w for w in stream.workers if w.steps is not None and w.steps.found]
    if not found:
        missing = "did not answer" if all(w.metrics_error for w in stream.workers) else "had no"
        return [
            *out,
            f"**Not available in this run**: the worker's `/metrics` {missing} "
            "`advmon_pipeline_seconds_total{step=…}` (wall seconds per step of the hot "
            "path), so the split by step is not shown.\n",
        ]
    rows = []
    whole = False
    for w in found:
        split = w.steps
        assert split is not None
        whole = whole or split.whole_run
        label = w.label + (" (whole run)" if split.whole_run else "")

        def share(seconds: float, wall: float) -> str:
            return f"{seconds / wall:.0%}" if wall > 0 else "–"

        total = sum(seconds for _, seconds in split.steps)
        for step, seconds in split.steps:
            rows.append(
                [
                    label,
                    f"`{step}`",
                    f"{seconds:.3f}",
                    _us(seconds / split.events),
                    share(seconds, split.seconds),
                    share(seconds, total),
                ]
            )
        rows.append(
            [
                label,
                "all steps",
                f"**{total:.3f}**",
                f"**{_us(total / split.events)}**",
                share(total, split.seconds),
                "100%",
            ]
        )
        rows.append([label, "worker CPU, whole phase (for comparison)", "–"])
        rows[-1] += [_us(w.cpu_per_event), "–", "–"]
    header = ["batching", "step", "seconds", "µs per event", "÷ wall", "÷ all steps"]
    notes = [
        "`advmon_pipeline_seconds_total{step}` from the worker's `/metrics`, scraped right "
        "after its first decision arrived and again after its N-th: *seconds* is the "
        "difference, *µs per event* divides it by the events decided in between, *÷ wall* "
        "by the wall time in between. These are the wall seconds the worker counts per "
        "step, not CPU: steps that wait (a fetch for records, a publish for the broker's "
        "acknowledgement) or overlap (scoring in a thread while the loop decodes) can add "
        "up to more or less than the wall time."
    ]
    if whole:
        notes.append(
            " *(whole run)*: the worker had decided too much of the topic by the first "
            "scrape, so these rows are its counters after the N-th decision, start-up "
            "included, per event of the topic (no *÷ wall*)."
        )
    return [*out, table(header, rows, "llrrrr") + "\n", "".join(notes) + "\n"]


def _latency(report: Report) -> list[str]:
    rows = []
    for stream in report.streams:
        for w in stream.workers:
            lat = w.latency
            if lat is None:
                continue
            histogram = lat.metrics.event_to_decision
            rows.append(
                [
                    stream.info.name,
                    w.label,
                    _rate(lat.rate),
                    f"{lat.received:,} / {lat.sent:,}",
                    _ms(lat.quantile(0.5)),
                    _ms(lat.quantile(0.99)),
                    _ms(max(lat.latencies, default=math.nan)),
                    f"{_ms(lat.quantile(0.5, True))} / {_ms(lat.quantile(0.99, True))}",
                    f"{_ms(histogram.quantile(0.5))} / {_ms(histogram.quantile(0.99))}",
                    _num(lat.metrics.batch_size.mean),
                    _ms(lat.metrics.scoring.mean),
                ]
            )
    header = [
        "stream",
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
    ]
    return [
        "### Latency at half the measured throughput\n",
        table(header, rows, "llrrrrrrrrr") + "\n",
        "The worker's own `advmon_event_to_decision_seconds` runs from the event's `ts` "
        "to the acknowledgement of its outputs; its quantiles are the upper bounds of the "
        "histogram buckets holding them.\n",
    ]


def _sweep_rows(stream: StreamReport) -> list[list[str]]:
    rows = []
    for p in _load_curve(stream):
        cpu = p.cpu
        rows.append(
            [
                _share(p.fraction),
                _rate(p.rate),
                f"{p.received:,} / {p.sent:,}",
                _ms(p.quantile(0.5)),
                _ms(p.quantile(0.9)),
                _ms(p.quantile(0.99)),
                _ms(max(p.latencies, default=math.nan)),
                _ms(p.metrics.event_to_decision.quantile(0.99)),
                *[
                    f"{cpu.cores(seconds):.2f}"
                    for seconds in (cpu.worker, cpu.broker, cpu.bench, cpu.machine)
                ],
                "yes" if p.targets_met else "**no**",
            ]
        )
    return rows


def _sweep(report: Report) -> list[str]:
    out = ["### Latency against offered load\n"]
    streams = [s for s in report.streams if _load_curve(s)]
    if not streams:
        return [*out, "Not measured in this run.\n"]
    shares = _shares(report.plan.sweep_fractions) or "none"
    out.append(
        "With each stream's recommended batching only: the worker of the half-throughput "
        f"phase above (its row repeated here), then, in turn, {shares} of its measured "
        f"throughput for {report.plan.latency_seconds:.0f} s each, events sent one by one "
        "exactly as in that phase, with event ids of each phase's own. Latency is event "
        "send → decision received; *worker histogram p99* is the upper bound of the "
        "`advmon_event_to_decision_seconds` bucket holding the 99th percentile, from the "
        "difference of the worker's `/metrics` before and after the phase; cores are CPU "
        "seconds ÷ wall seconds over the phase (as in [CPU per phase](#cpu-per-phase)). "
        f"*Targets*: {_targets_text()}, every event decided.\n"
    )
    header = [
        "load ÷ measured throughput",
        "offered, events/s",
        "decisions / events sent",
        "p50, ms",
        "p90, ms",
        "p99, ms",
        "max, ms",
        "worker histogram p99 (bucket bound), ms",
        "worker, cores",
        "broker, cores",
        "this process, cores",
        "machine busy, cores",
        "targets held",
    ]
    for stream in streams:
        worker = stream.recommended()
        assert worker is not None
        out += [
            f"#### Latency against offered load, {stream.info.name} (batching {worker.label})\n",
            table(header, _sweep_rows(stream), "lrrrrrrrrrrrl") + "\n",
        ]
    out.append(
        f"The worker, the broker and this process share {_machine_cores(report)}: where "
        "*machine busy* nears their number, the latency says more about the machine than "
        "about the worker.\n"
    )
    return out


def _cpu(report: Report) -> list[str]:
    rows = []
    for stream in report.streams:
        name = stream.info.name
        if stream.baseline:
            cpu = stream.baseline.cpu
            rows.append([f"{name}: bare consumer", f"{cpu.wall:.2f}", *_cores(cpu)])
        for p in stream.pipelines:
            rows.append(
                [f"{name}: bare pipeline {p.max_events}", f"{p.cpu.wall:.2f}", *_cores(p.cpu)]
            )
        for w in stream.workers:
            phases = {
                "throughput": w.cpu,
                "latency": w.latency.cpu if w.latency else None,
                "idle, no traffic": w.idle,
            }
            rows += [
                [f"{name}: worker {w.label}, {phase}", f"{cpu.wall:.2f}", *_cores(cpu)]
                for phase, cpu in phases.items()
                if cpu is not None
            ]
        for s in stream.scaling:
            rows.append(
                [
                    f"{name}: {s.workers} worker(s), {s.partitions} partitions",
                    f"{s.cpu.wall:.2f}",
                    *_cores(s.cpu),
                ]
            )
    header = [
        "phase",
        "wall, s",
        "worker(s), cores",
        "broker, cores",
        "this process",
        "other processes",
        "machine busy",
    ]
    return [
        "### CPU per phase\n",
        table(header, rows, "lrrrrrr") + "\n",
        "CPU seconds ÷ wall seconds: `/proc/PID/stat` for the workers (summed) and the "
        "broker, `getrusage` for this process (the bare consumer and pipeline, the "
        "producer, the decisions consumer), `/proc/stat` for the whole machine (*machine "
        "busy*, all CPUs); *other processes* is *machine busy* minus the other three. "
        "Throughput phases run from the worker's first decision received to its N-th; "
        "scaling phases from the first event produced to the N-th decision.\n",
    ]


def _scaling(report: Report) -> list[str]:
    out = ["### Scaling: one consumer group\n"]
    streams = [s for s in report.streams if s.scaling]
    if not streams:
        return [*out, "Not run.\n"]
    rows = []
    for stream in streams:
        single = stream.scaling[0].events_per_second
        for s in stream.scaling:
            rows.append(
                [
                    stream.info.name,
                    str(s.workers),
                    f"{s.events:,}",
                    " + ".join(map(str, s.shares)) if s.shares else "not seen",
                    f"{s.ready_seconds:.1f}",
                    f"{s.fill_seconds:.2f}",
                    f"{s.received_seconds:.2f}",
                    f"**{_rate(s.events_per_second)}**",
                    f"{s.events_per_second / single:.2f}×" if single > 0 else "–",
                    f"{s.worker_cores:.2f}",
                    _rate(s.events_per_worker_core),
                    _us(s.broker_cpu_per_event),
                    str(s.duplicates),
                ]
            )
    header = [
        "stream",
        "workers",
        "events",
        "partitions per worker",
        "launch → all healthy and split, s",
        "producing the events, s",
        "first → N-th decision, s",
        "aggregate events/s",
        "÷ 1 worker",
        "worker cores used",
        "events/s per worker core",
        "broker CPU µs per event",
        "duplicate decisions",
    ]
    out += [
        table(header, rows, "lrrrrrrrrrrrr") + "\n",
        f"Batching {streams[0].scaling[0].max_events}/{streams[0].scaling[0].max_wait_ms}. "
        "*Worker cores used*: all the workers' CPU seconds ÷ the phase's wall seconds; "
        "*events/s per worker core* = aggregate events/s ÷ that. The workers, the broker "
        f"and this process share {_machine_cores(report)}, so more workers than cores "
        "mostly measures how they share them.\n",
    ]
    notes = [
        f"{stream.info.name}, {s.workers} worker(s): {s.split_note}"
        for stream in streams
        for s in stream.scaling
        if s.split_note
    ]
    if notes:
        out.append("**Split not confirmed**: " + "; ".join(notes) + ".\n")
    out += _projection(streams)
    return out


def _projection(streams: Sequence[StreamReport]) -> list[str]:
    rows = []
    basis = []
    for stream in streams:
        widest: ScalingResult = max(stream.scaling, key=lambda s: s.workers)
        per_core = widest.events_per_worker_core
        if math.isnan(per_core):
            continue
        basis.append(
            f"{stream.info.name}: {_rate(per_core)} events/s per worker core "
            f"(the {widest.workers}-worker run)"
        )
        rows += [
            [stream.info.name, str(cores), _rate(per_core * cores)] for cores in PROJECTED_CORES
        ]
    if not rows:
        return []
    return [
        "#### Projection for a larger machine (not measured)\n",
        "**A projection, not a measurement.** It multiplies the events/s per core of "
        "worker CPU measured above (with the most workers, so with the group's overhead "
        "in it) by the cores given to workers, assuming one worker process per core, at "
        "least as many partitions as workers, the broker on machines of its own (it needs "
        "the broker CPU per event in the table above, measured here with its idle polling "
        "included) and throughput growing linearly with cores — none of which this "
        "machine can check. Basis: " + "; ".join(basis) + ".\n",
        table(["stream", "worker cores", "projected events/s"], rows, "lrr") + "\n",
    ]


def _stages(stream: StreamReport) -> list[str]:
    title = (
        f"#### Pipeline stages in-process, {stream.info.name} (batches of {stream.stage_batch})\n"
    )
    if not stream.stages:
        return [
            title,
            f"Not measured: driving the worker's scoring pipeline failed ({stream.stage_note}).\n",
        ]
    rows = [
        [s.stage, f"{s.microseconds_per_event:.1f}", f"{1e6 / s.microseconds_per_event:,.0f}"]
        for s in stream.stages
    ]
    compute = sum(s.microseconds_per_event for s in stream.stages[1:])
    if compute:
        rows.append(["decode + score + decide", f"**{compute:.1f}**", f"**{1e6 / compute:,.0f}**"])
    events = stream.plan.stage_batches * stream.stage_batch
    return [
        title,
        table(["stage", "µs per event", "events/s on one core"], rows, "lrr") + "\n",
        f"Median of the run(s) over {events:,} events of the stream's mix, on one thread "
        "of this process, without Kafka, Faust or publishing. CPU time "
        "(`time.thread_time`; `time.process_time` for scoring, which includes ONNX "
        "Runtime's threads), so that other jobs on the machine do not inflate it. "
        f"{stream.flagged_share:.1%} of these events were flagged (a flagged event adds a "
        "detection and a source flag to its decision).\n",
    ]


def _profile(report: Report) -> list[str]:
    out = ["### Profile of the worker (py-spy), stream (a)\n"]
    profile = report.profile
    if profile is None:
        return [*out, (report.profile_note or "Not run.") + "\n"]
    return [
        *out,
        f"Batching {profile.max_events}/{profile.max_wait_ms}; py-spy recorded "
        f"{profile.seconds:.1f} s: from when the worker's topic of its own was filled "
        "(once the worker was healthy and py-spy attached) to the last of those events' "
        f"decisions, which it reached at {profile.events_per_second:,.0f} events/s under "
        "py-spy. It kept the "
        f"{profile.samples:,} samples in which a thread of the worker held the GIL: some "
        f"thread held it **{profile.gil_busy:.0%}** of the time. Shares below are of "
        "those samples; time in ONNX Runtime, in system calls and waiting for the GIL is "
        "not in them.\n",
        table(["thread", "share"], [[r.label, f"{r.share:.0%}"] for r in profile.threads], "lr")
        + "\n",
        table(
            ["code on the stack (inclusive; rows overlap)", "share"],
            [[r.label, f"{r.share:.0%}"] for r in profile.parts],
            "lr",
        )
        + "\n",
        table(
            ["top functions by own samples", "share"],
            [[f"`{r.label}`", f"{r.share:.1%}"] for r in profile.leaves],
            "lr",
        )
        + "\n",
    ]


def _failures(report: Report) -> list[str]:
    if not report.failures:
        return []
    return [
        "## Failures\n",
        "**Some phases failed in this run**; the page shows what the others measured.\n",
        *[f"- {failure}" for failure in report.failures],
        "",
    ]


def render_markdown(report: Report) -> str:
    """The markdown page for ``report``."""
    machine = report.machine
    assert machine is not None
    per_stream: list[str] = []
    for stream in report.streams:
        per_stream += [
            f"### {stream.info.name}\n",
            *_throughput(stream),
            *_outcomes(stream),
            *_steps(stream),
            *_stages(stream),
        ]
    out = [
        "# Benchmarks: the stream worker end to end\n",
        generated_by(
            report.command, "benchmarks/worker_throughput.py", "benchmarks/stream_report.py"
        )
        + " The scoring graph on its own is in [benchmarks.md](benchmarks.md).\n",
        *_failures(report),
        *_summary(report),
        *_method(report),
        "## Command and machine\n",
        f"```\n{report.command}\n```\n",
        machine_table(machine, [*_run_rows(), ["whole run", f"{report.seconds / 60:.1f} min"]])
        + "\n",
        "## Results\n",
        *per_stream,
        *_latency(report),
        *_sweep(report),
        *_cpu(report),
        *_scaling(report),
        *_profile(report),
    ]
    return "\n".join(out).rstrip() + "\n"
