"""The markdown page (``docs/benchmarks-stream.md``) for a run of
:mod:`benchmarks.worker_throughput`: what was measured, how, on what, and the figures."""

from __future__ import annotations

import math

from benchmarks.page import generated_by, machine_table, table
from benchmarks.stream_results import (
    ADVERSARIAL_EVERY,
    ATTACKERS,
    IDLE_SECONDS,
    IDLE_SLEEP_S,
    POLL_MS,
    PY_SPY_RATE_HZ,
    USERS,
    BaselineResult,
    CpuSeconds,
    Report,
    WorkerResult,
)
from monitor.demo.run import ATTACK_EPS

__all__ = ["TARGET_RATIO", "render_markdown"]

#: The worker should reach at least this share of the bare consumer's events/s.
TARGET_RATIO = 0.5


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
        f"{cpu.cores(seconds):.2f}"
        for seconds in (cpu.worker, cpu.broker, cpu.bench, cpu.others, cpu.machine)
    ]


def _ratio(events_per_second: float, baseline: BaselineResult) -> float:
    return events_per_second / baseline.events_per_second


def _target(workers: list[WorkerResult], baseline: BaselineResult) -> str:
    met = [w.label for w in workers if _ratio(w.events_per_second, baseline) >= TARGET_RATIO]
    verdict = f"met with batching {', '.join(met)}" if met else "not met with any batching"
    return f"Target: worker ÷ bare consumer ≥ {TARGET_RATIO} with the demo model; {verdict}."


def _summary(report: Report, baseline: BaselineResult) -> list[str]:
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
    for w in report.workers:
        lat = w.latency
        rows.append(
            [
                "`advmon worker`",
                w.label,
                f"{w.events_per_second:,.0f}",
                f"**{_ratio(w.events_per_second, baseline):.3f}**",
                f"{w.cpu_per_event * 1e6:,.0f}",
                _ms(lat.quantile(0.5)) if lat else "–",
                _ms(lat.quantile(0.99)) if lat else "–",
            ]
        )
    header = [
        "",
        "batching max_events / max_wait_ms",
        "events/s",
        "÷ bare consumer",
        "CPU µs per event (consumer's process)",
        "latency p50, ms",
        "latency p99, ms",
    ]
    return [
        "## Summary\n",
        table(header, rows, "llrrrrr") + "\n",
        _target(report.workers, baseline)
        + " Latency is event send → decision received, at an offered load of half the "
        f"worker's measured throughput. {report.plan.events:,} events.\n",
    ]


