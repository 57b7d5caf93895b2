"""Static checks of deploy/kubernetes against the code it deploys.

No cluster is available where the tests run: the kustomizations are rendered by the
kustomize that ``make k8s-tools`` pins (in ``.tools/bin``), and the rendered objects are
read as data. Built-in kinds are validated by kubernetes-validate's schemas, the
prometheus-operator objects by the operator's CRDs (``.tools/crds``, also from
``make k8s-tools``); the rest is compared with what advmon accepts: its CLI, its
``ADVMON_*`` settings, its worker config, its web pages, its alert rules, its image.
Each ``*_problems`` function returns a list of problems (empty when all is well), so
tests can also feed it broken objects and see the problem reported.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import yaml
from docker.utils import parse_repository_tag
from pydantic import BaseModel, SecretStr

from monitor.config import MonitorConfig, load_config
from monitor.errors import ConfigError
from monitor.incidents.api import is_loopback
from monitor.settings import ENV_PREFIX, ApiSettings, KafkaSettings, Settings
from tests.deploy.deploy_support import (
    REPO,
    Invocation,
    Stage,
    check_advmon_argv,
    check_settings_env,
    parse_advmon,
    run_argv,
)

KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
BASE = KUBERNETES_DIR / "base"
OVERLAYS = KUBERNETES_DIR / "overlays"
#: Manifests outside the kustomizations, applied by hand (deploy/kubernetes/README.md).
STANDALONE = (KUBERNETES_DIR / "models-loader.yaml",)
RULES_FILE = REPO / "deploy" / "prometheus-rules.yml"
RULE_SCRIPT = KUBERNETES_DIR / "prometheus_rule.py"
MAKEFILE = REPO / "Makefile"
WORKER_WEB = REPO / "monitor" / "worker" / "web.py"
TOOLS = REPO / ".tools"
KUSTOMIZE = TOOLS / "bin" / "kustomize"
CRDS = TOOLS / "crds"

#: The oldest Kubernetes the manifests support (deploy/kubernetes/README.md), and the
#: newest kubernetes-validate has schemas for.
KUBERNETES_VERSIONS = ("1.30", str(kubernetes_validate.latest_version()))

#: A secret overlay's Secret is generated from; the repository holds only ``*.example``.
SECRETS_FILE = "secrets.env"
EXAMPLE_SUFFIX = ".example"

#: Values of the pods' field references where a test needs one.
SAMPLE_FIELDS = {
    "metadata.name": "advmon-worker-0",
    "metadata.namespace": "advmon",
    "status.podIP": "10.1.2.3",
}

#: A rebalance answers 503 on the worker's /healthz until the new assignment is
#: recovered: the liveness probe must tolerate at least this long.
REBALANCE_SECONDS = 180

#: The volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"})

Manifest = dict[str, Any]


# ---------------------------------------------------------------------------------------
# the tools and rendering


def makefile_variable(name: str, makefile: Path = MAKEFILE) -> str:
    """The value of ``NAME := value`` in the Makefile."""
    match = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", makefile.read_text(encoding="utf-8"), re.M)
    assert match is not None, f"{makefile} sets no {name}"
    return match[1]


def tools_problems(tools: Path = TOOLS) -> list[str]:
    """Why the pinned kustomize and CRDs in ``tools`` cannot be used, if they cannot."""
    stamp = tools / (
        f".k8s-tools-{makefile_variable('KUSTOMIZE_VERSION')}"
        f"-{makefile_variable('PROMETHEUS_OPERATOR_VERSION')}"
    )
    missing = [
        path for path in (stamp, tools / "bin" / "kustomize", tools / "crds") if not path.exists()
    ]
    if not missing:
        return []
    return [
        f"{', '.join(map(str, missing))} missing: run `make k8s-tools` (builds the pinned "
        "kustomize with Go and fetches prometheus-operator's CRDs into .tools)"
    ]


def kustomize_build(directory: Path) -> list[Manifest]:
    """``kustomize build DIRECTORY``, as objects."""
    result = subprocess.run(
        [str(KUSTOMIZE), "build", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kustomize build {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def example_keys(path: Path) -> list[str]:
    """The keys of a ``KEY=VALUE`` file (comments and blank lines skipped)."""
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keys.append(line.partition("=")[0].strip())
    return keys


def copy_with_placeholder_secrets(workdir: Path, secrets: Mapping[str, str]) -> Path:
    """A copy of deploy/kubernetes in ``workdir`` whose overlays get their secret files
    written from ``secrets`` (placeholder values, by key), never copied from the tree."""
    copy_root = workdir / "kubernetes"
    shutil.copytree(KUBERNETES_DIR, copy_root, ignore=shutil.ignore_patterns(SECRETS_FILE))
    for example in copy_root.rglob(f"*{EXAMPLE_SUFFIX}"):
        keys = example_keys(example)
        unknown = [key for key in keys if key not in secrets]
        assert not unknown, f"{example.name} has keys {unknown} the test has no value for"
        target = example.with_name(example.name.removesuffix(EXAMPLE_SUFFIX))
        target.write_text("".join(f"{key}={secrets[key]}\n" for key in keys), encoding="utf-8")
    return copy_root


@dataclass
class Rendering:
    """The objects one kustomization renders."""

    name: str
    documents: list[Manifest]

    def all(self, kind: str) -> list[Manifest]:
        return [doc for doc in self.documents if doc.get("kind") == kind]

    def get(self, kind: str, name: str) -> Manifest | None:
        for doc in self.all(kind):
            if doc["metadata"]["name"] == name:
                return doc
        return None

    def one(self, kind: str, name: str) -> Manifest:
        doc = self.get(kind, name)
        assert doc is not None, f"{self.name} renders no {kind} {name}"
        return doc

    def workloads(self) -> list[Manifest]:
        return [doc for doc in self.documents if doc.get("kind") in WORKLOAD_KINDS]


def describe(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------------------------------
# schemas


def strict_schema(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as the API server's strict field
    validation does (without it, unknown fields are pruned in silence)."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def load_crds(directory: Path = CRDS) -> dict[tuple[str, str], Any]:
    """The schema of each served ``(apiVersion, kind)`` of the CRDs in ``directory``."""
    schemas: dict[tuple[str, str], Any] = {}
    for path in sorted(directory.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert crd.get("kind") == "CustomResourceDefinition", f"{path} is not a CRD"
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = strict_schema(version["schema"]["openAPIV3Schema"])
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def schema_problems(
    doc: Manifest, kubernetes_version: str, crds: Mapping[tuple[str, str], Any]
) -> list[str]:
    """``doc`` against its CRD's schema, or kubernetes-validate's strict schema of its kind
    in ``kubernetes_version``."""
    key = (str(doc.get("apiVersion")), str(doc.get("kind")))
    if key in crds:
        validator = jsonschema.Draft7Validator(crds[key])
        return [
            f"{describe(doc)}: {'.'.join(map(str, error.absolute_path)) or '<root>'}: "
            f"{error.message}"
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        ]
    if key[0].startswith("monitoring.coreos.com/"):
        return [f"{describe(doc)}: {key[0]} {key[1]} is no kind the operator's CRDs serve"]
    try:
        kubernetes_validate.validate(doc, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(map(str, error.path)) or "<root>"
        return [f"{describe(doc)} (Kubernetes {kubernetes_version}): {where}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{describe(doc)}: {error.message}"]
    return []


# ---------------------------------------------------------------------------------------
# pods and containers


def pod_template(doc: Manifest) -> Manifest:
    """The pod a workload runs (metadata and spec)."""
    kind = doc["kind"]
    if kind == "Pod":
        return {"metadata": doc.get("metadata", {}), "spec": doc["spec"]}
    if kind == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"])
    return dict(doc["spec"]["template"])


def pod_labels(doc: Manifest) -> dict[str, str]:
    return dict(pod_template(doc).get("metadata", {}).get("labels") or {})


def containers(doc: Manifest) -> list[Manifest]:
    spec = pod_template(doc)["spec"]
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def image_repository(image: str) -> str:
    repository, _ = parse_repository_tag(image)
    return repository


def runs_advmon(container: Mapping[str, Any]) -> bool:
    """Whether the container runs advmon's image (``…/advmon:TAG``)."""
    return image_repository(str(container.get("image", ""))).rpartition("/")[2] == "advmon"


