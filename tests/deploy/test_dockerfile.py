"""deploy/Dockerfile and .dockerignore against the repository and the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from docker.utils import parse_repository_tag
from packaging.specifiers import SpecifierSet

from tests.deploy.deploy_support import (
    DOCKERIGNORE,
    REPO,
    Instruction,
    Stage,
    build_context,
    build_inputs,
    check_advmon_argv,
    check_settings_env,
    context_files,
    copy_sources,
    dockerfile_stages,
    exec_form,
    parse_advmon,
    pyproject,
    split_flags,
)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages()


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return pyproject()


@pytest.fixture(scope="module")
def context() -> set[str]:
    return build_context()


def pip_install_commands(stage: Stage) -> list[tuple[Instruction, list[str]]]:
    """Each ``pip install`` in the stage's RUN instructions, as (instruction, argv)."""
    found = []
    for instruction in stage.all("RUN"):
        _, command = split_flags(instruction.value)
        for part in re.split(r"&&|;", command):
            words = shlex.split(part)
            if "pip" in " ".join(words[:3]) and "install" in words:
                found.append((instruction, words[words.index("install") + 1 :]))
    return found


def install_stage(stages: list[Stage]) -> tuple[Stage, Instruction, list[str]]:
    """The stage that installs the project (``pip install … .``) and that command."""
    for stage in stages:
        for instruction, args in pip_install_commands(stage):
            if any(a == "." or a.startswith(".[") for a in args):
                return stage, instruction, args
    raise AssertionError("no stage runs `pip install … .`")


def test_multi_stage_python_slim(stages: list[Stage], project: dict[str, Any]) -> None:
    assert len(stages) >= 2, "build and runtime stages"
    for stage in stages:
        _, tag = parse_repository_tag(stage.base)
        assert tag not in (None, "latest"), f"unpinned base {stage.base}"
    runtime = stages[-1]
    assert runtime.base.startswith("python:3.11-slim")
    version = str(parse_repository_tag(runtime.base)[1]).split("-")[0]
    assert version in SpecifierSet(project["project"]["requires-python"])
    bases = {stage.name: stage.base for stage in stages}
    for instruction in runtime.all("COPY"):
        flags, _, _ = copy_sources(instruction)
        if "from" in flags:
            # A virtual environment only works on the Python it was made with.
            assert bases.get(flags["from"]) == runtime.base, "build and runtime bases differ"


def test_installs_the_project_with_the_constraints(stages: list[Stage]) -> None:
    _, _, args = install_stage(stages)
    constraints = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-c", "--constraint")] + [
        a.split("=", 1)[1] for a in args if a.startswith("--constraint=")
    ]
    assert constraints == ["constraints.txt"]
    targets = [a for a in args if a == "." or a.startswith(".[")]
    extras = {e.strip() for t in targets for e in t[2:-1].split(",") if e.strip()}
    assert "dev" not in extras, "the image must not carry the dev tools"
    assert not [a for a in args if a.startswith("--group")], "nor the dev dependency group"
    assert not [a for a in args if a in ("-e", "--editable")], "install, not editable"


def test_build_inputs_are_copied_before_the_install(
    stages: list[Stage], project: dict[str, Any]
) -> None:
    stage, install, _ = install_stage(stages)
    copied: set[str] = set()
    for instruction in stage.instructions:
        if instruction.line >= install.line:
            break
        if instruction.keyword in ("COPY", "ADD"):
            flags, sources, _ = copy_sources(instruction)
            if "from" not in flags:
                copied |= {s.rstrip("/") or "." for s in sources}
    needed = build_inputs(project) | {"constraints.txt"}
    if "." not in copied:
        assert needed <= copied, f"not copied before pip install: {sorted(needed - copied)}"


