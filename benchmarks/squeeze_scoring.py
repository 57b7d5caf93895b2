"""How fast advmon scores events, and what the fused squeeze graph costs over the model.

Run ``make bench`` (or ``.venv/bin/python -m benchmarks.squeeze_scoring``); ``--quick``
for a smoke run of a few seconds, ``--output PATH`` to write the page somewhere other
than ``docs/benchmarks.md``. Three things are measured on the CPU execution provider:

1. ``advmon score`` end to end on JSON-lines event files of the demo digits model (and
   of an MNIST-sized CNN), with nested-list and with base64 tensor-payload inputs;
2. :meth:`detectors.SqueezeScorer.score` alone on pre-stacked float32 batches;
3. the fused graph's time over ``1 + k`` bare forward passes of the model on the same
   batch (``k`` squeezers), which is what scoring costs without fusing.

Timed variants run interleaved, round after round, so that a neighbour's load on the
machine slows all of them alike; medians are reported. The figures go into a
:class:`benchmarks.scoring_results.ScoringReport`, which :mod:`benchmarks.scoring_report`
renders. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.machine import describe_machine, physical_cores
from benchmarks.models import (
    BenchmarkModel,
    cifar_like_cnn,
    digits_mlp,
    mnist_like_cnn,
    mnist_like_images,
)
from benchmarks.page import command_line, write_page
from benchmarks.scoring_report import render_markdown
from benchmarks.scoring_results import (
    FULL_PLAN,
    PROFILE_BATCH,
    QUICK_PLAN,
    SCORE_BATCH_SIZE,
    BenchmarkPlan,
    EndToEndResult,
    GraphResult,
    ProfileRow,
    ScoringReport,
)
from detectors import (
    FUSED_OUTPUTS,
    Detector,
    SqueezeScorer,
    build_squeeze_graph,
    create_session,
    parse_squeezer_spec,
)
from monitor.demo.model import DigitsData, load_digits_data
from monitor.demo.run import demo_event
from monitor.offline import calibrate_file, read_event_batches, score_file

__all__ = ["main", "run_benchmarks"]

MODULE = "benchmarks.squeeze_scoring"
DEFAULT_OUTPUT = Path("docs/benchmarks.md")
#: Distributions whose versions the page lists.
PACKAGES = ("advmon", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy")


# -- timing --------------------------------------------------------------------------


def time_interleaved(
    variants: Mapping[str, Callable[[], object]], plan: BenchmarkPlan
) -> dict[str, list[float]]:
    """Run every variant once per round, rotating their order; return seconds per run.

    After ``plan.warmup_runs`` untimed runs of each, rounds continue until at least
    ``plan.min_rounds`` rounds and ``plan.min_seconds`` of measuring, or
    ``plan.max_rounds`` rounds.
    """
    for run in variants.values():
        for _ in range(plan.warmup_runs):
            run()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    rounds = 0
    while rounds < plan.max_rounds and (
        rounds < plan.min_rounds or time.perf_counter() - started < plan.min_seconds
    ):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            begin = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - begin)
        rounds += 1
    return samples


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4)
    return first, third


def bench_graph(
    bench: BenchmarkModel, batch_size: int, plan: BenchmarkPlan, threads: int, seed: int = 0
) -> GraphResult:
    """Time the fused graph, ``1 + k`` bare passes and one stacked pass on one batch."""
    squeezers = parse_squeezer_spec(bench.squeezer_spec)
    k = len(squeezers)
    fused = build_squeeze_graph(bench.model, squeezers, output_kind="logits")
    scorer = SqueezeScorer(fused, device="cpu", intra_op_threads=threads)
    bare = create_session(bench.model, "cpu", threads)
    input_name = bare.get_inputs()[0].name
    batch = np.random.default_rng(seed).random((batch_size, *bench.input_shape), np.float32)
    stacked = np.concatenate([batch] * (k + 1))

    def bare_passes() -> None:
        for _ in range(k + 1):
            bare.run(None, {input_name: batch})

    samples = time_interleaved(
        {
            "fused": lambda: scorer.score(batch),
            "bare": bare_passes,
            "stacked": lambda: bare.run(None, {input_name: stacked}),
        },
        plan,
    )
    fused_times, bare_times, stacked_times = samples["fused"], samples["bare"], samples["stacked"]
    return GraphResult(
        model=bench.name,
        squeezer_spec=bench.squeezer_spec,
        k=k,
        batch=batch_size,
        rounds=len(fused_times),
        fused_seconds=statistics.median(fused_times),
        bare_passes_seconds=statistics.median(bare_times),
        stacked_seconds=statistics.median(stacked_times),
        ratio=statistics.median(f / b for f, b in zip(fused_times, bare_times, strict=True)),
        stacked_ratio=statistics.median(
            f / s for f, s in zip(fused_times, stacked_times, strict=True)
        ),
        ratio_quartiles=_quartiles([f / b for f, b in zip(fused_times, bare_times, strict=True)]),
    )


def _graph_parts(fused: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``fused`` whose node names start with the part they belong to.

    ONNX Runtime keeps a node's name in the profile (and in the names of the nodes it
    fuses it into), so the profile can be split into model, squeezers and scoring.
    """
    labelled = onnx.ModelProto()
    labelled.CopyFrom(fused)
    for index, node in enumerate(labelled.graph.node):
        outputs = list(node.output)
        if any(o.startswith("advmon/score/") or o in FUSED_OUTPUTS for o in outputs):
            part = "scoring"
        elif node.op_type == "Concat" and "input" in node.input:
            part = "squeezers"  # stacks the original and the squeezed copies
        elif outputs[0].startswith("model/"):
            part = "model"
        else:
            part = "squeezers"
        node.name = f"{part}/{node.name or node.op_type}_{index}"
    return labelled