def _method(report: Report) -> list[str]:
    plan = report.plan
    return [
        "## What is measured\n",
        f"**Broker:** {report.broker_description}, on this machine. One "
        "single-partition topic pre-filled with "
        f"**{plan.events:,} demo digit events** (mean {report.event_bytes:,.0f} bytes each): "
        f"benign 8×8 digits from {len(USERS)} users, half as nested lists and half as base64 "
        f"tensor payloads, and every {ADVERSARIAL_EVERY}th event ({report.adversarial:,} in "
        f"all, {100 / ADVERSARIAL_EVERY:g} %) a PGD adversarial digit (L∞ ε={ATTACK_EPS}) as "
        f"a tensor payload from one of {len(ATTACKERS)} attacking sources. Every event "
        "carries `ts`. The detector is the demo's (`monitor.demo.model.train_mlp` → "
        "`mlp_to_onnx` → `monitor.offline.calibrate_file`, preset squeezers), on the CPU "
        "execution provider, "
        "policy `enforce` (so flagged events also produce detections and source flags, and "
        "the attackers get quarantined). The broker, the worker and this process share the "
        "machine's CPUs.\n",
        "1. **Bare consumer** — an `aiokafka.AIOKafkaConsumer` (defaults, no group) "
        "assigned the partition seeks to the beginning and `getmany`s until it has "
        f"`orjson.loads`-decoded all {plan.events:,} values; events/s = N ÷ (first fetch "
        f"request → N-th record decoded), median of {plan.baseline_repeats} run(s). No "
        "validation, no scoring, no output.",
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
        "shown as a cross-check. Source-scoped (quarantine) decisions are not counted.",
        "3. **Latency** — right after step 2, the same worker is offered **half the "
        f"throughput it just measured** for {plan.latency_seconds:.0f} s, on a second "
        "topic it also reads (empty until then): events of the same mix, sent one by one "
        "at a steady rate by an `AIOKafkaProducer` (acks=all, linger 0), each with `ts` = "
        "its send time (RFC 3339, `+00:00`). Latency = decision receive time − event send "
        "time, for every event; decision record timestamp − send time (without the broker "
        "acknowledgement and the fetch) is shown too. The decisions consumer polls for at "
        f"most {POLL_MS} ms and, after an empty poll, pauses its partition for "
        f"{IDLE_SLEEP_S * 1e3:.0f} ms, so a receive time is late by at most "
        f"{POLL_MS + IDLE_SLEEP_S * 1e3:.0f} ms. Then {IDLE_SECONDS:.0f} s without traffic, "
        "with the worker's CPU measured.",
        "4. **Where the time goes** — the worker's `/metrics` histograms "
        "(`advmon_scoring_seconds`, `advmon_batch_size_events`, "
        "`advmon_event_to_decision_seconds`) after each phase; CPU seconds of the worker, "
        "the broker, this process and the whole machine per phase; the per-event cost of "
        f"the pipeline's stages in-process on batches of {report.stage_batch} "
        "(`ScoringPipeline.decode`, `Detector.score`, `ScoringPipeline.decide`, no Kafka, "
        f"no Faust); and a py-spy profile (`--gil`, {PY_SPY_RATE_HZ} Hz, all threads) of "
        f"another worker run on the topic's first {plan.profile_events:,} events.\n",
    ]


def _run_rows() -> list[list[str]]:
    return [
        ["execution provider", "CPUExecutionProvider (`ADVMON_SCORING__DEVICE=cpu`)"],
        ["ONNX Runtime intra-op threads", "the worker's default (unset: ONNX Runtime chooses)"],
    ]


