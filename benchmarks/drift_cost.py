"""What the drift stage costs per event, against the scoring stage on the same events.

Run ``make bench`` (or ``.venv/bin/python -m benchmarks.drift_cost``); ``--quick`` for a
smoke run, ``--output PATH`` to write the page somewhere other than
``docs/benchmarks-drift.md``. On the demo digits model (CPU execution provider), for the
same batches of native events (64 per batch, as the worker batches them):

* **scoring stage**: :meth:`monitor.worker.stages.scoring.ScoringStage.process` with drift off:
  decode, validate, fused squeeze graph, decisions (publishing is a no-op);
* **signals**: what the scoring stage adds with drift on: computing each scored batch's
  signal columns and serialising its signals record (timed on its own, on the verdicts
  of the scored batches);
* **drift stage**: :meth:`monitor.worker.stages.drift.DriftStage.process` on those records:
  parsing, the River detectors of the default signal set, and the checkpoint (pickling
  the state into the table, here a dict).

The drift cost is *signals + drift stage*; the page reports it in µs per event and as a
fraction of the scoring stage. Variants run interleaved, round after round; medians are
reported. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from prometheus_client import CollectorRegistry

from benchmarks.squeeze_scoring import describe_machine, machine_table_rows
from monitor.config import MonitorConfig
from monitor.demo.model import load_digits_data, mlp_to_onnx, train_mlp
from monitor.demo.run import demo_event
from monitor.offline import calibrate_file
from monitor.worker.metrics import Metrics
from monitor.worker.stages.drift import DriftStage, drift_plans, signal_batch
from monitor.worker.stages.scoring import ScoringStage, load_model_detectors
from monitor.worker.stages.scoring_pipeline import InputMessage, OutputRecord

__all__ = ["main"]

BATCH = 64
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-drift.md"


@dataclass(frozen=True)
class Result:
    events: int
    scoring_s: float
    signals_s: float
    drift_s: float
    streams: int
    rounds: int

    def per_event_us(self, seconds: float) -> float:
        return seconds / self.events * 1e6

    @property
    def drift_cost_s(self) -> float:
        return self.signals_s + self.drift_s


async def _nothing(records: Sequence[OutputRecord]) -> None:
    return None


def _messages(images: np.ndarray) -> list[list[InputMessage]]:
    batches = []
    for start in range(0, len(images), BATCH):
        batches.append(
            [
                InputMessage(
                    "inference-events",
                    0,
                    i,
                    None,
                    demo_event(f"e{i}", images[i], as_tensor=True, source=f"s{i % 7}"),
                    1_700_000_000.0 + i,
                )
                for i in range(start, min(start + BATCH, len(images)))
            ]
        )
    return batches


async def measure(detector_path: Path, images: np.ndarray, rounds: int) -> Result:
    config = MonitorConfig.model_validate(
        {"models": [{"id": "digits", "detector": str(detector_path)}]}
    )
    batches = _messages(images)
    models = load_model_detectors(config)
    plan = drift_plans(models)["digits"]
    metrics = Metrics.create(CollectorRegistry())
    # The baseline: the scoring stage with drift off.
    plain = ScoringStage(config, models, metrics, _nothing, device="cpu")
    await plain.on_start()
    scored = []
    for messages in batches:
        (batch,) = plain.pipeline.decode(messages).batches
        inputs = batch.stacked()
        verdict = plain.detectors["digits"].score(inputs)
        times = [m.timestamp or 0.0 for m in batch.messages]
        scored.append((batch, times, inputs, verdict.scores))

    def signals() -> list[bytes]:
        return [
            signal_batch(plan, batch.messages, batch.rows, batch.events, times, inputs, scores)
            .model_dump_json()
            .encode()
            for batch, times, inputs, scores in scored
        ]

    records = signals()

    async def score() -> None:
        for messages in batches:
            await plain.process(messages)

    async def drift() -> None:
        stage = DriftStage(config, {"digits": plan}, {}, metrics, _nothing)
        # As the worker takes them: up to 256 records per take, one checkpoint per take.
        for start in range(0, len(records), 256):
            await stage.process(records[start : start + 256])

    async def compute_signals() -> None:
        signals()

    variants = {"scoring": score, "signals": compute_signals, "drift": drift}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        await run()  # warm-up
    names = list(variants)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            began = time.perf_counter()
            await variants[name]()
            samples[name].append(time.perf_counter() - began)
    await plain.on_stop()
    return Result(
        events=len(images),
        scoring_s=statistics.median(samples["scoring"]),
        signals_s=statistics.median(samples["signals"]),
        drift_s=statistics.median(samples["drift"]),
        streams=len(plan.new_monitor().streams),
        rounds=rounds,
    )


def render(result: Result, machine_rows: list[list[str]], command: str) -> str:
    us = result.per_event_us
    share = result.drift_cost_s / result.scoring_s
    rows = [
        ("scoring stage (drift off)", us(result.scoring_s), 1.0),
        (
            "signals (columns + record, in the scoring stage)",
            us(result.signals_s),
            result.signals_s / result.scoring_s,
        ),
        (
            "drift stage (detectors + checkpoint)",
            us(result.drift_s),
            result.drift_s / result.scoring_s,
        ),
        ("**drift cost** (signals + drift stage)", us(result.drift_cost_s), share),
    ]
    lines = [
        "# Drift stage cost",
        "",
        f"Produced by `{command}`. The drift cost per event of the default signal set "
        f"({result.streams} detector streams: top1, entropy, score, input_mean, input_std "
        "and one stream per predicted class) against the scoring stage on the same "
        f"{result.events:,} events of the demo digits model, batches of {BATCH}; medians of "
        f"{result.rounds} interleaved rounds. Aim: at most 10% of the scoring stage.",
        "",
        "| stage | µs per event | ÷ scoring stage |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {value:.2f} | {ratio:.3f} |" for name, value, ratio in rows]
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine_rows]
    lines += [
        "",
        "See `benchmarks/drift_cost.py` for what each row times.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    data = load_digits_data()
    rng = np.random.default_rng(0)
    n = 1024 if args.quick else 8192
    images = data.test_x[rng.integers(0, len(data.test_x), n)]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        onnx.save(mlp_to_onnx(train_mlp(data.train_x, data.train_y)), work / "model.onnx")
        benign = work / "benign.jsonl"
        benign.write_bytes(
            b"".join(
                demo_event(f"cal-{i}", image, as_tensor=True, source="cal") + b"\n"
                for i, image in enumerate(data.calibration_x)
            )
        )
        calibrate_file(work / "model.onnx", benign, work / "detector.json", device="cpu")
        result = asyncio.run(measure(work / "detector.json", images, 3 if args.quick else 15))
    machine = describe_machine(0, "CPUExecutionProvider", load_before)
    command = "python -m benchmarks.drift_cost" + (" --quick" if args.quick else "")
    page = render(result, machine_table_rows(machine), command)
    args.output.write_text(page, encoding="utf-8")
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
