"""The markdown page (``docs/benchmarks.md``) for a run of :mod:`benchmarks.squeeze_scoring`:
what was measured, how, on what, and the figures."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from benchmarks.page import generated_by, machine_table, table
from benchmarks.scoring_results import (
    PROFILE_BATCH,
    SCORE_BATCH_SIZE,
    EndToEndResult,
    GraphResult,
    ProfileRow,
    ScoringReport,
)

__all__ = [
    "TARGET_RATIO",
    "end_to_end_table",
    "graph_table",
    "profile_table",
    "ratio_table",
    "render_markdown",
]

#: The fused graph should cost at most this many times ``1 + k`` bare passes.
TARGET_RATIO = 1.3


def _ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _rate(events: float, seconds: float) -> str:
    return f"{events / seconds:,.0f}" if seconds > 0 else "–"


def end_to_end_table(results: Sequence[EndToEndResult]) -> str:
    """Markdown table of the end-to-end runs."""
    rows = []
    for r in results:
        cli = (
            "failed"
            if r.cli_seconds is None
            else f"{r.cli_seconds:.2f} s ({_rate(r.events, r.cli_seconds)}/s)"
        )
        rows.append(
            [
                r.model,
                r.encoding,
                f"{r.events:,}",
                f"{r.file_mb:.1f}",
                _rate(r.events, r.read_seconds),
                f"**{_rate(r.events, r.loop_seconds)}**",
                f"{r.read_seconds / r.loop_seconds:.0%}",
                f"{r.call_seconds:.2f}",
                cli,
            ]
        )
    header = [
        "model",
        "input encoding",
        "events",
        "file MB",
        "decode only, events/s",
        "`advmon score`, events/s",
        "decode share",
        "`score_file` call, s",
        "`advmon score` process",
    ]
    return table(header, rows, "llrrrrrrr")


def graph_table(results: Sequence[GraphResult]) -> str:
    """Markdown table of fused-graph throughput."""
    rows = [
        [
            r.model,
            f"`{r.squeezer_spec}`",
            str(r.batch),
            str(r.rounds),
            _ms(r.fused_seconds),
            f"**{r.events_per_second:,.0f}**",
        ]
        for r in results
    ]
    header = ["model", "squeezers", "batch", "rounds", "fused ms/batch", "events/s"]
    return table(header, rows, "llrrrr")


def ratio_table(results: Sequence[GraphResult]) -> str:
    """Markdown table of the fused graph against bare passes."""
    rows = []
    for r in results:
        verdict = "yes" if r.ratio <= TARGET_RATIO else "**no**"
        rows.append(
            [
                r.model,
                str(r.k),
                str(r.batch),
                _ms(r.fused_seconds),
                _ms(r.bare_passes_seconds / (r.k + 1)),
                _ms(r.bare_passes_seconds),
                f"**{r.ratio:.2f}×**",
                f"{r.ratio_quartiles[0]:.2f}–{r.ratio_quartiles[1]:.2f}",
                verdict,
                _ms(r.stacked_seconds),
                f"{r.stacked_ratio:.2f}×",
            ]
        )
    header = [
        "model",
        "k",
        "batch N",
        "fused ms",
        "1 bare pass ms",
        "1+k bare passes ms",
        "fused ÷ (1+k) passes",
        "its quartiles",
        f"median ≤ {TARGET_RATIO}×",
        "1 bare pass on (1+k)·N rows ms",
        "fused ÷ stacked pass",
    ]
    return table(header, rows, "lrrrrrrrlrr")


def profile_table(profiles: Mapping[str, list[ProfileRow]], top: int = 6) -> str:
    """Markdown table of the heaviest operators in each fused graph, with part totals."""
    rows = []
    for model, profile in profiles.items():
        parts: dict[str, float] = defaultdict(float)
        for row in profile:
            parts[row.part] += row.share
        split = ", ".join(f"{p} {parts.get(p, 0.0):.0%}" for p in ("model", "squeezers", "scoring"))
        rows.append([f"**{model}**", f"*{split}*", "", ""])
        rows.extend(
            [
                "",
                f"{row.part}: {row.op_type}",
                f"{row.microseconds:,.0f}",
                f"{row.share:.1%}",
            ]
            for row in profile[:top]
        )
    return table(["model", "part: operator", "µs per run", "share"], rows, "llrr")


def render_markdown(report: ScoringReport) -> str:
    """The benchmarks page for ``report``."""
    plan = report.plan
    quick_note = (
        "\n> **Smoke run (`--quick`)**: few events and few rounds; `make bench` runs the "
        "full plan.\n"
        if plan.name == "quick"
        else ""
    )
    model_lines = "\n".join(
        f"- **{m.name}** — {m.description}; squeezers `{m.squeezer_spec}`" for m in report.models
    )
    run_rows = [
        ["execution provider", f"{report.provider} (device `cpu`)"],
        [
            "intra-op threads",
            f"{report.intra_op_threads} in the graph runs: ONNX Runtime's default (one per "
            "physical core), which the `advmon score` runs use",
        ],
    ]
    intro = generated_by(
        report.command, "benchmarks/squeeze_scoring.py", "benchmarks/scoring_report.py"
    )
    return f"""\
