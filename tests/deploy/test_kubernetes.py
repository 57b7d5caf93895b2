"""deploy/kubernetes against the code it deploys, rendered by the pinned kustomize.

The base and every overlay are rendered once per module, from a copy of the tree whose
overlay secrets are placeholders written here (the real ``secrets.env`` is never read).
The checks come in pairs: the manifests pass, and a manifest broken on purpose is caught.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.settings import Settings
from tests.deploy.deploy_support import (
    REPO,
    WORKER,
    Stage,
    dockerfile_stages,
    load_compose,
    pyproject,
    service,
)
from tests.deploy.kubernetes_support import (
    BASE,
    EXAMPLE_SUFFIX,
    KUBERNETES_DIR,
    KUBERNETES_VERSIONS,
    KUSTOMIZE,
    OVERLAYS,
    RULE_SCRIPT,
    RULES_FILE,
    SECRETS_FILE,
    STANDALONE,
    Manifest,
    Rendering,
    advmon_command,
    advmon_containers,
    api_problems,
    command_problems,
    config_problems,
    container_env,
    containers,
    copy_with_placeholder_secrets,
    describe,
    example_keys,
    grace_period_problems,
    image_problems,
    kustomize_build,
    load_crds,
    makefile_variable,
    network_policy_problems,
    parse_duration,
    pod_monitor_problems,
    pod_template,
    prometheus_rule_problems,
    reference_problems,
    resolve_env,
    rule_jobs,
    runs_advmon,
    schema_problems,
    secret_source_problems,
    security_problems,
    selector_matches,
    selector_problems,
    session_timeout_problems,
    tools_problems,
    worker_pages,
    worker_problems,
)

OVERLAY_NAMES = sorted(path.parent.name for path in OVERLAYS.glob("*/kustomization.yaml"))
TARGETS = ["base", *OVERLAY_NAMES]

WORKER_SET = "advmon-worker"
API_DEPLOYMENT = "advmon-api"
MIGRATION_JOB = "advmon-db-upgrade"
SECRET = "advmon-secrets"

#: Values for the keys of the overlays' ``secrets.env.example``: what a user fills in.
PLACEHOLDER_SECRETS = {
    "database-url": "postgresql+psycopg://advmon:placeholder@postgres.advmon.svc:5432/advmon",
    "api-token": "placeholder-api-token-0123456789abcdef0123456789abcdef",
    "drift-checkpoint-key": "placeholder-drift-key-0123456789abcdef0123456789abcdef",
}


@pytest.fixture(scope="module")
def tools() -> None:
    problems = tools_problems()
    if problems:
        pytest.fail(problems[0], pytrace=False)


@pytest.fixture(scope="module")
def renderings(tools: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendering]:
    root = copy_with_placeholder_secrets(tmp_path_factory.mktemp("kubernetes"), PLACEHOLDER_SECRETS)
    return {
        name: Rendering(
            name, kustomize_build(root / "base" if name == "base" else root / "overlays" / name)
        )
        for name in TARGETS
    }


@pytest.fixture(scope="module", params=TARGETS)
def rendering(request: pytest.FixtureRequest, renderings: dict[str, Rendering]) -> Rendering:
    return renderings[str(request.param)]


@pytest.fixture(scope="module", params=OVERLAY_NAMES)
def overlay(request: pytest.FixtureRequest, renderings: dict[str, Rendering]) -> Rendering:
    return renderings[str(request.param)]


@pytest.fixture(scope="module")
def crds(tools: None) -> dict[tuple[str, str], Any]:
    return load_crds()


@pytest.fixture(scope="module")
def stage() -> Stage:
    return dockerfile_stages()[-1]


@pytest.fixture(scope="module")
def standalone() -> list[Manifest]:
    return [
        doc
        for path in STANDALONE
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]


def version() -> str:
    return str(pyproject()["project"]["version"])


def only_advmon_container(workload: Manifest) -> Manifest:
    (container,) = [c for c in containers(workload) if runs_advmon(c)]
    return container


# ---------------------------------------------------------------------------------------
# the tools


def test_tools_are_the_pinned_versions(tools: None) -> None:
    result = subprocess.run(
        [str(KUSTOMIZE), "version"], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == makefile_variable("KUSTOMIZE_VERSION")


def test_missing_tools_name_the_make_target(tmp_path: Path) -> None:
    (problem,) = tools_problems(tmp_path / ".tools")
    assert "make k8s-tools" in problem


def test_there_is_an_overlay() -> None:
    assert OVERLAY_NAMES, f"no overlay under {OVERLAYS}"


# ---------------------------------------------------------------------------------------
# every object validates


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_every_object_validates(
    rendering: Rendering, kubernetes_version: str, crds: dict[tuple[str, str], Any]
) -> None:
    problems = [
        p for doc in rendering.documents for p in schema_problems(doc, kubernetes_version, crds)
    ]
    assert problems == []


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_standalone_manifests_validate(
    standalone: list[Manifest], kubernetes_version: str, crds: dict[tuple[str, str], Any]
) -> None:
    assert [p for doc in standalone for p in schema_problems(doc, kubernetes_version, crds)] == []


def test_the_base_renders_advmon(renderings: dict[str, Rendering]) -> None:
    base = renderings["base"]
    for kind, name in [
        ("StatefulSet", WORKER_SET),
        ("Service", WORKER_SET),
        ("PodDisruptionBudget", WORKER_SET),
        ("Deployment", API_DEPLOYMENT),
        ("Service", API_DEPLOYMENT),
        ("Job", MIGRATION_JOB),
        ("PodMonitor", WORKER_SET),
        ("PrometheusRule", "advmon"),
        ("PersistentVolumeClaim", "advmon-models"),
        ("ServiceAccount", "advmon"),
    ]:
        base.one(kind, name)
    assert base.all("NetworkPolicy")
    assert base.all("Secret") == [], "the base holds no secret: overlays provide advmon-secrets"


def test_overlays_generate_the_secret(overlay: Rendering) -> None:
    (secret,) = overlay.all("Secret")
    assert secret["metadata"]["name"].startswith(f"{SECRET}-"), "a generated, hashed Secret"


def _first_apply_selector() -> dict[str, Any]:
    """The ``-l`` selector of the README's first ``kubectl apply -k``, as matchExpressions
    (the ``KEY notin (A,B)`` form it uses)."""
    readme = (KUBERNETES_DIR / "README.md").read_text(encoding="utf-8")
    match = re.search(r"kubectl apply -k \S+ -l '([\w./-]+) notin \(([\w,-]+)\)'", readme)
    assert match is not None, "the README's first apply names no `-l 'KEY notin (...)'`"
    values = match[2].split(",")
    return {"matchExpressions": [{"key": match[1], "operator": "NotIn", "values": values}]}


def test_the_first_apply_holds_the_migration_and_no_consumer(
    overlay: Rendering, stage: Stage
) -> None:
    """The README's first step applies what the migration Job and the models need, and no
    pod that refuses to start on an old schema (worker, api)."""
    selector = _first_apply_selector()
    applied = [
        d
        for d in overlay.documents
        if selector_matches(selector, d["metadata"].get("labels") or {})
    ]
    kinds = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0]) for d in applied}
    names = {(d["kind"], d["metadata"]["name"]) for d in applied}
    assert ("Job", MIGRATION_JOB) in names
    assert ("PersistentVolumeClaim", "advmon-models") in names
    assert ("Secret", SECRET) in kinds
    assert any(kind == "Namespace" for kind, _ in names)
    assert any(kind == "NetworkPolicy" for kind, _ in names), "pods isolated from the start"
    for doc in applied:
        if doc["kind"] in {"Deployment", "StatefulSet", "Job", "Pod"}:
            for container in containers(doc):
                assert advmon_command(container, stage) not in {"worker", "api"}, describe(doc)
    # The second apply is everything: the workers and the API are in the rendering.
    rest = [d for d in overlay.documents if d not in applied]
    assert {d["kind"] for d in rest} >= {"StatefulSet", "Deployment"}


# ---------------------------------------------------------------------------------------
# commands, settings, secrets
# ---------------------------------------------------------------------------------------
# commands, settings, secrets


def test_containers_run_valid_advmon_commands(rendering: Rendering, stage: Stage) -> None:
    assert command_problems(rendering, stage) == []
    commands = sorted(str(advmon_command(c, stage)) for _, c in advmon_containers(rendering))
    assert commands == ["api", "db", "worker"]


def test_migration_job_upgrades_the_schema(rendering: Rendering, stage: Stage) -> None:
    job = rendering.one("Job", MIGRATION_JOB)
    container = only_advmon_container(job)
    assert advmon_command(container, stage) == "db"
    assert container.get("args") == ["db", "upgrade"]
    source = container_env(container, rendering)["ADVMON_DATABASE__URL"]
    assert source.secret is not None
    assert source.secret[1] == "database-url"


def test_secret_settings_come_from_secrets(rendering: Rendering) -> None:
    assert secret_source_problems(rendering) == []


def test_references_resolve(rendering: Rendering) -> None:
    # The base leaves the Secret to the overlays.
    external = [("Secret", SECRET)] if rendering.name == "base" else []
    assert reference_problems(rendering, external) == []


def test_environment_values_validate(
    overlay: Rendering, stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload, container in advmon_containers(overlay):
        for name in list(os.environ):
            if name.upper().startswith("ADVMON_"):
                monkeypatch.delenv(name)
        env = {**stage.env, **resolve_env(container_env(container, overlay), overlay)}
        for name, value in env.items():
            if name.upper().startswith("ADVMON_"):
                monkeypatch.setenv(name, value)
        settings = Settings.from_environment()
        if workload["metadata"]["name"] == WORKER_SET:
            assert settings.worker.instance_id == "advmon-worker-0"
            assert settings.worker.web_bind == "10.1.2.3"


# ---------------------------------------------------------------------------------------
# the worker


def test_worker_statefulset(rendering: Rendering, stage: Stage) -> None:
    assert worker_problems(rendering.one("StatefulSet", WORKER_SET), stage) == []


def test_worker_serves_the_pages_probed_and_scraped() -> None:
    # worker_problems and pod_monitor_problems hold the probes to /healthz and the
    # scrapes to /metrics.
    assert worker_pages() == {"/healthz", "/metrics"}


def test_worker_stops_within_the_compose_grace_period(rendering: Rendering) -> None:
    compose_worker = service(load_compose(), WORKER)
    assert grace_period_problems(rendering.one("StatefulSet", WORKER_SET), compose_worker) == []


def test_worker_rejoins_within_the_session_timeout(rendering: Rendering) -> None:
    workload = rendering.one("StatefulSet", WORKER_SET)
    env = resolve_env(container_env(only_advmon_container(workload), rendering), rendering)
    assert "ADVMON_KAFKA__SESSION_TIMEOUT_MS" in env
    assert session_timeout_problems(workload, env) == []


def test_worker_config(rendering: Rendering, stage: Stage, tmp_path: Path) -> None:
    workload = rendering.one("StatefulSet", WORKER_SET)
    assert config_problems(workload, rendering, stage, tmp_path) == []


def test_pod_monitor_scrapes_the_workers(rendering: Rendering, stage: Stage) -> None:
    (monitor,) = rendering.all("PodMonitor")
    assert pod_monitor_problems(monitor, rendering, stage, rule_jobs()) == []


def test_prometheus_rule_holds_the_rules_file(rendering: Rendering) -> None:
    (rule,) = rendering.all("PrometheusRule")
    assert prometheus_rule_problems(rule) == []


def test_prometheus_rule_file_is_the_script_output() -> None:
    result = subprocess.run(
        [sys.executable, str(RULE_SCRIPT)], capture_output=True, text=True, check=True, timeout=30
    )
    committed = (BASE / "prometheus-rule.yaml").read_text(encoding="utf-8")
    assert result.stdout == committed, f"regenerate it: python {RULE_SCRIPT.relative_to(REPO)}"


# ---------------------------------------------------------------------------------------
# the incident API


def test_incident_api(rendering: Rendering, stage: Stage) -> None:
    assert api_problems(rendering.one("Deployment", API_DEPLOYMENT), stage, rendering) == []


# ---------------------------------------------------------------------------------------
# services and network


def test_selectors_and_service_ports(rendering: Rendering) -> None:
    assert selector_problems(rendering) == []


def open_ports(rendering: Rendering) -> dict[str, set[int]]:
    """The API's port may be open to everyone: it requires its bearer token."""
    api = only_advmon_container(rendering.one("Deployment", API_DEPLOYMENT))
    return {API_DEPLOYMENT: {int(port["containerPort"]) for port in api["ports"]}}


