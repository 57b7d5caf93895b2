"""``advmon worker`` as :mod:`benchmarks.worker_throughput` runs it: its config, the
subprocess, its ``/healthz`` and ``/metrics`` pages, and waiting for a consumer group to
split a topic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.stream_results import EMPTY_HISTOGRAM, EMPTY_METRICS, Histogram, WorkerMetrics
from benchmarks.stream_traffic import Stream
from monitor.config import load_config
from monitor.kafka.local_broker import die_with_parent, free_loopback_port

__all__ = [
    "COUNTERS",
    "HISTOGRAMS",
    "STEPS_METRIC",
    "WORKER_START_TIMEOUT_S",
    "Worker",
    "parse_metrics",
    "stop_workers",
    "wait_for_split",
    "write_worker_config",
]

WORKER_START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
#: The worker's wall seconds per step of its hot path, labelled ``step``.
STEPS_METRIC = "advmon_pipeline_seconds"
#: Histograms the report reads: scoring per batch, batch size, event → decision.
HISTOGRAMS = (
    "advmon_scoring_seconds",
    "advmon_batch_size_events",
    "advmon_event_to_decision_seconds",
)
#: Counters the report shows, summed over their labels.
COUNTERS = (
    "advmon_events_consumed",
    "advmon_events_scored",
    "advmon_events_flagged",
    "advmon_events_invalid",
    "advmon_drift_detections",
)


def write_worker_config(
    path: Path, stream: Stream, tag: str, max_events: int, wait: int, topics: Sequence[str]
) -> None:
    """A worker config with output topics of its own (``tag``), reading ``topics`` for
    the stream's model, policy enforce, drift detection on with the default signals."""
    path.write_text(
        "# Written by benchmarks.worker_throughput.\n"
        "topics:\n"
        f"  decisions: bench-decisions-{tag}\n"
        f"  dead_letter: bench-dead-letter-{tag}\n"
        f"  detections: bench-detections-{tag}\n"
        f"  source_flags: bench-source-flags-{tag}\n"
        f"batching: {{max_events: {max_events}, max_wait_ms: {wait}}}\n"
        "quarantine: {limit: 20, window_seconds: 60, ttl_seconds: 900}\n"
        "models:\n"
        f"  - id: {stream.model_id}\n"
        f"    detector: {stream.detector_path}\n"
        f"    topics: [{', '.join(topics)}]\n"
        "    policy: enforce\n"
        "    drift: {enabled: true}  # the default signals (docs/drift.md)\n"
    )
    load_config(path)  # fail here, not in the worker, if the config is wrong


class Worker:
    """``python -m monitor worker`` as a subprocess, as ``advmon demo`` runs it; it runs in
    the folder of ``log`` (Faust writes its data dir there) and dies with this process."""

    def __init__(self, config: Path, bootstrap: str, app_id: str, log: Path) -> None:
        self.web_port = free_loopback_port()
        self.log = log
        self.metrics_error = ""
        env = {
            **os.environ,
            "ADVMON_KAFKA__BOOTSTRAP": bootstrap,
            "ADVMON_WORKER__APP_ID": app_id,
            "ADVMON_SCORING__DEVICE": "cpu",
        }
        command = [sys.executable, "-m", "monitor", "worker", "--config", str(config)]
        command += ["--web-port", str(self.web_port), "-l", "warn"]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=log.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def _get(self, path: str) -> tuple[int, bytes] | None:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())
        except OSError:
            return None

    async def healthz(self) -> tuple[int, dict[str, Any]] | None:
        """``/healthz``'s status and JSON body; ``None`` while it does not answer."""
        answer = await asyncio.to_thread(self._get, "/healthz")
        if answer is None:
            return None
        status, body = answer
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
        return status, parsed if isinstance(parsed, dict) else {}

    async def wait_healthy(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.process.returncode}):\n{self.tail()}")
            page = await self.healthz()
            if page is not None and page[0] == 200:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the worker was not healthy in time:\n{self.tail()}")

    async def metrics(self) -> WorkerMetrics:
        """What the report reads of ``/metrics``; empty (and :attr:`metrics_error` set)
        when the page does not answer 200."""
        answer = await asyncio.to_thread(self._get, "/metrics")
        if answer is None or answer[0] != 200:
            error = [line for line in self.tail(200).splitlines() if "Error" in line]
            status = "no answer" if answer is None else f"status {answer[0]}"
            self.metrics_error = error[-1].strip() if error else status
            return EMPTY_METRICS
        return parse_metrics(answer[1].decode())

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "<empty log>"

    def stop(self) -> None:
        stop_workers([self])


