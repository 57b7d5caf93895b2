"""The markdown page (``docs/benchmarks-drift.md``) for a run of
:mod:`benchmarks.drift_cost`: what was measured, how, on what, and the figures."""

from __future__ import annotations

from benchmarks.drift_results import BATCH, DriftCostReport
from benchmarks.page import generated_by, machine_table, table

__all__ = ["AIM", "render_markdown"]

#: The drift cost should be at most this share of the scoring stage's.
AIM = 0.1


def render_markdown(report: DriftCostReport) -> str:
    """The drift cost page for ``report``."""
    cost = report.cost
    share = cost.drift_cost_s / cost.scoring_s
    rows = [
        ("scoring stage (drift off)", cost.scoring_s),
        ("signals (columns + record, in the scoring stage)", cost.signals_s),
        ("drift stage (detectors + checkpoint)", cost.drift_s),
        ("**drift cost** (signals + drift stage)", cost.drift_cost_s),
    ]
    run_rows = [
        ["execution provider", "CPUExecutionProvider (device `cpu`)"],
        ["intra-op threads", "ONNX Runtime's default (the scoring stage sets none)"],
    ]
    lines = [
        "# Drift stage cost",
        "",
        generated_by(report.command, "benchmarks/drift_cost.py", "benchmarks/drift_report.py"),
        "",
        f"The drift cost per event of the default signal set ({cost.streams} detector "
        "streams: top1, entropy, score, input_mean, input_std and one stream per predicted "
        "class) against the scoring stage on the same "
        f"{cost.events:,} events of the demo digits model, batches of {BATCH}; medians of "
        f"{cost.rounds} interleaved rounds. The module docstring of "
        "`benchmarks/drift_cost.py` says what each row times. Aim: drift cost at most "
        f"{AIM:.0%} of the scoring stage; {'met' if share <= AIM else 'not met'} in this run.",
        "",
        table(
            ["stage", "µs per event", "÷ scoring stage"],
            [
                [name, f"{cost.per_event_us(s):.2f}", f"{s / cost.scoring_s:.3f}"]
                for name, s in rows
            ],
            "lrr",
        ),
        "",
        "## Machine",
        "",
        machine_table(report.machine, run_rows),
        "",
    ]
    return "\n".join(lines)
