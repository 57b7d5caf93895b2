"""What detecting black-box query attacks per source costs per event, against scoring.

Run ``make bench`` (or ``.venv/bin/python -m benchmarks.query_cost``); ``--quick`` for a
smoke run, ``--output PATH`` to write the page somewhere other than
``docs/benchmarks-queries.md``. At 28×28, on two random-weight CNNs with the NDSS
MNIST squeezers (a small one, the size of a CNN trained on 28×28 digits, and the
MNIST-like CNN of :mod:`benchmarks.models`), each calibrated with
:func:`detectors.calibrate_detector` on scikit-learn's digits upscaled to 28×28, CPU
execution provider:

(a) **scoring**: :meth:`detectors.Detector.score` on batches of 64 events; for
    reference, the model alone in its own ONNX Runtime session on the same batches;
(b) **fingerprinting**: :func:`detectors.fingerprints` on the same batches, with the
    fingerprint of the calibrated detector file;
(c) **matching**: :meth:`detectors.QueryHistory.observe` of one new query against a full
    history of 16, 64, 256, 1,024 and 4,096 queries (the new query evicts the oldest),
    for unrelated queries (uniform noise; the share of them that matched a held query is
    recorded: a false match, none expected) and for an attack's queries (near copies of
    one digit, each matching every held query);
(d) **storing**: :meth:`~detectors.QueryHistory.dumps` and
    :meth:`~detectors.QueryHistory.loads` of each full history;
(e) **memory**: :attr:`~detectors.QueryHistory.nbytes` and the stored bytes of each.

(a) and (b) run interleaved, round after round, so that load from elsewhere on the
machine slows them alike; (c) alternates its two kinds of query round by round. Medians
go into a :class:`benchmarks.query_results.QueryCostReport`, which
:func:`benchmarks.query_results.render_markdown` renders. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.machine import describe_machine
from benchmarks.models import (
    MNIST_SQUEEZERS,
    BenchmarkModel,
    mnist_like_cnn,
    mnist_like_images,
    small_cnn,
)
from benchmarks.page import command_line, write_page
from benchmarks.query_results import (
    BATCH,
    HISTORY_SIZES,
    HistoryCost,
    ModelCost,
    QueryCostReport,
    StageCost,
    render_markdown,
)
from detectors import (
    Detector,
    DetectorConfig,
    Fingerprints,
    FingerprintSpec,
    QueryHistory,
    calibrate_detector,
    create_session,
    fingerprints,
)
from detectors.queries import DEFAULT_MAX_AGE_SECONDS
from monitor.demo.model import load_digits_data

__all__ = ["main", "measure_history", "measure_stages"]

MODULE = "benchmarks.query_cost"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-queries.md"
#: Distributions whose versions the page lists.
PACKAGES = ("advmon", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy", "msgspec")
#: Characters of each held query's event id (a UUID).
EVENT_ID_CHARS = 36
_START = 1_700_000_000.0


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run or the ``--quick`` smoke run."""

    events: int
    stage_rounds: int
    history_rounds: int
    queries_per_round: int
    store_seconds: float
    """Least time spent timing dumps and loads of each history."""


FULL = Plan(events=2048, stage_rounds=9, history_rounds=7, queries_per_round=256, store_seconds=0.3)
QUICK = Plan(events=256, stage_rounds=2, history_rounds=2, queries_per_round=32, store_seconds=0.02)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interleaved(
    variants: Mapping[str, Callable[[], object]], rounds: int
) -> dict[str, list[float]]:
    """Seconds per run of each variant: one untimed run each, then ``rounds`` rounds in
    rotating order."""
    for run in variants.values():
        run()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            began = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - began)
    return samples


