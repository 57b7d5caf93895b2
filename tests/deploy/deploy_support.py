"""Static checks of the deployment files against the code they deploy.

Docker is not available where the tests run, so docker-compose.yml, deploy/Dockerfile,
.dockerignore and deploy/advmon.yaml are read here as data and compared with what the
code accepts: the ``ADVMON_*`` settings, the ``advmon`` CLI (and Faust's worker options
it passes through), the worker config format, Kafka's listeners. Each ``check_*``
function returns a list of problems (empty when all is well), so tests can also feed them
broken input and see the problem reported.

The Dockerfile is read by dockerfile-parse, the build context by docker-py's
``exclude_paths`` (Docker's .dockerignore rules), image references and ``ports`` short
syntax by docker-py too; what is left here is compose's variable interpolation (no
maintained Python library implements it) and the checks that are about advmon.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import click
import yaml
from docker.utils import parse_repository_tag
from docker.utils.build import exclude_paths
from docker.utils.ports import split_port
from dockerfile_parse import DockerfileParser
from dockerfile_parse.parser import image_from

from monitor.incidents.api import is_loopback
from monitor.settings import ENV_PREFIX, ApiSettings, WorkerSettings, setting_variable_names

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"

KAFKA = "kafka"
POSTGRES = "postgres"
WORKER = "advmon-worker"
API = "advmon-api"


# ---------------------------------------------------------------------------------------
# ADVMON_* environment variables


def check_settings_env(names: Iterable[str]) -> list[str]:
    """Problems with ``ADVMON_*`` names that are not fields of :class:`Settings`.

    pydantic-settings ignores an unknown top-level ``ADVMON_*`` variable silently (a typo
    like ``ADVMON_LOGLEVEL`` just has no effect), so this is checked by walking the model.
    Matching is case-insensitive, like the settings themselves.
    """
    known = setting_variable_names()
    return [
        f"{name} is not a setting of monitor.settings.Settings"
        for name in sorted(names)
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    ]


# ---------------------------------------------------------------------------------------
# docker-compose.yml


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's variable interpolation of ``value`` with host variables ``env`` (none
    by default, so the files' own defaults are what is checked)."""
    env = env or {}

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["plain"]:
            return env.get(match["plain"], "")
        braced = _BRACED.match(match["braced"])
        if braced is None:
            raise ValueError(f"invalid interpolation {match[0]!r}")
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op is None:
            return current or ""
        if op.endswith("-"):
            return arg if unset else str(current)
        if op.endswith("+"):
            return "" if unset else arg
        if unset:
            raise ValueError(f"required variable {name} is not set: {arg}")
        return str(current)

    return _INTERPOLATION.sub(substitute, value)


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} must hold a mapping"
    return data


def service(compose: Mapping[str, Any], name: str) -> dict[str, Any]:
    services = compose.get("services") or {}
    assert name in services, f"docker-compose.yml has no service {name!r}"
    value = services[name]
    assert isinstance(value, dict), f"service {name!r} must be a mapping"
    return value


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def service_env(
    svc: Mapping[str, Any], host_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list), interpolated."""
    raw = svc.get("environment") or {}
    items: list[tuple[str, str]]
    if isinstance(raw, Mapping):
        items = [(str(k), _scalar(v)) for k, v in raw.items()]
    else:
        items = [(str(e).partition("=")[0], str(e).partition("=")[2]) for e in raw]
    return {key: interpolate(value, host_env) for key, value in items}


def argv(value: Any) -> list[str] | None:
    """A compose ``command``/``entrypoint`` (list or string) as an argument list."""
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def image_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every service names a pinned image (an explicit tag or digest, not ``latest``), or
    is built."""
    problems = []
    for name, svc in (compose.get("services") or {}).items():
        image = svc.get("image")
        if image is None:
            if "build" not in svc:
                problems.append(f"service {name}: neither image nor build")
            continue
        image = interpolate(str(image))
        _, tag = parse_repository_tag(image)  # a digest (@sha256:…) stands in for the tag
        if not tag:
            problems.append(f"service {name}: image {image} has no tag (means latest)")
        elif tag == "latest":
            problems.append(f"service {name}: image {image} is not pinned")
    return problems


