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
fraction of the scoring stage. Variants run interleaved, round after round; medians go
into a :class:`benchmarks.drift_results.DriftCostReport`, which
:mod:`benchmarks.drift_report` renders. Nothing here asserts a time.
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
from pathlib import Path

import numpy as np
import onnx
from prometheus_client import CollectorRegistry

from benchmarks.drift_report import render_markdown
from benchmarks.drift_results import BATCH, DriftCost, DriftCostReport
from benchmarks.machine import describe_machine
from benchmarks.page import command_line, write_page
from monitor.config import MonitorConfig
from monitor.demo.model import load_digits_data, mlp_to_onnx, train_mlp
from monitor.demo.run import demo_event
from monitor.offline import calibrate_file
from monitor.worker.metrics import Metrics
from monitor.worker.models import load_model_detectors
from monitor.worker.records import InputMessage, OutputRecord
from monitor.worker.signals import drift_plans, signal_batch
from monitor.worker.stages.drift import DriftStage
from monitor.worker.stages.scoring import ScoringStage

__all__ = ["main", "measure"]

MODULE = "benchmarks.drift_cost"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-drift.md"
#: Distributions whose versions the page lists.
PACKAGES = ("advmon", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy")


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


async def measure(detector_path: Path, images: np.ndarray, rounds: int) -> DriftCost:
    """Median seconds of the scoring stage, the signals and the drift stage over
    ``images``, ``rounds`` interleaved rounds."""
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
    return DriftCost(
        events=len(images),
        scoring_s=statistics.median(samples["scoring"]),
        signals_s=statistics.median(samples["signals"]),
        drift_s=statistics.median(samples["drift"]),
        streams=len(plan.new_monitor().streams),
        rounds=rounds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the page and writes it to ``--output``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.splitlines()[0]
    )
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
        cost = asyncio.run(measure(work / "detector.json", images, 3 if args.quick else 15))
    report = DriftCostReport(
        command_line(MODULE, argv), describe_machine(load_before, PACKAGES), cost
    )
    write_page(render_markdown(report), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