def stop_workers(workers: Sequence[Worker]) -> None:
    """SIGTERM every worker, then wait for each (SIGKILL after :data:`STOP_TIMEOUT_S`)."""
    running = [w for w in workers if w.process.poll() is None]
    for worker in running:
        worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for worker in running:
        try:
            worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def parse_metrics(text: str) -> WorkerMetrics:
    """The histograms, the per-step seconds and the counters the report uses, each summed
    over its labels (the steps by ``step``)."""
    found: dict[str, Histogram] = {}
    steps: dict[str, float] = {}
    counters: dict[str, float] = {}
    steps_found = False
    for family in text_string_to_metric_families(text):
        if family.name in HISTOGRAMS:
            found[family.name] = _histogram(family.samples)
            continue
        if family.name in COUNTERS:  # listed without samples: no child counted yet
            counters.setdefault(family.name, 0.0)
        for sample in family.samples:
            if sample.name in (f"{STEPS_METRIC}_total", STEPS_METRIC):
                steps_found = True
                step = sample.labels.get("step", "?")
                steps[step] = steps.get(step, 0.0) + sample.value
            elif sample.name.endswith("_total") and sample.name[: -len("_total")] in COUNTERS:
                name = sample.name[: -len("_total")]
                counters[name] = counters.get(name, 0.0) + sample.value
    scoring, batch_size, event_to_decision = (found.get(n, EMPTY_HISTOGRAM) for n in HISTOGRAMS)
    return WorkerMetrics(
        scoring,
        batch_size,
        event_to_decision,
        steps=tuple(steps.items()),
        steps_found=steps_found,
        counters=tuple(counters.items()),
    )


def _histogram(samples: Sequence[Any]) -> Histogram:
    buckets: dict[float, float] = {}
    total = count = 0.0
    for sample in samples:
        if sample.name.endswith("_bucket"):
            le = float(sample.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + sample.value
        elif sample.name.endswith("_sum"):
            total += sample.value
        elif sample.name.endswith("_count"):
            count += sample.value
    return Histogram(tuple(sorted(buckets.items())), total, count)


#: When every worker is healthy but none lists a partition of the topic on ``/healthz``
#: for this long, stop waiting for the split (the page may not list that consumer).
NO_ASSIGNMENT_GRACE_S = 10.0


async def wait_for_split(
    workers: Sequence[Worker], topic: str, partitions: int, timeout_s: float = 60.0
) -> tuple[tuple[int, ...], str]:
    """Wait until the workers' ``/healthz`` pages answer 200 and between them list every
    partition of ``topic``, each worker some and none twice; return the partitions per
    worker and, when that was not seen, why."""
    everything = set(range(partitions))
    deadline = time.monotonic() + timeout_s
    unlisted_since: float | None = None
    shares: list[set[int]] = []
    while time.monotonic() < deadline:
        pages = await asyncio.gather(*(w.healthz() for w in workers))
        if all(page is not None and page[0] == 200 for page in pages):
            shares = [_assigned(page[1], topic) for page in pages if page is not None]
            split = all(shares) and sum(map(len, shares)) == partitions
            if split and set().union(*shares) == everything:
                return tuple(len(s) for s in shares), ""
            if not any(shares):
                now = time.monotonic()
                unlisted_since = unlisted_since or now
                if now - unlisted_since > NO_ASSIGNMENT_GRACE_S:
                    return (), (
                        f"`/healthz` listed no partition of the topic {NO_ASSIGNMENT_GRACE_S:.0f} "
                        "s after every worker answered 200; the topic was filled then"
                    )
            else:
                unlisted_since = None
        await asyncio.sleep(0.2)
    held = ", ".join(str(sorted(s)) for s in shares) or "none"
    return tuple(len(s) for s in shares), (
        f"the workers had not split the topic's partitions after {timeout_s:.0f} s (held: "
        f"{held}); the topic was filled then"
    )


def _assigned(body: dict[str, Any], topic: str) -> set[int]:
    """Partitions of ``topic`` in a ``/healthz`` body's ``assigned`` (``topic/partition``)."""
    listed = body.get("assigned", [])
    if not isinstance(listed, list):
        return set()
    out = set()
    for item in listed:
        name, _, number = str(item).rpartition("/")
        if name == topic and number.isdigit():
            out.add(int(number))
    return out
