"""The machine a benchmark ran on: its CPU, library versions, commit, load and date."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

__all__ = ["Machine", "describe_machine", "physical_cores"]


@dataclass(frozen=True)
class Machine:
    """Where the figures were taken."""

    cpu_model: str
    logical_cpus: int
    physical_cores: int
    versions: tuple[tuple[str, str], ...]
    """(name, version) of Python and of each requested distribution that is installed."""
    commit: str
    """The short commit, and which code folders had uncommitted changes."""
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    date: str


def _cpu_topology() -> tuple[str, int]:
    """CPU model name and physical core count, from ``/proc/cpuinfo`` where there is one."""
    model = platform.processor() or platform.machine()
    cores: set[tuple[str, str]] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, os.cpu_count() or 1
    for block in text.strip().split("\n\n"):
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in block.splitlines())
        )
        model = fields.get("model name", model)
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return model, len(cores) or os.cpu_count() or 1


def physical_cores() -> int:
    """Physical CPU cores of this machine (logical CPUs where they cannot be told apart)."""
    return _cpu_topology()[1]


def _commit() -> str:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "monitor", "detectors", "schemas"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = sorted({line[3:] for line in dirty.stdout.splitlines() if line[3:]})
    commit = found.stdout.strip()
    return f"{commit} + uncommitted changes to {', '.join(changed)}" if changed else commit


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_machine(load_before: tuple[float, float, float], packages: Sequence[str]) -> Machine:
    """This machine now, with the versions of those of ``packages`` that are installed;
    ``load_before`` is :func:`os.getloadavg` from before the run."""
    cpu_model, cores = _cpu_topology()
    versions = [("Python", platform.python_version())]
    versions += [(p, v) for p in packages if (v := _installed(p)) is not None]
    return Machine(
        cpu_model=cpu_model,
        logical_cpus=os.cpu_count() or 1,
        physical_cores=cores,
        versions=tuple(versions),
        commit=_commit(),
        load_before=load_before,
        load_after=os.getloadavg(),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