@dataclass(frozen=True)
class PortMapping:
    published: str | None
    target: int
    protocol: str = "tcp"
    host_ip: str | None = None  # the host address it is published on; None: every one


def service_ports(svc: Mapping[str, Any]) -> list[PortMapping]:
    """A service's ``ports`` in long syntax, or in short syntax (``docker run -p``'s, read by
    docker-py: ``[[IP:]HOST:]CONTAINER[/proto]``, ranges too)."""
    mappings = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, Mapping):
            published = entry.get("published")
            host_ip = entry.get("host_ip")
            mappings.append(
                PortMapping(
                    None if published is None else str(published),
                    int(entry["target"]),
                    str(entry.get("protocol", "tcp")),
                    None if host_ip is None else str(host_ip),
                )
            )
            continue
        targets, published_ports = split_port(interpolate(str(entry)))
        for index, target in enumerate(targets):
            port, _, protocol = str(target).partition("/")
            host = published_ports[index] if published_ports else None
            host_ip = host[0] if isinstance(host, tuple) else None
            host = host[1] if isinstance(host, tuple) else host  # (IP, port)
            mappings.append(
                PortMapping(str(host) if host else None, int(port), protocol or "tcp", host_ip)
            )
    return mappings


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))


def service_mounts(svc: Mapping[str, Any]) -> list[Mount]:
    """A service's ``volumes`` in short (``SRC:TARGET[:ro]``) or long syntax."""
    mounts = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, Mapping):
            mounts.append(
                Mount(
                    interpolate(str(entry.get("source", ""))),
                    interpolate(str(entry["target"])),
                    bool(entry.get("read_only", False)),
                )
            )
            continue
        parts = interpolate(str(entry)).split(":")
        if len(parts) == 1:
            mounts.append(Mount("", parts[0], False))
            continue
        options = parts[2].split(",") if len(parts) > 2 else []
        mounts.append(Mount(parts[0], parts[1], "ro" in options))
    return mounts


def mount_for(mounts: Iterable[Mount], container_path: PurePosixPath) -> Mount | None:
    """The mount that holds ``container_path`` (the deepest one when they nest)."""
    best: Mount | None = None
    for mount in mounts:
        target = PurePosixPath(mount.target)
        inside = container_path == target or target in container_path.parents
        deeper = best is None or len(target.parts) > len(PurePosixPath(best.target).parts)
        if inside and deeper:
            best = mount
    return best


def host_path(mount: Mount, container_path: PurePosixPath, project_dir: Path) -> Path:
    """Where ``container_path`` (inside bind mount ``mount``) lies on the host."""
    relative = container_path.relative_to(PurePosixPath(mount.target))
    return (project_dir / mount.source / relative).resolve()


# ---------------------------------------------------------------------------------------
# Kafka listeners


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int


def parse_listeners(value: str) -> dict[str, Listener]:
    """``NAME://host:port,…`` (Kafka's listeners / advertised.listeners) by name."""
    listeners = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        match = re.fullmatch(
            r"(?P<name>[A-Za-z0-9_]+)://(?P<host>[^:/]*|\[[^\]]*\]):(?P<port>\d+)", item
        )
        if match is None:
            raise ValueError(f"not a listener: {item!r}")
        name = match["name"].upper()
        listeners[name] = Listener(name, match["host"], int(match["port"]))
    return listeners


def parse_protocol_map(value: str) -> dict[str, str]:
    pairs = (item.split(":", 1) for item in value.split(",") if item.strip())
    return {name.strip().upper(): protocol.strip().upper() for name, protocol in pairs}


