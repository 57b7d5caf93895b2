"""``advmon worker`` as a subprocess: its config file, its web pages, starting and stopping.

A worker runs exactly as in production (``python -m monitor worker --config FILE``),
configured through ``ADVMON_*`` variables only, with its log in a file that the
integration conftest prints when a test fails.
"""

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.kafka.local_broker import die_with_parent, free_loopback_port
from tests.integration.kafka_io import OutputTopics, unique_name

__all__ = [
    "STARTED_WORKERS",
    "HealthPage",
    "MetricSamples",
    "ModelEntry",
    "WorkerLauncher",
    "WorkerProcess",
    "free_loopback_port",
    "worker_environment",
    "write_worker_config",
]

STOP_TIMEOUT_S = 10.0

#: Every worker started in this session, so that failure reports can show their logs.
STARTED_WORKERS: list[WorkerProcess] = []
_HTTP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ModelEntry:
    """One ``models:`` entry of a worker config."""

    id: str
    topics: list[str]
    policy: str = "observe"
    drift: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    """More keys of the entry: format, mapping, oip_v2."""


def write_worker_config(
    path: Path,
    *,
    detector: Path,
    models: list[ModelEntry],
    topics: OutputTopics,
    quarantine: dict[str, int] | None = None,
    batching: dict[str, int] | None = None,
) -> Path:
    """Write a worker config (see :mod:`monitor.config`) and return its path."""
    config: dict[str, Any] = {
        "topics": {
            "decisions": topics.decisions,
            "dead_letter": topics.dead_letter,
            "detections": topics.detections,
            "source_flags": topics.source_flags,
            "signals": topics.signals,
        }
        | ({"oip_halves": topics.oip_halves} if topics.oip_halves else {})
        | ({"joined": topics.joined} if topics.joined else {}),
        "models": [
            {"id": m.id, "detector": str(detector), "topics": m.topics, "policy": m.policy}
            | ({"drift": m.drift} if m.drift is not None else {})
            | (m.extra or {})
            for m in models
        ],
    }
    if quarantine is not None:
        config["quarantine"] = quarantine
    if batching is not None:
        config["batching"] = batching
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def worker_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any ``ADVMON_*`` variable, plus ``settings``.

    ``settings`` are given without the prefix: ``kafka__bootstrap="127.0.0.1:9092"``.
    """
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ADVMON_")}
    env.update({f"ADVMON_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass(frozen=True)
class HealthPage:
    """What ``/healthz`` answered."""

    status: int
    body: dict[str, Any]

    def assigned(self, topic: str) -> set[int]:
        """Partitions of ``topic`` the worker says it holds."""
        assigned: list[str] = self.body.get("assigned", [])
        return {int(tp.rpartition("/")[2]) for tp in assigned if tp.rpartition("/")[0] == topic}


class MetricSamples:
    """Samples parsed from a ``/metrics`` page."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a labelled counter that has no such child yet."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Values of ``name`` summed by one label (over the values of any other label)."""
        totals: dict[str, float] = {}
        for (sample, labels), value in self.samples.items():
            key = dict(labels).get(label)
            if sample == name and key is not None:
                totals[key] = totals.get(key, 0.0) + value
        return totals


@dataclass
class WorkerProcess:
    """One ``advmon worker`` subprocess."""

    name: str
    command: list[str]
    env: dict[str, str]
    workdir: Path
    web_port: int
    app_id: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)

    @property
    def log_path(self) -> Path:
        """Where the worker's stdout and stderr go."""
        return self.workdir / "worker.log"

    def start(self) -> None:
        """Start the subprocess (returns at once; see :meth:`wait_consuming`)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.workdir,  # Faust writes its data folder here
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # SIGKILL the worker if pytest dies without stopping it.
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """The worker's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"<could not read {self.log_path}: {error}>"

    def _get(self, page: str) -> tuple[int, bytes] | None:
        url = f"http://127.0.0.1:{self.web_port}{page}"
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    async def healthz(self) -> HealthPage | None:
        """``/healthz``, or ``None`` while the web server does not answer."""
        answer = await asyncio.to_thread(self._get, "/healthz")
        if answer is None:
            return None
        status, body = answer
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {"unparsed": body.decode(errors="replace")}
        return HealthPage(status, parsed)

    async def metrics(self) -> MetricSamples:
        """``/metrics``, parsed; fails the test unless the page answers 200."""
        answer = await asyncio.to_thread(self._get, "/metrics")
        assert answer is not None, f"worker {self.name}: /metrics did not answer"
        status, body = answer
        assert status == 200, (
            f"worker {self.name}: GET /metrics answered {status}: {body.decode(errors='replace')}"
        )
        return MetricSamples(body.decode())

    async def wait_for_metrics(
        self, settled: Callable[[MetricSamples], bool], *, timeout_s: float
    ) -> MetricSamples:
        """Poll ``/metrics`` until ``settled`` holds or ``timeout_s``; return the last page."""
        deadline = time.monotonic() + timeout_s
        metrics = await self.metrics()
        while not settled(metrics) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            metrics = await self.metrics()
        return metrics

    def assert_running(self) -> None:
        """Fail with the exit status when the worker has died."""
        assert self.process is not None, f"worker {self.name} was never started"
        code = self.process.poll()
        assert code is None, f"worker {self.name} exited with status {code}"

    async def wait_consuming(
        self, topic: str, partitions: set[int] | None = None, *, timeout_s: float = 60.0
    ) -> HealthPage:
        """Wait until ``/healthz`` is 200 and lists ``partitions`` of ``topic``.

        With ``partitions=None``, any non-empty share of ``topic`` will do.
        """
        deadline = time.monotonic() + timeout_s
        page: HealthPage | None = None
        while time.monotonic() < deadline:
            self.assert_running()
            page = await self.healthz()
            if page is not None and page.status == 200:
                held = page.assigned(topic)
                if (partitions is None and held) or (partitions is not None and held == partitions):
                    return page
            await asyncio.sleep(0.2)
        want = "some partition" if partitions is None else f"partitions {sorted(partitions)}"
        raise AssertionError(
            f"worker {self.name} did not report {want} of {topic} within {timeout_s:.0f} s; "
            f"last /healthz: {page}"
        )

    def kill(self) -> None:
        """SIGKILL the worker, as a crash or an OOM kill would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM the worker (SIGKILL after a timeout); return its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        return self.process.returncode


class WorkerLauncher:
    """Starts ``advmon worker`` subprocesses on the session's broker and stops them all."""

    def __init__(self, bootstrap: str, folder: Path) -> None:
        self.bootstrap = bootstrap
        self.folder = folder
        self.workers: list[WorkerProcess] = []

    def start(
        self,
        name: str,
        config: Path,
        *,
        app_id: str | None = None,
        web_port: int | None = None,
        **settings: str,
    ) -> WorkerProcess:
        """Start a worker; ``settings`` are extra ``ADVMON_*`` variables without the prefix.

        The worker scores on CPU with one ONNX Runtime thread (this machine is small and
        runs several workers and the broker), uses the broker's shortest session timeout
        and logs at INFO level.
        """
        defaults = {
            "kafka__bootstrap": self.bootstrap,
            "worker__app_id": app_id or unique_name(name),
            "kafka__session_timeout_ms": "6000",
            "scoring__device": "cpu",
            "scoring__intra_op_threads": "1",
            "log_level": "INFO",
        }
        env = worker_environment(**(defaults | settings))
        port = web_port or free_loopback_port()
        command = [
            sys.executable,
            "-m",
            "monitor",
            "worker",
            "--config",
            str(config),
            "-l",
            "info",
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(port),
        ]
        worker = WorkerProcess(
            name=name,
            command=command,
            env=env,
            workdir=self.folder / unique_name(name),
            web_port=port,
            app_id=env["ADVMON_WORKER__APP_ID"],
        )
        worker.start()
        self.workers.append(worker)
        STARTED_WORKERS.append(worker)
        return worker

    def stop_all(self) -> None:
        """Stop every worker this launcher started."""
        for worker in self.workers:
            worker.stop()
