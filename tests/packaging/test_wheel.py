"""The package as users install it: ``python -m build``, then the wheel in a fresh virtualenv.

The sdist and the wheel are built by ``python -m build`` as a user runs it (an isolated
build environment, sdist first, the wheel from the unpacked sdist). The wheel is installed
into a new virtualenv in a temporary folder, outside the source tree, and the commands a
user runs first are run from there: ``advmon --help``, ``advmon db upgrade`` on SQLite,
``advmon calibrate``, ``score`` and ``evaluate`` on a small model the test trains. The
installed code must give the answers the source tree gives.

Nothing is downloaded while the tests run: the build requirements and advmon's runtime
dependencies come from ``.wheelhouse/``, which ``make wheelhouse`` (part of ``make
test``) fills from the package index at the versions in ``constraints.txt``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from monitor.cli import main
from monitor.evaluate import load_report
from tests.evaluate.models import ModelCase, digits_mlp

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".wheelhouse"
PACKAGES = ("monitor", "detectors", "schemas")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PROJECT["version"]

#: Labelled events for the installed ``advmon evaluate``: enough for a report, and quick.
N_EVALUATE = 24


def _offline_pip() -> dict[str, str]:
    """Environment for pip and ``python -m build``: the wheelhouse, never the index."""
    env = _clean_env()
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(WHEELHOUSE), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _clean_env() -> dict[str, str]:
    """The test's environment without what would point the installed advmon back at the
    source tree or at this session's settings."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
        and not key.startswith(("ADVMON_", "PIP_"))
    }


def _run(
    args: list[str | Path], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )
    return result


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    """The wheel installed into a fresh virtualenv; ``cwd`` is a folder outside the tree."""

    venv: Path
    cwd: Path
    env: dict[str, str]

    @property
    def advmon(self) -> Path:
        return self.venv / "bin" / "advmon"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        return _run([self.advmon, *args], self.cwd, {**self.env, **env})


def _checkout(folder: Path) -> Path:
    """A copy of :func:`_source_files` in ``folder``."""
    for name in _source_files():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not (WHEELHOUSE / ".fetched").exists():
        pytest.fail(
            f"{WHEELHOUSE} is missing or incomplete: run `make wheelhouse` (part of make test) "
            "to fetch the build requirements and dependencies the wheel installs with"
        )
    source = _checkout(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, source], source, _offline_pip())
    sdists = list(out.glob(f"advmon-{VERSION}.tar.gz"))
    wheels = list(out.glob(f"advmon-{VERSION}-py3-none-any.whl"))
    assert len(sdists) == 1, sorted(p.name for p in out.iterdir())
    assert len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return Built(sdists[0], wheels[0])


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("user")
    venv = root / "venv"
    cwd = root / "work"
    cwd.mkdir()
    assert REPO not in cwd.parents
    _run([sys.executable, "-m", "venv", venv], root, _clean_env())
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip"]
    _run(
        [*pip, "install", "--quiet", "-c", REPO / "constraints.txt", built.wheel],
        root,
        _offline_pip(),
    )
    _run([*pip, "check"], root, _offline_pip())
    return Installed(venv, cwd, _clean_env())


def _source_files() -> list[str]:
    """The files of a fresh clone with this tree's changes: what git tracks, and what it
    would track, without ignored build leftovers (an editable install's ``*.egg-info``
    would otherwise feed setuptools a stale file list)."""
    listed = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        REPO,
        _clean_env(),
    ).stdout
    # A tracked file deleted in the work tree is left out.
    return [name for name in filter(None, listed.split("\0")) if (REPO / name).is_file()]