def measure_stages(
    detectors: Sequence[tuple[BenchmarkModel, Detector]],
    spec: FingerprintSpec,
    batches: Sequence[np.ndarray],
    rounds: int,
) -> StageCost:
    """(a) and (b): median seconds of one pass over ``batches``."""
    variants: dict[str, Callable[[], object]] = {}
    for bench, detector in detectors:
        session = create_session(bench.model, "cpu", spin_wait=False)
        variants[f"score {bench.name}"] = partial(_score, detector, batches)
        variants[f"bare {bench.name}"] = partial(_bare, session, batches)
    variants["fingerprint"] = partial(_fingerprint, spec, batches)
    samples = _interleaved(variants, rounds)
    return StageCost(
        events=sum(len(b) for b in batches),
        rounds=rounds,
        models=tuple(
            ModelCost(
                name=bench.name,
                description=bench.description,
                squeezer_spec=bench.squeezer_spec,
                score_s=statistics.median(samples[f"score {bench.name}"]),
                bare_s=statistics.median(samples[f"bare {bench.name}"]),
            )
            for bench, _ in detectors
        ),
        fingerprint_s=statistics.median(samples["fingerprint"]),
    )


def _score(detector: Detector, batches: Sequence[np.ndarray]) -> None:
    for batch in batches:
        detector.score(batch)


def _bare(session: ort.InferenceSession, batches: Sequence[np.ndarray]) -> None:
    input_name = session.get_inputs()[0].name
    for batch in batches:
        session.run(None, {input_name: batch})


def _fingerprint(spec: FingerprintSpec, batches: Sequence[np.ndarray]) -> None:
    for batch in batches:
        fingerprints(spec, batch)


class _Queries:
    """A source's queries, fingerprinted ahead, handed out in order."""

    def __init__(self, prints: Fingerprints, event_ids: Sequence[str]) -> None:
        self.prints = prints
        self.event_ids = event_ids
        self.next = 0

    def observe(self, history: QueryHistory, count: int) -> list[int]:
        """Observe the next ``count`` queries; return how many held queries each matched."""
        matches = []
        p = self.prints
        for i in range(self.next, self.next + count):
            seen = history.observe(
                p.bitmaps[i], int(p.windows[i]), int(p.digests[i]), _START + i, self.event_ids[i]
            )
            if seen.outcome != "new":
                raise RuntimeError(f"a benchmark query was taken as {seen.outcome}")
            matches.append(seen.matches)
        self.next += count
        return matches