def profile_fused(
    bench: BenchmarkModel, batch_size: int, plan: BenchmarkPlan, threads: int
) -> list[ProfileRow]:
    """Kernel time per part and operator type, from ONNX Runtime's profiler."""
    squeezers = parse_squeezer_spec(bench.squeezer_spec)
    fused = _graph_parts(build_squeeze_graph(bench.model, squeezers, output_kind="logits"))
    batch = np.random.default_rng(0).random((batch_size, *bench.input_shape), np.float32)
    with tempfile.TemporaryDirectory() as workdir:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(workdir) / "fused")
        session = ort.InferenceSession(
            fused.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        for _ in range(plan.warmup_runs + plan.profile_runs):
            session.run(None, {"input": batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[tuple[str, str], float] = defaultdict(float)
    # Kernel events carry no run number but come in run order: skip each node's
    # first ``warmup_runs`` occurrences.
    seen: dict[str, int] = defaultdict(int)
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        seen[name] += 1
        if seen[name] <= plan.warmup_runs:
            continue
        part = next((p for p in ("scoring", "squeezers", "model") if f"{p}/" in name), "model")
        totals[(part, str(event["args"].get("op_name", "?")))] += float(event["dur"])
    grand = sum(totals.values()) or 1.0
    rows = [
        ProfileRow(part, op, total / plan.profile_runs, total / grand)
        for (part, op), total in totals.items()
    ]
    return sorted(rows, key=lambda row: -row.microseconds)


# -- end to end ----------------------------------------------------------------------


def write_events(path: Path, images: np.ndarray, *, as_tensor: bool) -> None:
    """Write one demo-format inference event per image."""
    with open(path, "wb") as out:
        for i, image in enumerate(images):
            out.write(demo_event(f"event-{i}", image, as_tensor=as_tensor, source="bench") + b"\n")


def _advmon_command() -> list[str]:
    script = Path(sys.executable).with_name("advmon")
    return [str(script)] if script.exists() else [sys.executable, "-m", "monitor"]


def _read_only_seconds(events_path: Path, input_shape: tuple[int, ...]) -> float:
    started = time.perf_counter()
    for _ in read_event_batches(events_path, input_shape, SCORE_BATCH_SIZE, lambda bad: None):
        pass
    return time.perf_counter() - started


def _score_once(detector_path: Path, events_path: Path, expected: int) -> tuple[float, float]:
    """Run ``score_file``; return its loop seconds and the call's wall seconds."""
    out_path = events_path.with_suffix(".scores.jsonl")
    started = time.perf_counter()
    report = score_file(
        detector_path, events_path, out_path, batch_size=SCORE_BATCH_SIZE, device="cpu"
    )
    call_seconds = time.perf_counter() - started
    if report.scored != expected or report.bad_lines:
        raise RuntimeError(f"scored {report.scored} of {expected} benchmark events")
    return report.seconds, call_seconds


def _score_in_process(detector_path: Path, events_path: Path) -> float | None:
    """Wall seconds of one ``advmon score`` process, or ``None`` when it failed."""
    command = [
        *_advmon_command(),
        "score",
        "--detector",
        str(detector_path),
        "--events",
        str(events_path),
        "--out",
        str(events_path.with_suffix(".scores.jsonl")),
        "--device",
        "cpu",
        "--batch-size",
        str(SCORE_BATCH_SIZE),
    ]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        print(f"advmon score failed:\n{finished.stderr}", file=sys.stderr)
        return None
    return time.perf_counter() - started


def bench_end_to_end(
    label: str,
    detector_path: Path,
    images: np.ndarray,
    workdir: Path,
    plan: BenchmarkPlan,
) -> list[EndToEndResult]:
    """Score ``images`` as events, nested-list and tensor-payload encoded.

    The two files are read and scored in alternation, repeat after repeat, so that load
    from elsewhere on the machine does not favour one encoding.
    """
    shape = tuple(int(d) for d in images.shape[1:])
    slug = label.split()[0].lower()
    files = {
        "nested list": workdir / f"{slug}-nested.jsonl",
        "tensor (base64)": workdir / f"{slug}-tensor.jsonl",
    }
    for encoding, path in files.items():
        write_events(path, images, as_tensor=encoding != "nested list")
    timings: dict[str, dict[str, list[float]]] = {
        encoding: {"read": [], "loop": [], "call": []} for encoding in files
    }
    for _ in range(plan.end_to_end_repeats):
        for encoding, path in files.items():
            timings[encoding]["read"].append(_read_only_seconds(path, shape))
            loop_seconds, call_seconds = _score_once(detector_path, path, len(images))
            timings[encoding]["loop"].append(loop_seconds)
            timings[encoding]["call"].append(call_seconds)
    provider = Detector.from_file(detector_path, device="cpu").provider
    return [
        EndToEndResult(
            model=label,
            encoding=encoding,
            events=len(images),
            file_mb=path.stat().st_size / 1e6,
            provider=provider,
            read_seconds=statistics.median(timings[encoding]["read"]),
            loop_seconds=statistics.median(timings[encoding]["loop"]),
            call_seconds=statistics.median(timings[encoding]["call"]),
            cli_seconds=_score_in_process(detector_path, path),
        )
        for encoding, path in files.items()
    ]


# -- main ----------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_benchmarks(plan: BenchmarkPlan, command: str) -> ScoringReport:
    """Run every measurement and return the figures; ``command`` is the command line the
    report names."""
    load_before = os.getloadavg()
    threads = physical_cores()
    data: DigitsData = load_digits_data()
    digits = digits_mlp(data)
    mnist = mnist_like_cnn()
    models = (digits, mnist, cifar_like_cnn())
    end_to_end: list[EndToEndResult] = []
    with tempfile.TemporaryDirectory(prefix="advmon-bench-") as tmp:
        workdir = Path(tmp)
        digits_traffic = np.resize(data.test_x, (plan.digits_events, *data.test_x.shape[1:]))
        cnn_traffic = np.resize(data.test_x, (plan.cnn_events, *data.test_x.shape[1:]))
        for bench, benign, traffic, preset in (
            (digits, data.calibration_x, digits_traffic, True),
            (mnist, mnist_like_images(data.calibration_x), mnist_like_images(cnn_traffic), False),
        ):
            _progress(f"end to end: {bench.name}, {len(traffic)} events")
            slug = bench.name.split()[0].lower()
            model_path, benign_path = workdir / f"{slug}.onnx", workdir / f"{slug}-benign.jsonl"
            detector_path = workdir / f"{slug}-detector.json"
            onnx.save(bench.model, model_path)
            write_events(benign_path, benign, as_tensor=True)
            calibrated = calibrate_file(
                model_path,
                benign_path,
                detector_path,
                squeezer_spec=None if preset else bench.squeezer_spec,
                device="cpu",
            )
            if calibrated.config.squeezer_spec != bench.squeezer_spec:
                raise RuntimeError(
                    f"{bench.name}: calibration chose {calibrated.config.squeezer_spec!r}, "
                    f"the graph benchmark would use {bench.squeezer_spec!r}"
                )
            end_to_end += bench_end_to_end(bench.name, detector_path, traffic, workdir, plan)

    graphs: list[GraphResult] = []
    profiles: dict[str, list[ProfileRow]] = {}
    for bench in models:
        for batch_size in plan.batch_sizes:
            _progress(f"fused graph: {bench.name}, batch {batch_size}")
            graphs.append(bench_graph(bench, batch_size, plan, threads))
        profiles[bench.name] = profile_fused(bench, PROFILE_BATCH, plan, threads)

    return ScoringReport(
        plan=plan,
        command=command,
        machine=describe_machine(load_before, PACKAGES),
        intra_op_threads=threads,
        provider=end_to_end[0].provider,
        models=models,
        end_to_end=tuple(end_to_end),
        graphs=tuple(graphs),
        profiles=profiles,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the page and writes it to ``--output``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: few events, few rounds (seconds)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the markdown page (default: {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    started = time.perf_counter()
    write_page(render_markdown(run_benchmarks(plan, command_line(MODULE, argv))), args.output)
    _progress(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
