"""The figures a fault scenario measured, as JSON lines.

Every record goes to ``faults.jsonl`` in the test's temporary folder and, when
``ADVMON_FAULTS_REPORT`` names a file, is appended there too, so that one file collects a
whole run for :mod:`tests.faults.report`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.kafka import kafka_version

__all__ = ["EVENTS_VARIABLE", "REPORT_VARIABLE", "FigureLog", "Stopwatch", "machine_facts"]

#: The environment variable naming a file that collects the figures of a whole run.
REPORT_VARIABLE = "ADVMON_FAULTS_REPORT"
#: The environment variable setting the event count of the worker-kill scenario.
EVENTS_VARIABLE = "ADVMON_FAULTS_EVENTS"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git(*arguments: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *arguments], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def machine_facts() -> dict[str, Any]:
    """What a figure depends on besides the code: CPU, cores, memory, versions."""
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "kafka": kafka_version(),
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


class FigureLog:
    """Appends one JSON line per finished scenario.

    Parameters
    ----------
    path
        The test's own file (``faults.jsonl`` in its temporary folder).
    shared
        A file collecting a whole run (``ADVMON_FAULTS_REPORT``), or ``None``.
    test
        The test's node id, written into each record.
    command
        The command line that ran the test, written into each record.
    """

    def __init__(self, path: Path, shared: Path | None, test: str, command: str) -> None:
        self.path = path
        self.shared = shared
        self.test = test
        self.command = command
        self.records: list[dict[str, Any]] = []
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")

    def record(self, scenario: str, passed: bool, **figures: Any) -> dict[str, Any]:
        """Write ``figures`` of ``scenario`` (``passed``: whether its invariant held)."""
        line = {
            "scenario": scenario,
            "test": self.test,
            "command": self.command,
            "passed": passed,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "figures": figures,
            "machine": machine_facts(),
        }
        text = json.dumps(line, sort_keys=True) + "\n"
        for target in (self.path, self.shared):
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("a", encoding="utf-8") as out:
                    out.write(text)
        self.records.append(line)
        return line


class Stopwatch:
    """Seconds since it was made, rounded for a report."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        """Seconds elapsed, to 0.1 s."""
        return round(time.monotonic() - self.started, 1)