# Benchmarks: feature-squeezing scoring

{intro}
{quick_note}
## What is measured

1. **`advmon score` end to end** — `monitor.offline.score_file`, the function behind the
   `advmon score` command, on JSON-lines files of demo-format inference events, batch
   size {SCORE_BATCH_SIZE}, device `cpu`. The detector is calibrated first with
   `monitor.offline.calibrate_file` (the digits MLP with its preset squeezers; the CNN
   with the NDSS MNIST squeezers). "Decode only" reads and validates the same file into
   batches without scoring; "`advmon score`, events/s" is `ScoreReport.events_per_second`
   (read, score and write the output, as the command prints it); the `score_file` call
   adds loading the detector (hash check, graph build, session start); the
   "`advmon score` process" column runs the installed console script once, interpreter
   start-up included. Medians of {plan.end_to_end_repeats} repeat(s), the two
   encodings alternating.
2. **The fused graph alone** — `detectors.SqueezeScorer.score` on a pre-stacked float32
   batch of uniform random values in [0, 1].
3. **Fused graph ÷ (1 + k) bare passes** — `k` is the number of squeezers; scoring
   without fusion needs the model on the original and on each squeezed copy. The bare
   model runs in its own session from `detectors.create_session(model, "cpu")`, and the
   (1 + k) passes are really run, back to back, on the same batch (not one pass
   multiplied). Target: **≤ {TARGET_RATIO}×**. For reference, one bare pass over the
   (1 + k)·N stacked rows — the model work inside the fused graph — is timed too.
4. **Where the fused graph spends its time** — ONNX Runtime's profiler
   (`SessionOptions.enable_profiling`), batch {PROFILE_BATCH}, kernel time split into the
   model, the squeezers (including the Concat that stacks the copies) and the scoring tail
   (softmax, L1 distances, max).

Method for 2–4: {plan.warmup_runs} warm-up runs of each variant, then rounds in which the
fused graph, the (1 + k) bare passes and the stacked pass each run once, in rotating
order, until at least {plan.min_rounds} rounds and {plan.min_seconds:g} s (at most
{plan.max_rounds} rounds). Times are medians per batch; ratios are medians of the
per-round ratios, so a burst of load from elsewhere hits both sides of a ratio alike;
their quartiles show how much such load moved them.
The fused graph is built with `detectors.build_squeeze_graph(model,
detectors.parse_squeezer_spec(spec), output_kind="logits")`.

Models:

{model_lines}

## Machine

{machine_table(report.machine, run_rows)}

## 1. `advmon score` end to end

{end_to_end_table(report.end_to_end)}

## 2. Fused graph alone

{graph_table(report.graphs)}

## 3. Fused graph vs (1 + k) bare forward passes

{ratio_table(report.graphs)}

## 4. Where the fused graph spends its time (batch {PROFILE_BATCH})

{profile_table(report.profiles)}
"""