def _throughput(report: Report, baseline: BaselineResult) -> list[str]:
    rows = [
        [
            "bare consumer",
            f"{baseline.seconds:.3f}",
            f"{baseline.events_per_second:,.0f}",
            f"{baseline.events / baseline.first_to_last_seconds:,.0f}",
            f"{baseline.cpu_per_event * 1e6:,.1f} / {baseline.broker_cpu_per_event * 1e6:,.1f}",
            *["–"] * 6,
        ]
    ]
    for w in report.workers:
        rows.append(
            [
                f"worker {w.label}"
                + (f", {w.events:,} events" if w.events != report.plan.events else ""),
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
    out = [
        "### Throughput\n",
        table(header, rows, "lrrrrrrrrrr") + "\n",
        "*CPU µs per event*: CPU seconds of the consumer's or the worker's process, and of "
        "the broker, over the measured phase ÷ events. *seconds*: bare consumer, first "
        "fetch → N-th record (median; runs: "
        + ", ".join(f"{s:.3f}" for s in baseline.all_seconds)
        + "); worker, first → N-th decision received. *Other clock*: bare consumer from "
        "its first record instead of its first fetch; worker from the decisions' record "
        "timestamps. *Mean batch* and *scoring* come from the worker's "
        "`advmon_batch_size_events` and `advmon_scoring_seconds` (time from handing a "
        "batch to the scoring thread to its verdict) over the run; *scoring ÷ wall* is "
        f"their sum over the measured interval. Producing the {report.plan.events:,} events "
        f"took {report.produce_seconds:.1f} s.\n",
    ]
    errors = sorted({w.metrics_error for w in report.workers if w.metrics_error})
    if errors:
        out.append(
            "**The worker's `/metrics` page did not answer 200 in this run**, so the columns "
            "from its histograms are empty. The worker logged: "
            + "; ".join(f"`{e}`" for e in errors)
            + ".\n"
        )
    return out


def _latency(workers: list[WorkerResult]) -> list[str]:
    rows = []
    for w in workers:
        lat = w.latency
        if lat is None:
            continue
        histogram = lat.metrics.event_to_decision
        rows.append(
            [
                w.label,
                f"{lat.rate:,.0f}",
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
        table(header, rows, "lrrrrrrrrr") + "\n",
        "The worker's own `advmon_event_to_decision_seconds` runs from the event's `ts` "
        "to the acknowledgement of its outputs; its quantiles are the upper bounds of the "
        "histogram buckets holding them.\n",
    ]


def _cpu(report: Report, baseline: BaselineResult) -> list[str]:
    rows = [["bare consumer", f"{baseline.cpu.wall:.2f}", *_cores(baseline.cpu)]]
    for w in report.workers:
        phases = {
            "throughput": w.cpu,
            "latency": w.latency.cpu if w.latency else None,
            "idle, no traffic": w.idle,
        }
        rows += [
            [f"worker {w.label}: {phase}", f"{cpu.wall:.2f}", *_cores(cpu)]
            for phase, cpu in phases.items()
            if cpu is not None
        ]
    header = [
        "phase",
        "wall, s",
        "worker, cores",
        "broker, cores",
        "this process",
        "other processes",
        "machine busy",
    ]
    return [
        "### CPU per phase\n",
        table(header, rows, "lrrrrrr") + "\n",
        "CPU seconds ÷ wall seconds: `/proc/PID/stat` for the worker and the broker, "
        "`getrusage` for this process (the bare consumer, the producer, the decisions "
        "consumer), `/proc/stat` for the whole machine (*machine busy*, all CPUs); *other "
        "processes* is *machine busy* minus the other three. Throughput phases run from the "
        "worker answering `/healthz` to its N-th decision (the worker may have started "
        "deciding just before).\n",
    ]


def _stages(report: Report) -> list[str]:
    rows = [
        [s.stage, f"{s.microseconds_per_event:.1f}", f"{1e6 / s.microseconds_per_event:,.0f}"]
        for s in report.stages
    ]
    compute = sum(s.microseconds_per_event for s in report.stages[1:])
    if compute:
        rows.append(["decode + score + decide", f"**{compute:.1f}**", f"**{1e6 / compute:,.0f}**"])
    return [
        f"### Pipeline stages in-process (batches of {report.stage_batch})\n",
        table(["stage", "µs per event", "events/s on one core"], rows, "lrr") + "\n",
        f"Median of {report.plan.stage_rounds} run(s) over {20 * report.stage_batch:,} "
        "events of the benchmark's mix, on one thread of this process, without Kafka, "
        "Faust or publishing. CPU time (`time.thread_time`; `time.process_time` for "
        "scoring, which includes ONNX Runtime's threads), so that other jobs on the machine "
        f"do not inflate it. {report.flagged_share:.1%} of these events were flagged (a "
        "flagged event adds a detection and a source flag to its decision).\n",
    ]


def _profile(report: Report) -> list[str]:
    out = ["### Profile of the worker (py-spy)\n"]
    profile = report.profile
    if profile is None:
        return [*out, (report.profile_note or "Not run.") + "\n"]
    return [
        *out,
        f"Batching {profile.max_events}/{profile.max_wait_ms}; py-spy recorded "
        f"{profile.seconds:.1f} s (the worker decided the pre-filled topic at "
        f"{profile.events_per_second:,.0f} events/s under it) and kept the "
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


def render_markdown(report: Report) -> str:
    """The markdown page for ``report``."""
    baseline, machine = report.baseline, report.machine
    assert baseline is not None
    assert machine is not None
    out = [
        "# Benchmarks: the stream worker end to end\n",
        generated_by(
            report.command, "benchmarks/worker_throughput.py", "benchmarks/stream_report.py"
        )
        + " The scoring graph on its own is in [benchmarks.md](benchmarks.md).\n",
        *_summary(report, baseline),
        *_method(report),
        "## Command and machine\n",
        f"```\n{report.command}\n```\n",
        machine_table(machine, _run_rows()) + "\n",
        "## Results\n",
        *_throughput(report, baseline),
        *_latency(report.workers),
        *_cpu(report, baseline),
        *_stages(report),
        *_profile(report),
    ]
    return "\n".join(out).rstrip() + "\n"