def advmon_containers(rendering: Rendering) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, container) for every container that runs advmon's image."""
    for workload in rendering.workloads():
        for container in containers(workload):
            if runs_advmon(container):
                yield workload, container


def container_argv(container: Mapping[str, Any], stage: Stage) -> list[str]:
    """What the container runs: ``command`` replaces the image's ENTRYPOINT (and drops
    its CMD), ``args`` replaces the CMD."""
    return run_argv(stage, container.get("command"), container.get("args"))


def invocation(container: Mapping[str, Any], stage: Stage) -> Invocation:
    argv = container_argv(container, stage)
    assert argv[:1] == ["advmon"], f"container {container.get('name')} runs {argv}, not advmon"
    return parse_advmon(argv[1:])


def advmon_command(container: Mapping[str, Any], stage: Stage) -> str | None:
    """The advmon subcommand the container runs (``worker``, ``api``…), if it runs one."""
    argv = container_argv(container, stage)
    if argv[:1] != ["advmon"] or check_advmon_argv(argv[1:]):
        return None
    return parse_advmon(argv[1:]).command


@dataclass(frozen=True)
class EnvSource:
    """Where a container's environment variable comes from."""

    value: str | None = None
    field_path: str | None = None
    secret: tuple[str, str] | None = None  # (Secret name, key)
    config_map: tuple[str, str] | None = None  # (ConfigMap name, key)