def kraft_problems(env: Mapping[str, str]) -> list[str]:
    """A single-node KRaft broker+controller configuration that holds together."""
    problems: list[str] = []
    roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    if roles != {"broker", "controller"}:
        problems.append(f"KAFKA_PROCESS_ROLES must be broker,controller, got {roles}")
    node_id = env.get("KAFKA_NODE_ID", "")
    if not node_id.isdigit():
        problems.append("KAFKA_NODE_ID must be set to a number")
    try:
        raw = env.get("CLUSTER_ID", "")
        if len(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))) != 16 or len(raw) != 22:
            raise ValueError(raw)
    except (ValueError, binascii.Error):
        problems.append("CLUSTER_ID must be a base64url-encoded UUID (22 characters)")
    try:
        listeners = parse_listeners(env.get("KAFKA_LISTENERS", ""))
        advertised = parse_listeners(env.get("KAFKA_ADVERTISED_LISTENERS", ""))
    except ValueError as exc:
        return [*problems, str(exc)]
    protocols = parse_protocol_map(env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", ""))
    for name in listeners:
        if name not in protocols and name not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
            problems.append(f"listener {name} has no security protocol in the map")
    for name, listener in advertised.items():
        if name not in listeners:
            problems.append(f"advertised listener {name} is not in KAFKA_LISTENERS")
        elif listeners[name].port != listener.port:
            problems.append(
                f"advertised listener {name} port {listener.port} differs from the "
                f"bound port {listeners[name].port}"
            )
    controllers = {
        n.strip().upper() for n in env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "").split(",")
    }
    controllers.discard("")
    if not controllers:
        problems.append("KAFKA_CONTROLLER_LISTENER_NAMES is not set")
    for name in controllers:
        if name not in listeners:
            problems.append(f"controller listener {name} is not in KAFKA_LISTENERS")
        if name in advertised:
            problems.append(f"controller listener {name} must not be advertised to clients")
    inter_broker = env.get("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT").upper()
    if inter_broker not in advertised:
        problems.append(f"inter-broker listener {inter_broker} is not advertised")
    voters = [
        v.strip() for v in env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(",") if v.strip()
    ]
    if len(voters) != 1:
        problems.append(f"a single-node cluster needs exactly one quorum voter, got {voters}")
    for voter in voters:
        match = re.fullmatch(r"(\d+)@([^:]+):(\d+)", voter)
        if match is None:
            problems.append(f"quorum voter {voter!r} is not ID@HOST:PORT")
            continue
        if match[1] != node_id:
            problems.append(f"quorum voter {voter} does not name KAFKA_NODE_ID {node_id}")
        if int(match[3]) not in {listeners[n].port for n in controllers if n in listeners}:
            problems.append(f"quorum voter {voter} port is not a controller listener port")
    for setting in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        if env.get(setting) != "1":
            problems.append(f"{setting} must be 1 on a single broker, got {env.get(setting)!r}")
    return problems


