"""Where the worker's time goes, for :mod:`benchmarks.worker_throughput`: a py-spy profile
of a worker run, and the per-event cost of the scoring pipeline's stages in-process."""

from __future__ import annotations

import math
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from benchmarks.stream_results import PY_SPY_RATE_HZ, ProfileRow, StageCost
from benchmarks.stream_traffic import Stream, with_ts
from benchmarks.stream_worker import write_worker_config
from detectors import Detector, DetectorConfig, file_sha256, load_model
from monitor.config import load_config

__all__ = [
    "PROFILE_PARTS",
    "parse_py_spy",
    "py_spy",
    "stage_costs",
    "start_py_spy",
    "stop_py_spy",
]


# -- py-spy ----------------------------------------------------------------------------


def py_spy() -> Path | None:
    found = Path(sys.executable).with_name("py-spy")
    return found if found.exists() else None


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    binary = py_spy()
    assert binary is not None
    command = [str(binary), "record", "--pid", str(pid), "--rate", str(PY_SPY_RATE_HZ)]
    command += ["--format", "raw", "--threads", "--nonblocking", "--gil", "--output", str(out)]
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
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
    stream: Stream, workdir: Path, batch_size: int, batches: int, rounds: int
) -> tuple[list[StageCost], float, str]:
    """Per-event cost of decode, stack + score and decide on ``batches`` batches of the
    stream, in this process without Kafka or Faust; the flagged share; and, when the
    worker's scoring pipeline could not be driven (its internals changed), why not.

    It drives ``monitor.worker.stages.scoring.ScoringPipeline`` directly, an internal of
    the worker: any error doing so is reported, not raised.
    """
    try:
        return (*_stage_costs(stream, workdir, batch_size, batches, rounds), "")
    except Exception as error:  # the worker's internals are not a contract
        return [], math.nan, f"{type(error).__name__}: {error}"


def _stage_costs(
    stream: Stream, workdir: Path, batch_size: int, batches: int, rounds: int
) -> tuple[list[StageCost], float]:
    from monitor.worker.models import ModelDetector
    from monitor.worker.records import InputMessage
    from monitor.worker.stages.scoring import ScoringPipeline

    path = workdir / f"stages-{stream.key}.yaml"
    topic = f"bench-{stream.key}-stages"
    write_worker_config(path, stream, f"stages-{stream.key}", batch_size, 20, [topic])
    config = load_config(path)
    model = config.models[0]
    detector_config = DetectorConfig.load(model.detector)
    pipeline = ScoringPipeline(
        config,
        {model.id: ModelDetector(model, detector_config, file_sha256(model.detector))},
    )
    detector = Detector(detector_config, load_model(detector_config.model_path), device="cpu")
    events = batches * batch_size
    ts = "1970-01-01T00:00:00+00:00"
    messages = [
        InputMessage(topic, 0, i, None, with_ts(stream.event("s-", i), ts)) for i in range(events)
    ]
    chunks = [messages[i : i + batch_size] for i in range(0, events, batch_size)]
    timings: dict[str, list[float]] = {"decode": [], "score": [], "decide": [], "loads": []}
    flagged = 0
    for chunk in chunks[:2]:  # warm-up: pydantic, numpy and ONNX Runtime first calls
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
        StageCost("pipeline.decode (fast path, checks, numpy input)", per_event["decode"]),
        StageCost("np.stack + Detector.score (fused ONNX graph)", per_event["score"]),
        StageCost("pipeline.decide (Decision/Detection/SourceFlag + JSON)", per_event["decide"]),
    ]
    return rows, flagged / events