def _data(doc: Manifest | None) -> dict[str, str]:
    """A ConfigMap's or Secret's values, decoded."""
    if doc is None:
        return {}
    values = {
        key: base64.b64decode(value).decode() if doc["kind"] == "Secret" else str(value)
        for key, value in (doc.get("data") or {}).items()
    }
    values.update({key: str(value) for key, value in (doc.get("stringData") or {}).items()})
    return values


def container_env(container: Mapping[str, Any], rendering: Rendering) -> dict[str, EnvSource]:
    """The container's environment: ``envFrom`` (keys of the rendered objects it names),
    then ``env``, which wins."""
    env: dict[str, EnvSource] = {}
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            for key in _data(rendering.get("ConfigMap", name)):
                env[prefix + key] = EnvSource(config_map=(name, key))
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            for key in _data(rendering.get("Secret", name)):
                env[prefix + key] = EnvSource(secret=(name, key))
    for entry in container.get("env") or []:
        reference = entry.get("valueFrom") or {}
        if "fieldRef" in reference:
            env[entry["name"]] = EnvSource(field_path=reference["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in reference:
            ref = reference["secretKeyRef"]
            env[entry["name"]] = EnvSource(secret=(ref["name"], ref["key"]))
        elif "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            env[entry["name"]] = EnvSource(config_map=(ref["name"], ref["key"]))
        else:
            env[entry["name"]] = EnvSource(value=str(entry.get("value", "")))
    return env


def resolve_env(
    env: Mapping[str, EnvSource],
    rendering: Rendering,
    fields: Mapping[str, str] = SAMPLE_FIELDS,
) -> dict[str, str]:
    """The values the process would see (field references from ``fields``); variables
    whose object or key is not rendered are left out."""
    values: dict[str, str] = {}
    for name, source in env.items():
        if source.value is not None:
            values[name] = source.value
        elif source.field_path is not None:
            if source.field_path in fields:
                values[name] = fields[source.field_path]
        else:
            kind = "Secret" if source.secret else "ConfigMap"
            reference = source.secret or source.config_map
            assert reference is not None
            data = _data(rendering.get(kind, reference[0]))
            if reference[1] in data:
                values[name] = data[reference[1]]
    return values


def secret_setting_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> set[str]:
    """The ``ADVMON_*`` variables whose setting is a secret (``SecretStr``)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        variable = (prefix + name).upper()
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= secret_setting_names(annotation, variable + "__")
        elif SecretStr in (annotation, *getattr(annotation, "__args__", ())):
            names.add(variable)
    return names


# ---------------------------------------------------------------------------------------
# selectors and ports


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector (``matchLabels``/``matchExpressions``), or a Service's plain
    label map, selects ``labels``."""
    if not selector:
        return True
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def selected_workloads(rendering: Rendering, selector: Mapping[str, Any] | None) -> list[Manifest]:
    return [w for w in rendering.workloads() if selector_matches(selector, pod_labels(w))]


def named_ports(container: Mapping[str, Any]) -> dict[str, int]:
    return {
        str(port["name"]): int(port["containerPort"])
        for port in container.get("ports") or []
        if port.get("name")
    }


def pod_port(workload: Manifest, port: int | str) -> int | None:
    """The container port ``port`` (a name or a number) is in the workload's pods."""
    for container in containers(workload):
        for entry in container.get("ports") or []:
            if port in (entry.get("name"), entry.get("containerPort")):
                return int(entry["containerPort"])
    return None


def probe_target(probe: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[int | None, str]:
    """(port, path) an HTTP probe asks; port None when it names no port of the container."""
    http = probe.get("httpGet") or {}
    port = http.get("port")
    number = named_ports(container).get(port) if isinstance(port, str) else port
    return (None if number is None else int(number)), str(http.get("path", "/"))


def mount_covering(
    mounts: Iterable[Mapping[str, Any]], path: PurePosixPath
) -> Mapping[str, Any] | None:
    """The volume mount that holds ``path`` (the deepest one when they nest)."""
    best: Mapping[str, Any] | None = None
    for mount in mounts:
        target = PurePosixPath(mount["mountPath"])
        inside = path == target or target in path.parents
        if inside and (
            best is None or len(target.parts) > len(PurePosixPath(best["mountPath"]).parts)
        ):
            best = mount
    return best


def volume(workload: Manifest, name: str) -> Mapping[str, Any]:
    for entry in pod_template(workload)["spec"].get("volumes") or []:
        if entry["name"] == name:
            return dict(entry)
    raise AssertionError(f"{describe(workload)} mounts volume {name}, which it does not declare")


# ---------------------------------------------------------------------------------------
# the worker


def worker_problems(workload: Manifest, stage: Stage) -> list[str]:
    """The worker runs as a StatefulSet with static membership from its pod name, its web
    port named and bound to the pod's address, and probes that reach /healthz on it."""
    problems: list[str] = []
    name = describe(workload)
    if workload["kind"] != "StatefulSet":
        problems.append(f"{name}: workers run as a StatefulSet (stable pod names)")
    (container,) = [c for c in containers(workload) if runs_advmon(c)]
    run = invocation(container, stage)
    if run.command != "worker":
        return [*problems, f"{name}: runs advmon {run.command}, not the worker"]
    port = run.web_port
    ports = {number: port_name for port_name, number in named_ports(container).items()}
    if port not in ports:
        problems.append(f"{name}: the web port {port} (--web-port) is no named container port")
    if run.faust_params.get("web_bind"):
        problems.append(f"{name}: --web-bind overrides ADVMON_WORKER__WEB_BIND")
    env = {
        entry["name"]: entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for entry in container.get("env") or []
    }
    for variable, field in (
        ("ADVMON_WORKER__WEB_BIND", "status.podIP"),
        ("ADVMON_WORKER__INSTANCE_ID", "metadata.name"),
    ):
        if env.get(variable) != field:
            problems.append(f"{name}: {variable} must come from the field {field}")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is None:
            problems.append(f"{name}: no {kind}")
            continue
        target = probe_target(probe, container)
        if target != (port, "/healthz"):
            problems.append(f"{name}: {kind} asks {target}, not /healthz on the web port {port}")
    liveness = container.get("livenessProbe") or {}
    tolerated = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    if tolerated < REBALANCE_SECONDS:
        problems.append(
            f"{name}: the livenessProbe restarts a worker after {tolerated} s of 503s; a "
            f"rebalance can take longer (at least {REBALANCE_SECONDS} s)"
        )
    return problems


def worker_pages(source: Path = WORKER_WEB) -> set[str]:
    """The paths the worker's web port serves (its ``app.page`` registrations)."""
    return set(
        re.findall(r"""@app\.page\(\s*["']([^"']+)["']""", source.read_text(encoding="utf-8"))
    )


def parse_duration(value: str) -> float:
    """A compose/Go duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def grace_period_problems(workload: Manifest, compose_service: Mapping[str, Any]) -> list[str]:
    """The pods get the time to stop that compose gives the same process."""
    grace = pod_template(workload)["spec"].get("terminationGracePeriodSeconds", 30)
    compose_grace = parse_duration(str(compose_service.get("stop_grace_period", "10s")))
    if grace != compose_grace:
        return [
            f"{describe(workload)}: terminationGracePeriodSeconds {grace} differs from "
            f"docker-compose.yml's stop_grace_period ({compose_grace:g} s)"
        ]
    return []


def session_timeout_problems(workload: Manifest, env: Mapping[str, str]) -> list[str]:
    """A worker stopped gracefully and started again keeps its static membership only if
    it is back within the session timeout: it must exceed the grace period."""
    grace = pod_template(workload)["spec"].get("terminationGracePeriodSeconds", 30)
    timeout_ms = int(
        env.get("ADVMON_KAFKA__SESSION_TIMEOUT_MS", KafkaSettings().session_timeout_ms)
    )
    if timeout_ms <= grace * 1000:
        return [
            f"{describe(workload)}: ADVMON_KAFKA__SESSION_TIMEOUT_MS {timeout_ms} is no longer "
            f"than the {grace} s grace period: a restarted worker rejoins after its static "
            "membership expired, and the group rebalances"
        ]
    return []


def config_problems(
    workload: Manifest, rendering: Rendering, stage: Stage, workdir: Path
) -> list[str]:
    """The worker config: the image's ADVMON_CONFIG, mounted from a rendered ConfigMap, a
    valid config, whose detectors lie in a read-only volume."""
    name = describe(workload)
    (container,) = [c for c in containers(workload) if runs_advmon(c)]
    run = invocation(container, stage)
    env = resolve_env(container_env(container, rendering), rendering)
    path = (
        run.params.get("config_path") or env.get("ADVMON_CONFIG") or stage.env.get("ADVMON_CONFIG")
    )
    if not path:
        return [f"{name}: the worker gets no config: neither --config nor ADVMON_CONFIG"]
    config_path = PurePosixPath(str(path))
    problems: list[str] = []
    if str(config_path) != stage.env.get("ADVMON_CONFIG"):
        problems.append(f"{name}: config {config_path} is not the image's ADVMON_CONFIG")
    mounts = container.get("volumeMounts") or []
    mount = mount_covering(mounts, config_path)
    if mount is None:
        return [*problems, f"{name}: nothing is mounted at {config_path}"]
    source = volume(workload, mount["name"]).get("configMap")
    if source is None:
        return [*problems, f"{name}: {config_path} is not mounted from a ConfigMap"]
    if PurePosixPath(mount["mountPath"]) == config_path:
        key = mount.get("subPath")
    else:
        key = config_path.relative_to(PurePosixPath(mount["mountPath"])).as_posix()
    for item in source.get("items") or []:
        if item["path"] == key:
            key = item["key"]
    data = _data(rendering.get("ConfigMap", source["name"]))
    if key not in data:
        return [*problems, f"{name}: ConfigMap {source['name']} has no key {key}"]
    local = workdir / config_path.name
    local.write_text(data[key], encoding="utf-8")
    try:
        load_config(local)
    except ConfigError as exc:
        return [*problems, f"{name}: {exc}"]
    config = MonitorConfig.model_validate(yaml.safe_load(data[key]))
    for model in config.models:
        detector = PurePosixPath(config_path.parent, model.detector.as_posix())
        holder = mount_covering(mounts, detector)
        if holder is None:
            problems.append(f"{name}: model {model.id}: detector {detector} is in no volume")
        elif not holder.get("readOnly"):
            problems.append(f"{name}: model {model.id}: mount {holder['mountPath']} read-only")
    return problems


# ---------------------------------------------------------------------------------------
# the incident API


def api_problems(workload: Manifest, stage: Stage, rendering: Rendering) -> list[str]:
    """``advmon api`` listens beyond loopback only with a token from a Secret, on a named
    container port, and its HTTP probes reach /healthz there."""
    name = describe(workload)
    (container,) = [c for c in containers(workload) if runs_advmon(c)]
    run = invocation(container, stage)
    if run.command != "api":
        return [f"{name}: runs advmon {run.command}, not the API"]
    problems: list[str] = []
    env = container_env(container, rendering)
    literal = {key: source.value for key, source in env.items() if source.value is not None}
    defaults = ApiSettings()
    host = run.params.get("host") or literal.get("ADVMON_API__HOST") or defaults.host
    port = int(run.params.get("port") or literal.get("ADVMON_API__PORT") or defaults.port)
    token = env.get("ADVMON_API__TOKEN")
    if not is_loopback(host):
        if token is None:
            problems.append(f"{name}: advmon api listens on {host} but gets no ADVMON_API__TOKEN")
        elif token.secret is None:
            problems.append(f"{name}: ADVMON_API__TOKEN must come from a Secret (secretKeyRef)")
    if port not in named_ports(container).values():
        problems.append(f"{name}: the API's port {port} is no named container port")
    http_probes = [
        container[k]
        for k in ("startupProbe", "readinessProbe", "livenessProbe")
        if "httpGet" in container.get(k, {})
    ]
    if not http_probes:
        problems.append(f"{name}: no HTTP probe asks the API's /healthz")
    for probe in http_probes:
        target = probe_target(probe, container)
        if target != (port, "/healthz"):
            problems.append(f"{name}: a probe asks {target}, not /healthz on the API port {port}")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        tcp = container.get(kind, {}).get("tcpSocket")
        if tcp is not None and pod_port(workload, tcp["port"]) != port:
            problems.append(f"{name}: {kind} checks port {tcp['port']}, not the API's {port}")
    return problems


# ---------------------------------------------------------------------------------------
# settings, secrets, references


def command_problems(rendering: Rendering, stage: Stage) -> list[str]:
    """Every advmon container runs a valid ``advmon`` command line and sets only
    ``ADVMON_*`` variables that are settings."""
    problems: list[str] = []
    for workload, container in advmon_containers(rendering):
        argv = container_argv(container, stage)
        where = f"{describe(workload)} container {container['name']}"
        if argv[:1] != ["advmon"]:
            problems.append(f"{where}: runs {argv[:1]}, not advmon")
            continue
        problems += [f"{where}: {p}" for p in check_advmon_argv(argv[1:])]
        problems += [
            f"{where}: {p}" for p in check_settings_env(container_env(container, rendering))
        ]
    return problems


def secret_source_problems(rendering: Rendering) -> list[str]:
    """Secret settings (``SecretStr``) come from a Secret, never from a literal value or a
    ConfigMap."""
    secret_names = secret_setting_names()
    problems = []
    for workload, container in advmon_containers(rendering):
        for name, source in container_env(container, rendering).items():
            if name.upper() in secret_names and source.secret is None:
                problems.append(
                    f"{describe(workload)} container {container['name']}: {name} is a secret "
                    "setting: take it from a Secret (secretKeyRef)"
                )
    return problems


def reference_problems(rendering: Rendering, external: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Every Secret, ConfigMap and PersistentVolumeClaim the pods use is rendered (with
    the keys they read), except the ``external`` (kind, name) another kustomization
    provides."""
    provided = set(external)
    problems: list[str] = []

    def check(where: str, kind: str, name: str, key: str | None = None) -> None:
        if (kind, name) in provided:
            return
        doc = rendering.get(kind, name)
        if doc is None:
            problems.append(f"{where}: {kind} {name} is not rendered")
        elif key is not None and key not in _data(doc):
            problems.append(f"{where}: {kind} {name} has no key {key}")

    for workload in rendering.workloads():
        spec = pod_template(workload)["spec"]
        where = describe(workload)
        for container in containers(workload):
            for source in container.get("envFrom") or []:
                if "configMapRef" in source:
                    check(where, "ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    check(where, "Secret", source["secretRef"]["name"])
            for entry in container.get("env") or []:
                reference = entry.get("valueFrom") or {}
                for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if field in reference and not reference[field].get("optional"):
                        check(where, kind, reference[field]["name"], reference[field]["key"])
        for entry in spec.get("volumes") or []:
            if "configMap" in entry:
                for item in entry["configMap"].get("items") or [{"key": None}]:
                    check(where, "ConfigMap", entry["configMap"]["name"], item["key"])
            if "secret" in entry:
                check(where, "Secret", entry["secret"]["secretName"])
            if "persistentVolumeClaim" in entry:
                check(where, "PersistentVolumeClaim", entry["persistentVolumeClaim"]["claimName"])
        account = spec.get("serviceAccountName")
        if account:
            check(where, "ServiceAccount", account)
    return problems


# ---------------------------------------------------------------------------------------
# services, selectors, network policies


def selector_problems(rendering: Rendering) -> list[str]:
    """Each workload selects its own pods; Services, PodDisruptionBudgets and spread
    constraints select pods that exist, and Services' target ports are ports of theirs."""
    problems: list[str] = []
    for workload in rendering.workloads():
        selector = workload.get("spec", {}).get("selector")
        if selector is not None and not selector_matches(selector, pod_labels(workload)):
            problems.append(f"{describe(workload)}: its selector does not select its pods")
        for constraint in pod_template(workload)["spec"].get("topologySpreadConstraints") or []:
            if not selector_matches(constraint.get("labelSelector"), pod_labels(workload)):
                problems.append(f"{describe(workload)}: a spread constraint misses its pods")
        service_name = workload.get("spec", {}).get("serviceName")
        if workload["kind"] == "StatefulSet":
            governing = rendering.get("Service", str(service_name))
            if governing is None:
                problems.append(f"{describe(workload)}: serviceName {service_name} is not rendered")
            elif governing["spec"].get("clusterIP") != "None":
                problems.append(f"Service {service_name}: a StatefulSet's Service is headless")
            elif workload not in selected_workloads(rendering, governing["spec"].get("selector")):
                problems.append(f"Service {service_name} does not select {describe(workload)}")
    for service in rendering.all("Service"):
        selector = service["spec"].get("selector")
        if not selector:
            continue
        selected = selected_workloads(rendering, selector)
        if not selected:
            problems.append(f"{describe(service)}: selects no pods")
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            for workload in selected:
                if pod_port(workload, target) is None:
                    problems.append(
                        f"{describe(service)}: targetPort {target} is no port of "
                        f"{describe(workload)}"
                    )
    for budget in rendering.all("PodDisruptionBudget"):
        if not selected_workloads(rendering, budget["spec"].get("selector")):
            problems.append(f"{describe(budget)}: selects no pods")
    return problems


def network_policy_problems(rendering: Rendering, open_ports: Mapping[str, set[int]]) -> list[str]:
    """Every advmon pod is isolated for ingress; policies allow only named ports of the
    pods they select, and a port serving without authentication is allowed only from
    the peers named (``open_ports``: the workload name's ports that need no ``from``)."""
    problems: list[str] = []
    policies = rendering.all("NetworkPolicy")
    for workload in rendering.workloads():
        if not any(runs_advmon(c) for c in containers(workload)):
            continue
        labels = pod_labels(workload)
        name = workload["metadata"]["name"]
        applying = [
            p
            for p in policies
            if selector_matches(p["spec"].get("podSelector"), labels)
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not applying:
            problems.append(f"{describe(workload)}: no NetworkPolicy isolates it for ingress")
        for policy in applying:
            for rule in policy["spec"].get("ingress") or []:
                if not rule.get("ports"):
                    problems.append(
                        f"{describe(policy)}: allows every port of {describe(workload)}"
                    )
                    continue
                for port in rule["ports"]:
                    number = pod_port(workload, port.get("port"))
                    if number is None:
                        problems.append(
                            f"{describe(policy)}: port {port.get('port')} is no port of "
                            f"{describe(workload)}"
                        )
                    elif not rule.get("from") and number not in open_ports.get(name, set()):
                        problems.append(
                            f"{describe(policy)}: port {number} of {describe(workload)} is "
                            "open to everyone: name the peers allowed (from)"
                        )
    return problems


# ---------------------------------------------------------------------------------------
# prometheus-operator


def rule_jobs(rules_file: Path = RULES_FILE) -> set[str]:
    """The scrape jobs the alert rules select (``job="…"``)."""
    return set(re.findall(r'\bjob\s*=\s*"([^"]+)"', rules_file.read_text(encoding="utf-8")))


def monitor_job(monitor: Manifest, labels: Mapping[str, str]) -> str:
    """The job label prometheus-operator gives a PodMonitor's targets: a relabeling that
    replaces it, else the pod label ``jobLabel`` names, else <namespace>/<name>."""
    job = None
    if monitor["spec"].get("jobLabel"):
        job = labels.get(monitor["spec"]["jobLabel"])
    for endpoint in monitor["spec"].get("podMetricsEndpoints") or []:
        for relabel in endpoint.get("relabelings") or []:
            action = relabel.get("action", "replace").lower()
            if action == "replace" and relabel.get("targetLabel") == "job":
                job = relabel.get("replacement", "$1")
    namespace = monitor["metadata"].get("namespace", "<namespace>")
    return job or f"{namespace}/{monitor['metadata']['name']}"


def pod_monitor_problems(
    monitor: Manifest, rendering: Rendering, stage: Stage, jobs: set[str]
) -> list[str]:
    """The PodMonitor scrapes the workers' web port at /metrics under a job the alert
    rules select."""
    name = describe(monitor)
    workers = [
        w
        for w in selected_workloads(rendering, monitor["spec"].get("selector"))
        if any(advmon_command(c, stage) == "worker" for c in containers(w))
    ]
    if not workers:
        return [f"{name}: selects no advmon worker pods"]
    problems: list[str] = []
    endpoints = monitor["spec"].get("podMetricsEndpoints") or []
    if not endpoints:
        problems.append(f"{name}: no podMetricsEndpoints")
    for endpoint in endpoints:
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(f"{name}: path {endpoint.get('path')} is not the worker's /metrics")
        for workload in workers:
            (container,) = [c for c in containers(workload) if runs_advmon(c)]
            port = named_ports(container).get(str(endpoint.get("port")))
            if port is None:
                problems.append(
                    f"{name}: port {endpoint.get('port')} is no named port of {describe(workload)}"
                )
            elif port != invocation(container, stage).web_port:
                problems.append(f"{name}: port {endpoint.get('port')} is not the worker's web port")
            job = monitor_job(monitor, pod_labels(workload))
            if job not in jobs:
                problems.append(
                    f"{name}: its targets get job {job!r}; the rules select {sorted(jobs)}"
                )
    return problems


def prometheus_rule_problems(rule: Manifest, rules_file: Path = RULES_FILE) -> list[str]:
    """The PrometheusRule holds exactly the groups of deploy/prometheus-rules.yml."""
    expected = yaml.safe_load(rules_file.read_text(encoding="utf-8"))["groups"]
    actual = rule.get("spec", {}).get("groups")
    if actual == expected:
        return []
    expected_by_name = {g["name"]: g for g in expected}
    actual_by_name = {g.get("name"): g for g in actual or []}
    differing = sorted(
        str(n)
        for n in expected_by_name.keys() | actual_by_name.keys()
        if expected_by_name.get(n) != actual_by_name.get(n)
    )
    return [
        f"{describe(rule)}: spec.groups differ from {rules_file.relative_to(REPO)} (groups "
        f"{', '.join(differing) or 'in another order'}); regenerate it with "
        f"{RULE_SCRIPT.relative_to(REPO)}"
    ]


# ---------------------------------------------------------------------------------------
# images and security


def image_problems(documents: Iterable[Manifest], version: str) -> list[str]:
    """Every image is pinned (a tag other than latest, or a digest), advmon's at the
    package's version."""
    problems = []
    for doc in documents:
        if doc.get("kind") not in WORKLOAD_KINDS:
            continue
        for container in containers(doc):
            image = str(container.get("image", ""))
            _, tag = parse_repository_tag(image)
            where = f"{describe(doc)} container {container.get('name')}"
            if not tag or tag == "latest":
                problems.append(f"{where}: image {image} is not pinned")
            elif runs_advmon(container) and tag != version:
                problems.append(f"{where}: image {image} is not advmon {version}")
    return problems


def image_user(stage: Stage) -> tuple[int, int]:
    """The numeric ``USER uid:gid`` of the image."""
    user = stage.last("USER")
    assert user is not None, "the Dockerfile sets no USER"
    uid, _, gid = user.value.partition(":")
    return int(uid), int(gid or uid)


def security_problems(doc: Manifest, stage: Stage) -> list[str]:
    """The pod meets the "restricted" Pod Security Standard and more: it runs as the
    image's unprivileged user, read-only, without capabilities, privilege escalation, host
    namespaces or an API token, with RuntimeDefault seccomp, bounded resources, and a
    writable /tmp (and working directory where the process writes there)."""
    name = describe(doc)
    spec = pod_template(doc)["spec"]
    pod = spec.get("securityContext") or {}
    problems: list[str] = []
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: set automountServiceAccountToken: false")
    for entry in spec.get("volumes") or []:
        kinds = set(entry) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"{name}: volume {entry['name']} is {sorted(kinds)}, not allowed")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append(f"{name}: shares a host namespace")
    uid, gid = image_user(stage)
    for container in containers(doc):
        where = f"{name} container {container['name']}"
        own = container.get("securityContext") or {}

        def effective(key: str, own: Mapping[str, Any] = own) -> Any:
            return own.get(key, pod.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if effective("runAsUser") not in (None, uid) or effective("runAsGroup") not in (None, gid):
            problems.append(
                f"{where}: runs as {effective('runAsUser')}:{effective('runAsGroup')}, "
                f"not the image's {uid}:{gid}"
            )
        if effective("seccompProfile") != {"type": "RuntimeDefault"}:
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if own.get("privileged"):
            problems.append(f"{where}: privileged")
        if own.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        capabilities = own.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or capabilities.get("add"):
            problems.append(f"{where}: capabilities must drop ALL and add none")
        resources = container.get("resources") or {}
        for section, key in (
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ):
            if key not in (resources.get(section) or {}):
                problems.append(f"{where}: no {section}.{key}")
        writable = [PurePosixPath("/tmp")]
        if advmon_command(container, stage) == "worker":
            workdir = stage.last("WORKDIR")
            assert workdir is not None, "the Dockerfile sets no WORKDIR"
            writable.append(PurePosixPath(container.get("workingDir") or workdir.value))
        for path in writable:
            mount = mount_covering(container.get("volumeMounts") or [], path)
            if mount is None or mount.get("readOnly"):
                problems.append(f"{where}: {path} is not on a writable volume")
            elif "emptyDir" not in volume(doc, mount["name"]):
                problems.append(f"{where}: {path} is not on an emptyDir")
    return problems