def bootstrap_problems(
    bootstrap: str,
    security_protocol: str,
    kafka_env: Mapping[str, str],
    kafka_names: set[str],
) -> list[str]:
    """Every ``host:port`` in ``bootstrap`` is a listener the broker advertises under a
    name reachable from another container (``kafka_names``), with the client's protocol."""
    problems = []
    advertised = parse_listeners(kafka_env.get("KAFKA_ADVERTISED_LISTENERS", ""))
    protocols = parse_protocol_map(kafka_env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", ""))
    for address in filter(None, (a.strip() for a in bootstrap.split(","))):
        host, _, port = address.rpartition(":")
        matches = [
            listener
            for listener in advertised.values()
            if listener.host == host and str(listener.port) == port
        ]
        if not matches:
            problems.append(
                f"bootstrap {address} is not an advertised listener "
                f"({', '.join(f'{x.host}:{x.port}' for x in advertised.values())})"
            )
            continue
        if host not in kafka_names:
            problems.append(f"bootstrap host {host} is not the kafka service ({kafka_names})")
        protocol = protocols.get(matches[0].name, matches[0].name)
        if protocol != security_protocol:
            problems.append(
                f"bootstrap {address} is listener {matches[0].name} ({protocol}) but the "
                f"worker speaks {security_protocol}"
            )
    return problems


# ---------------------------------------------------------------------------------------
# the advmon command line


@dataclass(frozen=True)
class Invocation:
    """An ``advmon`` command line, parsed without running it."""

    command: str
    params: dict[str, Any]
    faust_params: dict[str, Any] = field(default_factory=dict)

    @property
    def web_port(self) -> int:
        from faust.types._env import WEB_PORT

        port = self.faust_params.get("web_port")
        return int(port if port is not None else WEB_PORT)

    def web_bind(self, env: Mapping[str, str]) -> str:
        """The address the worker's web port listens on with ``env``: ``--web-bind``,
        else ``ADVMON_WORKER__WEB_BIND``, else the setting's default."""
        bind = self.faust_params.get("web_bind")
        if bind:
            return str(bind)
        return env.get("ADVMON_WORKER__WEB_BIND") or WorkerSettings().web_bind


def parse_advmon(args: list[str]) -> Invocation:
    """Parse ``advmon ARGS`` as the CLI would, without running a command.

    For ``worker``, the options advmon passes on to Faust are parsed by Faust's own
    ``worker`` command. Raises :class:`click.ClickException` for an invalid command line.
    """
    from faust.cli.faust import cli as faust_cli

    from monitor.cli import main

    root = main.make_context("advmon", list(args))
    rest = [*root._protected_args, *root.args]
    if not rest:
        raise click.UsageError("no subcommand")
    name, command, sub_args = main.resolve_command(root, rest)
    assert name is not None
    assert command is not None
    sub = command.make_context(name, list(sub_args), parent=root)
    faust_params: dict[str, Any] = {}
    if name == "worker":
        faust_worker = faust_cli.commands["worker"]
        faust_params = dict(faust_worker.make_context("worker", list(sub.args)).params)
    elif sub.args:
        raise click.UsageError(f"unexpected arguments {sub.args}")
    return Invocation(name, dict(sub.params), faust_params)


def api_token_problems(name: str, svc: Mapping[str, Any]) -> list[str]:
    """An ``advmon api`` service that listens beyond loopback must get a token: compose
    must refuse to start without ``ADVMON_API__TOKEN`` (``${ADVMON_API__TOKEN:?...}``),
    as ``advmon api`` itself would."""
    command = argv(svc.get("command"))
    invocation = parse_advmon(command) if command else None
    if invocation is None or invocation.command != "api":
        return []
    host = (
        invocation.params.get("host")
        or service_env(svc, {"ADVMON_API__TOKEN": "a-token"}).get("ADVMON_API__HOST")
        or ApiSettings().host
    )
    if is_loopback(host):
        return []
    raw = svc.get("environment") or {}
    entries = (
        dict(raw) if isinstance(raw, Mapping) else dict(str(e).partition("=")[::2] for e in raw)
    )
    if "ADVMON_API__TOKEN" not in entries:
        return [f"service {name}: advmon api listens on {host} but gets no ADVMON_API__TOKEN"]
    try:
        token = interpolate(_scalar(entries["ADVMON_API__TOKEN"]))
    except ValueError:
        return []  # compose refuses to start without the token
    if token:
        return [f"service {name}: ADVMON_API__TOKEN is a fixed value in the compose file"]
    return [
        f"service {name}: advmon api listens on {host} and compose starts it without "
        "ADVMON_API__TOKEN; require it with ${ADVMON_API__TOKEN:?...}"
    ]


def check_advmon_argv(args: list[str]) -> list[str]:
    try:
        parse_advmon(args)
    except click.ClickException as exc:
        return [f"advmon {shlex.join(args)}: {exc.format_message()}"]
    return []


# ---------------------------------------------------------------------------------------
# Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # what its ENV instructions set

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's stages, their instructions and ENV, as dockerfile-parse reads them."""
    parser = DockerfileParser(str(path))
    stages: list[Stage] = []
    for item, context in zip(parser.structure, parser.context_structure, strict=True):
        keyword, value, line = item["instruction"], item["value"], item["startline"] + 1
        if keyword == "FROM":
            base, name = image_from(value)
            assert base is not None, f"line {line}: FROM names no image"
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword in ("ARG", "COMMENT"), f"line {line}: {keyword} before the first FROM"
        elif keyword != "COMMENT":
            stages[-1].instructions.append(Instruction(keyword, value, line))
            stages[-1].env = dict(context.envs)
    return stages


def exec_form(value: str) -> list[str] | None:
    """The JSON-array (exec) form of CMD/ENTRYPOINT/RUN, or None for shell form."""
    if not value.startswith("["):
        return None
    parsed = json.loads(value)
    if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
        raise ValueError(f"not a JSON array of strings: {value}")
    return parsed


def run_argv(
    stage: Stage, entrypoint: Sequence[Any] | None, command: Sequence[Any] | None
) -> list[str]:
    """What a container of the image ``stage`` runs, by Docker's rule (compose's
    ``entrypoint``/``command``, Kubernetes' ``command``/``args``): an ``entrypoint`` given
    replaces the image's ENTRYPOINT and drops its CMD; a ``command`` given replaces the
    CMD."""
    if entrypoint is not None:
        return [str(word) for word in [*entrypoint, *(command or [])]]
    instruction = stage.last("ENTRYPOINT")
    assert instruction is not None, "the Dockerfile has no ENTRYPOINT"
    image_entrypoint = exec_form(instruction.value)
    assert image_entrypoint is not None, "ENTRYPOINT must use the exec (JSON) form"
    if command is None:
        cmd = stage.last("CMD")
        command = (exec_form(cmd.value) if cmd else None) or []
    return [*image_entrypoint, *(str(word) for word in command)]


def split_flags(value: str) -> tuple[dict[str, str], str]:
    """Leading ``--flag[=value]`` options of an instruction, and the rest."""
    flags: dict[str, str] = {}
    rest = value
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        key, _, flag_value = word[2:].partition("=")
        flags[key] = flag_value
        rest = rest.strip()
    return flags, rest


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY or ADD."""
    flags, rest = split_flags(instruction.value)
    words = exec_form(rest) or shlex.split(rest)
    if len(words) < 2:
        raise ValueError(f"line {instruction.line}: COPY needs a source and a destination")
    return flags, words[:-1], words[-1]


# ---------------------------------------------------------------------------------------
# the build context


def build_context(root: Path = REPO, dockerignore: Path = DOCKERIGNORE) -> set[str]:
    """Paths under ``root`` that ``docker build -f deploy/Dockerfile root`` sends, with the
    patterns of ``dockerignore`` read and applied as docker-py's ``build`` does."""
    lines = (line.strip() for line in dockerignore.read_text(encoding="utf-8").splitlines())
    patterns = [line for line in lines if line and not line.startswith("#")]
    return exclude_paths(root, patterns, dockerfile=DOCKERFILE.relative_to(REPO).as_posix())


def context_files(root: Path, source: str) -> Iterator[str]:
    """Files a COPY source names, relative to the context root (caches skipped)."""
    path = root / source
    if path.is_file():
        yield PurePosixPath(path.relative_to(root)).as_posix()
        return
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                yield (Path(folder) / name).relative_to(root).as_posix()


# ---------------------------------------------------------------------------------------
# pyproject.toml


def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def build_inputs(project: Mapping[str, Any]) -> set[str]:
    """Files and folders ``pip install .`` needs: pyproject, readme, the packages."""
    needed = {"pyproject.toml"}
    readme = project["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    elif isinstance(readme, Mapping) and "file" in readme:
        needed.add(str(readme["file"]))
    find = project.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    for pattern in find.get("include", []):
        top = str(pattern).split(".")[0].rstrip("*")
        if top:
            needed.add(top)
    return needed