def _package_files() -> set[str]:
    """Every source file of the three packages."""
    return {name for name in _source_files() if name.split("/", 1)[0] in PACKAGES}


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_constraints_pin_each_package_by_version() -> None:
    """constraints.txt installs anywhere: ``name==version`` lines only, never the path or
    URL of a file one machine installed from (``pip freeze`` writes those)."""
    lines = (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = [line for line in lines if line.strip() and not line.startswith("#")]
    assert len(pins) > 100
    pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+")
    assert [line for line in pins if not pattern.fullmatch(line)] == []


def test_the_wheel_holds_every_package_file_and_no_other_code(built: Built) -> None:
    names = _wheel_names(built.wheel)
    package_files = _package_files()
    assert package_files - names == set(), "files of the packages missing from the wheel"
    tops = {PurePosixPath(name).parts[0] for name in names}
    assert tops == {*PACKAGES, f"advmon-{VERSION}.dist-info"}, tops


def test_the_wheel_ships_the_data_files_the_code_reads(built: Built) -> None:
    names = _wheel_names(built.wheel)
    migrations = "monitor/incidents/storage/migrations"
    versions = (REPO / migrations / "versions").glob("[0-9]*.py")
    expected = {
        f"{migrations}/env.py",
        f"{migrations}/script.py.mako",
        *(f"{migrations}/versions/{p.name}" for p in versions),
        "monitor/evaluate/templates/report.html.j2",
        *(f"schemas/json/{p.name}" for p in (REPO / "schemas" / "json").glob("*.json")),
        "monitor/py.typed",
        "detectors/py.typed",
        "schemas/py.typed",
        f"advmon-{VERSION}.dist-info/licenses/LICENSE",
    }
    assert len(expected) > 12
    assert expected - names == set()


def test_the_wheel_metadata(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        metadata = archive.read(f"advmon-{VERSION}.dist-info/METADATA").decode()
        entry_points = archive.read(f"advmon-{VERSION}.dist-info/entry_points.txt").decode()
    headers = [line for line in metadata.splitlines() if ": " in line and not line[0].isspace()]
    fields: dict[str, list[str]] = {}
    for line in headers:
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    assert fields["Name"] == ["advmon"]
    assert fields["Version"] == [VERSION]
    assert fields["License-Expression"] == ["Apache-2.0"]
    assert fields["Requires-Python"] == [">=3.11"]
    assert set(fields["Provides-Extra"]) == set(PROJECT["optional-dependencies"])
    assert "dev" not in fields["Provides-Extra"], "the test tools are no extra of the package"
    assert "advmon = monitor.cli:main" in entry_points


def test_the_sdist_rebuilds_the_package(built: Built) -> None:
    with tarfile.open(built.sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    assert {"pyproject.toml", "README.md", "LICENSE"} <= names
    assert _package_files() - names == set(), "files of the packages missing from the sdist"


def test_it_runs_from_the_virtualenv_not_the_source_tree(installed: Installed) -> None:
    # The worker's and the API's modules import their libraries (Faust, aiokafka, aiohttp).
    code = (
        "import json, detectors, monitor, schemas, monitor.worker.run, monitor.incidents.api; "
        "print(json.dumps([m.__file__ for m in (detectors, monitor, schemas)]))"
    )
    result = _run([installed.python, "-c", code], installed.cwd, installed.env)
    site = installed.venv / "lib"
    for path in json.loads(result.stdout):
        assert Path(path).is_relative_to(site), path
        assert not Path(path).is_relative_to(REPO), path


def test_help_and_version(installed: Installed) -> None:
    result = installed.run("--help")
    for command in ("api", "calibrate", "db", "demo", "evaluate", "incidents", "score", "worker"):
        assert f"  {command} " in result.stdout, result.stdout
    assert installed.run("--version").stdout.strip() == f"advmon, version {VERSION}"
    worker = installed.run("worker", "--help")
    assert "--config" in worker.stdout, worker.stdout


def _head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(REPO / "monitor/incidents/storage/migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_db_upgrade_on_sqlite(installed: Installed) -> None:
    database = installed.cwd / "incidents.db"
    url = f"sqlite:///{database}"
    installed.run("db", "upgrade", ADVMON_DATABASE__URL=url)
    with sqlite3.connect(database) as connection:
        revisions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    assert revisions == [(_head_revision(),)]
    assert {"incidents", "detections"} <= tables, tables
    current = installed.run("db", "current", ADVMON_DATABASE__URL=url)
    assert _head_revision() in current.stdout


@dataclass(frozen=True)
class Release:
    case: ModelCase
    benign: Path
    labelled: Path


@pytest.fixture(scope="module")
def release(installed: Installed) -> Release:
    folder = installed.cwd / "model"
    folder.mkdir()
    case = digits_mlp(folder)
    benign = case.write_events(folder / "benign.jsonl", *case.calibration)
    x, y = case.test
    labelled = case.write_events(folder / "labelled.jsonl", x[:N_EVALUATE], y[:N_EVALUATE])
    return Release(case, benign, labelled)


@pytest.fixture(scope="module")
def calibrated(installed: Installed, release: Release) -> Path:
    detector = installed.cwd / "detector.json"
    installed.run(
        "calibrate",
        "--model",
        release.case.model_path,
        "--events",
        release.benign,
        "--out",
        detector,
        "--squeezers",
        "bit_depth:3",
        "--device",
        "cpu",
    )
    return detector


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_calibrate_and_score_answer_as_the_source_tree_does(
    installed: Installed, release: Release, calibrated: Path, tmp_path: Path
) -> None:
    stored = json.loads(calibrated.read_text(encoding="utf-8"))
    assert stored["squeezers"], stored
    installed_out = installed.cwd / "scores.jsonl"
    installed.run(
        "score",
        "--detector",
        calibrated,
        "--events",
        release.labelled,
        "--out",
        installed_out,
        "--device",
        "cpu",
    )
    source_out = tmp_path / "scores.jsonl"
    args = ["score", "--detector", str(calibrated), "--events", str(release.labelled)]
    result = CliRunner().invoke(main, [*args, "--out", str(source_out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    installed_lines = _lines(installed_out)
    assert len(installed_lines) == N_EVALUATE
    assert installed_lines == _lines(source_out)


def test_evaluate_writes_a_valid_report(
    installed: Installed, release: Release, calibrated: Path
) -> None:
    out = installed.cwd / "report"
    installed.run(
        "evaluate",
        "--model",
        release.case.model_path,
        "--events",
        release.labelled,
        "--detector",
        calibrated,
        "--attacks",
        "square",
        "--eps",
        "linf=0.1",
        "--device",
        "cpu",
        "--out",
        out,
    )
    report = load_report(out / "report.json")  # validated against the committed schema
    assert report["events"]["n_valid"] == N_EVALUATE, report["events"]
    assert report["settings"]["attacks"] == ["square"], report["settings"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>"), html[:80]
    assert "Content-Security-Policy" in html
    assert (out / "report.md").read_text(encoding="utf-8").startswith("#")