def test_every_copied_file_exists_and_reaches_the_context(
    stages: list[Stage], context: set[str]
) -> None:
    names = [s.name for s in stages]
    for index, stage in enumerate(stages):
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, sources, _ = copy_sources(instruction)
            if "from" in flags:
                assert flags["from"] in names[:index], (
                    f"line {instruction.line}: --from={flags['from']} is no earlier stage"
                )
                continue
            for source in sources:
                matches = list(REPO.glob(source.rstrip("/")))
                assert matches, f"line {instruction.line}: {source} is not in the repository"
                for match in matches:
                    files = list(context_files(REPO, str(match.relative_to(REPO))))
                    assert files, f"{source} is empty"
                    left_out = [f for f in files if f not in context]
                    assert left_out == [], f".dockerignore leaves out files COPY needs: {left_out}"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".env",
        "advmon-data/v1/tables",
        "demo-output/model.onnx",
        "deploy/models/digits/model.onnx",
        "tests/conftest.py",
        "monitor/__pycache__/cli.cpython-311.pyc",
    ],
)
def test_build_context_leaves_out(tmp_path: Path, path: str) -> None:
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).touch()
    assert path not in build_context(tmp_path, DOCKERIGNORE)


def test_runs_as_an_unprivileged_user(runtime: Stage) -> None:
    user = runtime.last("USER")
    assert user is not None, "the runtime stage sets no USER (runs as root)"
    name = user.value.split(":")[0]
    assert name not in ("root", "0")


def test_workdir_belongs_to_the_user(runtime: Stage) -> None:
    # Faust writes its data directory into the working directory.
    workdir = runtime.last("WORKDIR")
    assert workdir is not None
    assert workdir.value not in ("/", "")
    runs = " ".join(i.value for i in runtime.all("RUN"))
    assert re.search(rf"--home(?:-dir)?[ =]{re.escape(workdir.value)}\b", runs) or (
        "chown" in runs and workdir.value in runs
    ), f"WORKDIR {workdir.value} is not created for the user"


def test_entrypoint_is_the_advmon_script(runtime: Stage, project: dict[str, Any]) -> None:
    entrypoint = runtime.last("ENTRYPOINT")
    assert entrypoint is not None
    assert exec_form(entrypoint.value) == ["advmon"]
    assert "advmon" in project["project"]["scripts"]


def test_default_command_is_a_valid_worker_invocation(runtime: Stage) -> None:
    cmd = runtime.last("CMD")
    assert cmd is not None
    args = exec_form(cmd.value)
    assert args is not None, "CMD must use the exec (JSON) form"
    assert check_advmon_argv(args) == []
    assert parse_advmon(args).command == "worker"


def test_exposes_the_web_port(runtime: Stage) -> None:
    cmd = runtime.last("CMD")
    assert cmd is not None
    port = parse_advmon(exec_form(cmd.value) or []).web_port
    exposed = {int(w.split("/")[0]) for i in runtime.all("EXPOSE") for w in i.value.split()}
    assert port in exposed


def test_web_port_listens_beyond_the_container_loopback(runtime: Stage) -> None:
    # The worker listens on loopback by default: EXPOSE would publish nothing.
    cmd = runtime.last("CMD")
    assert cmd is not None
    assert parse_advmon(exec_form(cmd.value) or []).web_bind(runtime.env) == "0.0.0.0"


def test_healthcheck_calls_healthz_on_the_web_port(runtime: Stage) -> None:
    cmd = runtime.last("CMD")
    healthcheck = runtime.last("HEALTHCHECK")
    assert cmd is not None
    assert healthcheck is not None
    port = parse_advmon(exec_form(cmd.value) or []).web_port
    _, rest = split_flags(healthcheck.value)
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD"
    args = exec_form(command.strip())
    assert args is not None, "HEALTHCHECK CMD must use the exec (JSON) form"
    assert args[:2] == ["python", "-c"], "python -c: slim has no curl"
    compile(args[2], "<healthcheck>", "exec")
    assert f"http://localhost:{port}/healthz" in args[2]


def test_healthz_page_exists() -> None:
    sources = " ".join(p.read_text(encoding="utf-8") for p in (REPO / "monitor").rglob("*.py"))
    assert re.search(r"\.page\(\s*[\"']/healthz[\"']", sources), "no /healthz page in monitor/"


def test_environment_is_real_settings(runtime: Stage) -> None:
    env = runtime.env
    assert check_settings_env(env) == []
    assert env.get("ADVMON_CONFIG", "").startswith("/")