def _noise(count: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise images: queries as unrelated as they get."""
    return rng.random((count, 1, 28, 28), dtype=np.float32)


def _near_copies(
    image: np.ndarray, count: int, step: float, rng: np.random.Generator
) -> np.ndarray:
    """``count`` copies of ``image``, each with three pixels moved by less than a step, and
    its first (black) pixel set to a value of its own, far below a step, so that no two
    are identical."""
    copies = np.repeat(image[None], count, axis=0).reshape(count, -1)
    for i, row in enumerate(copies):
        pixels = rng.choice(row.size, 3, replace=False)
        row[pixels] = np.clip(row[pixels] + rng.uniform(0.05, 0.45, 3) * step, 0.0, 1.0)
        row[0] = (i + 1) * 1e-7
    return copies.reshape(count, *image.shape)


def measure_history(
    size: int,
    spec: FingerprintSpec,
    digit: np.ndarray,
    plan: Plan,
    rng: np.random.Generator,
) -> HistoryCost:
    """(c), (d) and (e) for a full history of ``size`` queries."""
    elements = int(np.prod(digit.shape))
    match_bits = spec.match_bits(elements)
    total = size + (plan.history_rounds + 1) * plan.queries_per_round
    ids = [str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(total)]
    assert all(len(i) == EVENT_ID_CHARS for i in ids)
    unrelated = _Queries(fingerprints(spec, _noise(total, rng)), ids)
    attack = _Queries(fingerprints(spec, _near_copies(digit, total, spec.step, rng)), ids)
    histories = {}
    for name, queries in (("unrelated", unrelated), ("attack", attack)):
        history = QueryHistory(size, DEFAULT_MAX_AGE_SECONDS, match_bits)
        queries.observe(history, size)
        histories[name] = history
    matched: dict[str, list[int]] = {"unrelated": [], "attack": []}

    def run(name: str, queries: _Queries) -> Callable[[], None]:
        def observe() -> None:
            matched[name] += queries.observe(histories[name], plan.queries_per_round)

        return observe

    samples = _interleaved(
        {"unrelated": run("unrelated", unrelated), "attack": run("attack", attack)},
        plan.history_rounds,
    )
    # The attack's queries are what they claim to be.
    if min(matched["attack"]) < size - 1:
        raise RuntimeError(f"an attack query matched {min(matched['attack'])} of {size}")

    history = histories["unrelated"]
    stored = history.dumps()
    dumps_s: list[float] = []
    loads_s: list[float] = []
    began = time.perf_counter()
    while len(dumps_s) < 5 or time.perf_counter() - began < plan.store_seconds:
        t0 = time.perf_counter()
        history.dumps()
        t1 = time.perf_counter()
        QueryHistory.loads(stored, size, DEFAULT_MAX_AGE_SECONDS, match_bits)
        t2 = time.perf_counter()
        dumps_s.append(t1 - t0)
        loads_s.append(t2 - t1)
    per_query = 1e6 / plan.queries_per_round
    return HistoryCost(
        size=size,
        observe_us=statistics.median(samples["unrelated"]) * per_query,
        observe_attack_us=statistics.median(samples["attack"]) * per_query,
        dumps_us=statistics.median(dumps_s) * 1e6,
        loads_us=statistics.median(loads_s) * 1e6,
        nbytes=history.nbytes,
        stored_bytes=len(stored),
        queries_timed=plan.queries_per_round,
        unrelated_matched=float(np.mean(np.asarray(matched["unrelated"]) > 0)),
        unrelated_observed=len(matched["unrelated"]),
    )


def _batches(images: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(images), BATCH):
        yield images[start : start + BATCH]


def small_digits_cnn() -> BenchmarkModel:
    """A CNN the size of one trained on 28×28 digits: few channels, a small dense layer."""
    return BenchmarkModel(
        name="small CNN",
        description="Conv8-Conv16-MaxPool-FC32-FC10, input [N,1,28,28], random weights",
        model=small_cnn((1, 28, 28), conv_channels=(8, 16), hidden=32),
        squeezer_spec=MNIST_SQUEEZERS,
    )


def _calibrated(bench: BenchmarkModel, benign: np.ndarray, folder: Path) -> DetectorConfig:
    model_path = folder / f"{bench.name.replace(' ', '-')}.onnx"
    onnx.save(bench.model, model_path)
    _progress(f"calibrating the {bench.name} on {len(benign)} events")
    return calibrate_detector(
        model_path, lambda: _batches(benign), squeezer_spec=bench.squeezer_spec, device="cpu"
    )


def run_benchmark(plan: Plan, command: str) -> QueryCostReport:
    """Every measurement; ``command`` is the command line the page names."""
    load_before = os.getloadavg()
    data = load_digits_data()
    benign = mnist_like_images(data.calibration_x)
    traffic = mnist_like_images(np.resize(data.test_x, (plan.events, *data.test_x.shape[1:])))
    detectors = []
    specs = set()
    with tempfile.TemporaryDirectory(prefix="advmon-bench-") as folder:
        for bench in (small_digits_cnn(), mnist_like_cnn()):
            config = _calibrated(bench, benign, Path(folder))
            settings = config.query_settings
            if settings is None:
                raise RuntimeError("the calibrated detector has no query settings")
            specs.add(settings.fingerprint)
            detectors.append((bench, Detector(config, bench.model, device="cpu", spin_wait=False)))
    (spec,) = specs  # the fingerprint depends on the input range only
    _progress(f"scoring and fingerprinting: {plan.events} events, {plan.stage_rounds} rounds")
    stages = measure_stages(detectors, spec, list(_batches(traffic)), plan.stage_rounds)
    rng = np.random.default_rng(0)
    histories = []
    for size in HISTORY_SIZES:
        _progress(f"history of {size} queries")
        histories.append(measure_history(size, spec, traffic[0], plan, rng))
    return QueryCostReport(
        command=command,
        machine=describe_machine(load_before, PACKAGES),
        provider=detectors[0][1].provider,
        event_id_chars=EVENT_ID_CHARS,
        top_k=spec.top_k,
        match_bits=spec.match_bits(int(np.prod(traffic.shape[1:]))),
        stages=stages,
        histories=tuple(histories),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the page and writes it to ``--output``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the markdown page (default: docs/benchmarks-queries.md)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = run_benchmark(QUICK if args.quick else FULL, command_line(MODULE, argv))
    write_page(render_markdown(report), args.output)
    _progress(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