def test_network_policies(rendering: Rendering) -> None:
    assert network_policy_problems(rendering, open_ports(rendering)) == []


# ---------------------------------------------------------------------------------------
# images and security


def test_images_are_pinned_at_the_package_version(
    rendering: Rendering, standalone: list[Manifest]
) -> None:
    assert image_problems([*rendering.documents, *standalone], version()) == []


def test_pods_are_locked_down(
    rendering: Rendering, standalone: list[Manifest], stage: Stage
) -> None:
    workloads = [*rendering.workloads(), *standalone]
    assert [p for doc in workloads for p in security_problems(doc, stage)] == []


def test_models_loader_fills_the_workers_volume(
    renderings: dict[str, Rendering], standalone: list[Manifest]
) -> None:
    workers = pod_template(renderings["base"].one("StatefulSet", WORKER_SET))["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in workers["volumes"]
        if "persistentVolumeClaim" in v
    }
    (loader,) = [doc for doc in standalone if doc["kind"] == "Pod"]
    loader_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in loader["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert loader_claims == claims == {"advmon-models"}


# ---------------------------------------------------------------------------------------
# overlay secrets stay out of git


def secret_examples() -> list[Path]:
    return sorted(KUBERNETES_DIR.rglob(f"*{EXAMPLE_SUFFIX}"))


def test_overlay_secret_files_are_ignored_by_git() -> None:
    examples = secret_examples()
    assert examples, "the overlays show their secrets file as *.example"
    for example in examples:
        target = example.with_name(example.name.removesuffix(EXAMPLE_SUFFIX))
        assert target.name == SECRETS_FILE
        ignored = subprocess.run(
            ["git", "check-ignore", "--quiet", "--no-index", str(target.relative_to(REPO))],
            cwd=REPO,
            check=False,
        )
        assert ignored.returncode == 0, f"{target.relative_to(REPO)} is not in .gitignore"


def test_secret_examples_hold_no_values() -> None:
    for example in secret_examples():
        for line in example.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert line.endswith("="), f"{example.name}: {line.partition('=')[0]} has a value"
        assert sorted(example_keys(example)) == sorted(PLACEHOLDER_SECRETS)


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("1m30s") == 90
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("30")


# ---------------------------------------------------------------------------------------
# each check catches its fault


Check = Callable[[Rendering, Stage, Path], list[str]]


@dataclass(frozen=True)
class Fault:
    """A manifest broken on purpose, the check that must catch it, and what it says."""

    edit: Callable[[Rendering], None]
    check: Check
    expected: str


def worker_set(rendering: Rendering) -> Manifest:
    return rendering.one("StatefulSet", WORKER_SET)


def worker_container(rendering: Rendering) -> Manifest:
    return only_advmon_container(worker_set(rendering))


def api_container(rendering: Rendering) -> Manifest:
    return only_advmon_container(rendering.one("Deployment", API_DEPLOYMENT))


def env_entry(container: Manifest, name: str) -> dict[str, Any]:
    (entry,) = [e for e in container["env"] if e["name"] == name]
    return dict(entry)


def set_env(container: Manifest, name: str, entry: dict[str, Any] | None) -> None:
    container["env"] = [e for e in container["env"] if e["name"] != name]
    if entry is not None:
        container["env"].append({"name": name, **entry})


def settings_config_map(rendering: Rendering) -> Manifest:
    (config_map,) = [
        c for c in rendering.all("ConfigMap") if "ADVMON_KAFKA__BOOTSTRAP" in c["data"]
    ]
    return config_map


def check_worker(r: Rendering, s: Stage, _: Path) -> list[str]:
    return worker_problems(worker_set(r), s)


def check_api(r: Rendering, s: Stage, _: Path) -> list[str]:
    return api_problems(r.one("Deployment", API_DEPLOYMENT), s, r)


def check_commands(r: Rendering, s: Stage, _: Path) -> list[str]:
    return command_problems(r, s)


def check_secrets(r: Rendering, s: Stage, _: Path) -> list[str]:
    return secret_source_problems(r)


def check_monitor(r: Rendering, s: Stage, _: Path) -> list[str]:
    (monitor,) = r.all("PodMonitor")
    return pod_monitor_problems(monitor, r, s, rule_jobs())


def check_rule(r: Rendering, s: Stage, _: Path) -> list[str]:
    (rule,) = r.all("PrometheusRule")
    return prometheus_rule_problems(rule)


def check_selectors(r: Rendering, s: Stage, _: Path) -> list[str]:
    return selector_problems(r)


def check_network(r: Rendering, s: Stage, _: Path) -> list[str]:
    return network_policy_problems(r, open_ports(r))


def check_images(r: Rendering, s: Stage, _: Path) -> list[str]:
    return image_problems(r.documents, version())


def check_security(r: Rendering, s: Stage, _: Path) -> list[str]:
    return [p for doc in r.workloads() for p in security_problems(doc, s)]


def check_grace(r: Rendering, s: Stage, _: Path) -> list[str]:
    return grace_period_problems(worker_set(r), service(load_compose(), WORKER))


def check_session(r: Rendering, s: Stage, _: Path) -> list[str]:
    env = resolve_env(container_env(worker_container(r), r), r)
    return session_timeout_problems(worker_set(r), env)


def check_config(r: Rendering, s: Stage, tmp: Path) -> list[str]:
    return config_problems(worker_set(r), r, s, tmp)


def check_references(r: Rendering, s: Stage, _: Path) -> list[str]:
    return reference_problems(r)


def check_schemas(r: Rendering, s: Stage, _: Path) -> list[str]:
    crds = load_crds()
    return [p for doc in r.documents for p in schema_problems(doc, KUBERNETES_VERSIONS[0], crds)]


def rename_web_port(r: Rendering) -> None:
    worker_container(r)["ports"][0]["name"] = "metrics"


def move_web_port(r: Rendering) -> None:
    args = worker_container(r)["args"]
    args[args.index("--web-port") + 1] = "6067"


def drop_web_bind(r: Rendering) -> None:
    set_env(worker_container(r), "ADVMON_WORKER__WEB_BIND", None)


def literal_instance_id(r: Rendering) -> None:
    set_env(worker_container(r), "ADVMON_WORKER__INSTANCE_ID", {"value": "worker"})


def impatient_liveness(r: Rendering) -> None:
    worker_container(r)["livenessProbe"]["failureThreshold"] = 3


def readiness_on_metrics(r: Rendering) -> None:
    worker_container(r)["readinessProbe"]["httpGet"]["path"] = "/metrics"


def unknown_cli_option(r: Rendering) -> None:
    api_container(r)["args"].append("--hots")


def misspelt_setting(r: Rendering) -> None:
    settings_config_map(r)["data"]["ADVMON_KAFKA_BOOTSTRAP"] = "kafka:9092"


def literal_token(r: Rendering) -> None:
    set_env(api_container(r), "ADVMON_API__TOKEN", {"value": "a-token"})


def no_token(r: Rendering) -> None:
    set_env(api_container(r), "ADVMON_API__TOKEN", None)


def api_probe_elsewhere(r: Rendering) -> None:
    api_container(r)["readinessProbe"]["httpGet"]["path"] = "/api/incidents"


def literal_database_url(r: Rendering) -> None:
    job = only_advmon_container(r.one("Job", MIGRATION_JOB))
    set_env(job, "ADVMON_DATABASE__URL", {"value": "postgresql+psycopg://advmon:pw@db/advmon"})


def rule_drift(r: Rendering) -> None:
    (rule,) = r.all("PrometheusRule")
    rule["spec"]["groups"][1]["rules"][0]["for"] = "10m"


def monitor_path(r: Rendering) -> None:
    (monitor,) = r.all("PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["path"] = "/stats"


def monitor_port(r: Rendering) -> None:
    (monitor,) = r.all("PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = "http"


def monitor_default_job(r: Rendering) -> None:
    (monitor,) = r.all("PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0].pop("relabelings")


def service_target_port(r: Rendering) -> None:
    r.one("Service", API_DEPLOYMENT)["spec"]["ports"][0]["targetPort"] = "web"


def service_selector(r: Rendering) -> None:
    r.one("Service", WORKER_SET)["spec"]["selector"]["app.kubernetes.io/component"] = "workers"


def metrics_open_to_all(r: Rendering) -> None:
    policy = r.one("NetworkPolicy", "advmon-worker-metrics")
    policy["spec"]["ingress"][0].pop("from")


def policy_port_name(r: Rendering) -> None:
    policy = r.one("NetworkPolicy", "advmon-worker-metrics")
    policy["spec"]["ingress"][0]["ports"][0]["port"] = "metrics"


def api_not_isolated(r: Rendering) -> None:
    r.documents[:] = [d for d in r.documents if d["kind"] != "NetworkPolicy"]


def latest_image(r: Rendering) -> None:
    api_container(r)["image"] = "registry.example.com/advmon:latest"


def old_image(r: Rendering) -> None:
    worker_container(r)["image"] = "registry.example.com/advmon:0.0.9"


def writable_root(r: Rendering) -> None:
    worker_container(r)["securityContext"]["readOnlyRootFilesystem"] = False


def added_capability(r: Rendering) -> None:
    api_container(r)["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]


def token_mounted(r: Rendering) -> None:
    pod_template(worker_set(r))["spec"]["automountServiceAccountToken"] = True


def no_data_dir(r: Rendering) -> None:
    container = worker_container(r)
    container["volumeMounts"] = [
        m for m in container["volumeMounts"] if m["mountPath"] != "/var/lib/advmon"
    ]


def host_path_volume(r: Rendering) -> None:
    spec = pod_template(worker_set(r))["spec"]
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/var/lib/advmon"}})


def root_user(r: Rendering) -> None:
    worker_container(r)["securityContext"]["runAsUser"] = 0


def longer_grace(r: Rendering) -> None:
    pod_template(worker_set(r))["spec"]["terminationGracePeriodSeconds"] = 60


def short_session(r: Rendering) -> None:
    settings_config_map(r)["data"]["ADVMON_KAFKA__SESSION_TIMEOUT_MS"] = "20000"


def bad_config(r: Rendering) -> None:
    (config_map,) = [c for c in r.all("ConfigMap") if "advmon.yaml" in c["data"]]
    config_map["data"]["advmon.yaml"] += "batchng:\n  max_events: 64\n"


def writable_models(r: Rendering) -> None:
    for mount in worker_container(r)["volumeMounts"]:
        if mount["mountPath"] == "/etc/advmon/models":
            mount.pop("readOnly")


def config_elsewhere(r: Rendering) -> None:
    for mount in worker_container(r)["volumeMounts"]:
        if mount["mountPath"] == "/etc/advmon/advmon.yaml":
            mount["mountPath"] = "/etc/advmon/config.yaml"


def renamed_secret_key(r: Rendering) -> None:
    (secret,) = r.all("Secret")
    secret["data"]["database_url"] = secret["data"].pop("database-url")


def misspelt_field(r: Rendering) -> None:
    worker_set(r)["spec"]["replica"] = 3


def unknown_monitor_field(r: Rendering) -> None:
    (monitor,) = r.all("PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["scrapeEvery"] = "15s"


FAULTS = {
    "worker port renamed": Fault(rename_web_port, check_monitor, "is no named port"),
    "probes on a renamed port": Fault(rename_web_port, check_worker, "not /healthz on the web"),
    "web port moved": Fault(move_web_port, check_worker, "web port 6067 (--web-port) is no"),
    "no pod-address bind": Fault(drop_web_bind, check_worker, "WEB_BIND must come from"),
    "literal instance id": Fault(literal_instance_id, check_worker, "INSTANCE_ID must come"),
    "impatient liveness": Fault(impatient_liveness, check_worker, "a rebalance can take"),
    "readiness on /metrics": Fault(readiness_on_metrics, check_worker, "readinessProbe asks"),
    "unknown CLI option": Fault(unknown_cli_option, check_commands, "No such option"),
    "misspelt setting": Fault(misspelt_setting, check_commands, "ADVMON_KAFKA_BOOTSTRAP is not"),
    "literal token": Fault(literal_token, check_api, "must come from a Secret"),
    "literal token, secrets": Fault(literal_token, check_secrets, "ADVMON_API__TOKEN is a secret"),
    "no token": Fault(no_token, check_api, "gets no ADVMON_API__TOKEN"),
    "API probe elsewhere": Fault(api_probe_elsewhere, check_api, "not /healthz on the API"),
    "literal database URL": Fault(literal_database_url, check_secrets, "DATABASE__URL is a"),
    "rule drift": Fault(rule_drift, check_rule, "spec.groups differ"),
    "monitor path": Fault(monitor_path, check_monitor, "/stats is not the worker's /metrics"),
    "monitor port": Fault(monitor_port, check_monitor, "port http is no named port"),
    "monitor job": Fault(monitor_default_job, check_monitor, "the rules select ['advmon']"),
    "service target port": Fault(service_target_port, check_selectors, "targetPort web is no"),
    "service selector": Fault(service_selector, check_selectors, "selects no pods"),
    "metrics open to all": Fault(metrics_open_to_all, check_network, "open to everyone"),
    "policy port name": Fault(policy_port_name, check_network, "port metrics is no port"),
    "pods not isolated": Fault(api_not_isolated, check_network, "no NetworkPolicy isolates"),
    "latest image": Fault(latest_image, check_images, "is not pinned"),
    "old image": Fault(old_image, check_images, "is not advmon"),
    "writable root": Fault(writable_root, check_security, "readOnlyRootFilesystem"),
    "added capability": Fault(added_capability, check_security, "drop ALL and add none"),
    "token mounted": Fault(token_mounted, check_security, "automountServiceAccountToken"),
    "no data dir": Fault(no_data_dir, check_security, "/var/lib/advmon is not on a writable"),
    "host path volume": Fault(host_path_volume, check_security, "['hostPath'], not allowed"),
    "root user": Fault(root_user, check_security, "runs as 0:10001"),
    "longer grace": Fault(longer_grace, check_grace, "differs from docker-compose.yml"),
    "short session": Fault(short_session, check_session, "is no longer than the 30 s"),
    "bad config": Fault(bad_config, check_config, "invalid config"),
    "writable models": Fault(writable_models, check_config, "read-only"),
    "config elsewhere": Fault(config_elsewhere, check_config, "nothing is mounted at"),
    "renamed secret key": Fault(renamed_secret_key, check_references, "has no key database-url"),
    "misspelt field": Fault(misspelt_field, check_schemas, "'replica' was unexpected"),
    "unknown CR field": Fault(unknown_monitor_field, check_schemas, "'scrapeEvery' was unexpected"),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_each_check_catches_its_fault(
    fault: Fault, renderings: dict[str, Rendering], stage: Stage, tmp_path: Path
) -> None:
    example = renderings[OVERLAY_NAMES[0]]
    assert fault.check(example, stage, tmp_path) == []
    broken = Rendering(example.name, copy.deepcopy(example.documents))
    fault.edit(broken)
    problems = fault.check(broken, stage, tmp_path)
    assert any(fault.expected in problem for problem in problems), problems


def test_rule_drift_names_the_rules_file(renderings: dict[str, Rendering]) -> None:
    (rule,) = renderings["base"].all("PrometheusRule")
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"].pop()
    (problem,) = prometheus_rule_problems(broken, RULES_FILE)
    assert "deploy/prometheus-rules.yml" in problem
    assert "advmon.alerts" in problem
