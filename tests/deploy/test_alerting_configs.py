"""deploy/alertmanager.yml, deploy/prometheus.yml and deploy/prometheus-rules.yml.

Checked by Alertmanager's and Prometheus's own tools (``amtool``, ``promtool``, from the
Debian packages prometheus-alertmanager and prometheus that .ci/run installs; the tests
that need them are skipped where they are absent), against the metrics and alert names
advmon really has, and against the services of docker-compose.yml.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.incidents.alertmanager import ALERT_NAMES
from monitor.worker.metrics import Metrics
from tests.deploy.deploy_support import (
    REPO,
    WORKER,
    argv,
    dockerfile_stages,
    host_path,
    image_problems,
    load_compose,
    mount_for,
    parse_advmon,
    service,
    service_env,
    service_mounts,
    service_ports,
)
from tests.deploy.test_compose import worker_argv

DEPLOY = REPO / "deploy"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
PROMETHEUS_RULES = DEPLOY / "prometheus-rules.yml"
PROMETHEUS_RULE_TESTS = DEPLOY / "prometheus-rules.test.yml"

ALERTMANAGER = "alertmanager"
PROMETHEUS = "prometheus"
SCRAPE_JOB = "advmon"
SEVERITIES = {"critical", "warning"}

AMTOOL = shutil.which("amtool")
PROMTOOL = shutil.which("promtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is not installed (Debian package prometheus-alertmanager; .ci/run installs it)",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package prometheus; .ci/run installs it)",
)


def run_tool(tool: str | None, *args: str) -> str:
    """Run ``tool ARGS`` in the repository root; its output, or a failure with it."""
    assert tool is not None
    result = subprocess.run(
        [tool, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{Path(tool).name} {' '.join(args)} failed:\n{output}"
    return result.stdout


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} must hold a mapping"
    return data


# ---------------------------------------------------------------------------------------
# deploy/alertmanager.yml


_BLOCK_START = re.compile(r"^\s*# BEGIN on-call\b")
_BLOCK_END = re.compile(r"^\s*# END on-call\b")
_COMMENT = re.compile(r"^(?P<indent>\s*)# ?")


def uncomment_on_call(text: str) -> tuple[str, int]:
    """The config with its ``# BEGIN on-call`` … ``# END on-call`` blocks uncommented (one
    ``#`` off each line, so ``##`` notes stay comments), and how many blocks there were."""
    lines: list[str] = []
    blocks = 0
    inside = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _BLOCK_START.match(line):
            assert not inside, f"line {number}: on-call block inside another"
            inside, blocks = True, blocks + 1
            continue
        if _BLOCK_END.match(line):
            assert inside, f"line {number}: END without BEGIN"
            inside = False
            continue
        if inside:
            match = _COMMENT.match(line)
            assert match is not None, f"line {number}: not commented inside an on-call block"
            line = match["indent"] + line[match.end() :]
        lines.append(line)
    assert not inside, "an on-call block has no END"
    return "\n".join(lines) + "\n", blocks


@pytest.fixture(scope="module")
def on_call_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text, blocks = uncomment_on_call(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"))
    assert blocks == 2, "expected the on-call routes and receivers blocks"
    path = tmp_path_factory.mktemp("alertmanager") / "alertmanager-on-call.yml"
    path.write_text(text, encoding="utf-8")
    return path


def rule_alerts() -> list[dict[str, Any]]:
    return [
        rule
        for group in load_yaml(PROMETHEUS_RULES)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def advmon_alert_labels() -> list[dict[str, str]]:
    """Label sets of every alert advmon raises: Prometheus's rules and the worker's
    incident alerts (monitor/incidents/alertmanager.py)."""
    alerts = [
        {"alertname": str(rule["alert"]), **{k: str(v) for k, v in rule["labels"].items()}}
        for rule in rule_alerts()
    ]
    for kind, (name, severity) in ALERT_NAMES.items():
        alerts.append(
            {
                "alertname": name,
                "service": "advmon",
                "severity": severity,
                "model": "digits",
                "kind": kind.value,
                "source": "client-1",
                "incident_id": "1",
            }
        )
    return alerts


def routed_to(config: Path, labels: Mapping[str, str]) -> list[str]:
    out = run_tool(
        AMTOOL,
        "config",
        "routes",
        "test",
        f"--config.file={config}",
        *(f"{key}={value}" for key, value in labels.items()),
    )
    return out.strip().split(",")


@needs_amtool
def test_alertmanager_config_is_valid() -> None:
    run_tool(AMTOOL, "check-config", str(ALERTMANAGER_CONFIG))


@needs_amtool
def test_alertmanager_config_is_valid_with_on_call_receivers(on_call_config: Path) -> None:
    run_tool(AMTOOL, "check-config", str(on_call_config))


@needs_amtool
def test_every_advmon_alert_goes_to_the_webhook() -> None:
    for labels in advmon_alert_labels():
        assert routed_to(ALERTMANAGER_CONFIG, labels) == ["advmon-webhook"], labels


@needs_amtool
def test_on_call_routes_by_severity(on_call_config: Path) -> None:
    pager = {"critical": "advmon-pagerduty", "warning": "advmon-slack"}
    for labels in advmon_alert_labels():
        expected = ["advmon-webhook", pager[labels["severity"]]]
        assert routed_to(on_call_config, labels) == expected, labels


def templated_values(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if "{{" in value:
            yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from templated_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from templated_values(item)


@needs_amtool
def test_on_call_templates_render(on_call_config: Path, tmp_path: Path) -> None:
    no_templates = tmp_path / "none.tmpl"
    no_templates.write_text("", encoding="utf-8")
    texts = list(templated_values(load_yaml(on_call_config)["receivers"]))
    assert texts, "the on-call receivers use no templates"
    for text in texts:
        run_tool(
            AMTOOL,
            "template",
            "render",
            f"--template.glob={no_templates}",
            f"--template.text={text}",
        )


def secret_files(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if str(key).endswith("_file"):
                yield str(item)
            else:
                yield from secret_files(item)
    elif isinstance(value, list):
        for item in value:
            yield from secret_files(item)


def test_secrets_are_files_not_values(on_call_config: Path) -> None:
    receivers = load_yaml(on_call_config)["receivers"]
    for receiver in receivers:
        for kind, configs in receiver.items():
            for config in configs if isinstance(configs, list) else []:
                for key in ("routing_key", "service_key", "api_url", "api_key", "token"):
                    assert key not in config, f"{receiver['name']} {kind}: use {key}_file"
    files = list(secret_files(receivers))
    assert len(files) == 2
    compose_text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    for path in files:
        # Compose mounts secret NAME at /run/secrets/NAME.
        name = PurePosixPath(path)
        assert name.parent == PurePosixPath("/run/secrets"), path
        assert name.name in compose_text, f"docker-compose.yml names no secret {name.name}"


def test_alertmanager_groups_by_model_and_kind() -> None:
    route = load_yaml(ALERTMANAGER_CONFIG)["route"]
    assert {"alertname", "model", "kind"} <= set(route["group_by"])
    advmon = [r for r in route["routes"] if r.get("matchers") == ['service="advmon"']]
    assert len(advmon) == 1, 'expected one route for service="advmon"'


# ---------------------------------------------------------------------------------------
# deploy/prometheus-rules.yml and its unit tests


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    run_tool(PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG))


@needs_promtool
def test_prometheus_rules_are_valid() -> None:
    run_tool(PROMTOOL, "check", "rules", str(PROMETHEUS_RULES))


@needs_promtool
def test_prometheus_rules_unit_tests_pass() -> None:
    run_tool(PROMTOOL, "test", "rules", str(PROMETHEUS_RULE_TESTS))


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    cases = [
        case
        for group in load_yaml(PROMETHEUS_RULE_TESTS)["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    for name in {str(rule["alert"]) for rule in rule_alerts()}:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name} is never tested firing"
        assert any(not case.get("exp_alerts") for case in mine), f"{name} never tested quiet"


def test_alerts_are_labelled_and_annotated() -> None:
    for rule in rule_alerts():
        name = str(rule["alert"])
        assert name.startswith("Advmon"), f"{name}: deploy/alertmanager.yml routes Advmon*"
        assert rule["labels"].get("service") == "advmon", name
        assert rule["labels"].get("severity") in SEVERITIES, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_JOB = re.compile(r'\bjob\s*=\s*"([^"]*)"')


def exported_sample_names(registry: CollectorRegistry | None = None) -> set[str]:
    """The sample names advmon's /metrics has (counters' ``_total``, histograms' ``_bucket``,
    ``_sum``, ``_count`` …), with one child of each labelled metric so that it shows."""
    registry = registry or CollectorRegistry()
    metrics = Metrics.create(registry)
    for field in dataclasses.fields(metrics):
        metric = getattr(metrics, field.name)
        # A labelled metric exports no sample until it has a child.
        labelnames = tuple(getattr(metric, "_labelnames", ()))
        if labelnames:
            metric.labels(*("x" for _ in labelnames))
    return {sample.name for family in registry.collect() for sample in family.samples}


def metric_name_problems(rules: Mapping[str, Any], exported: set[str]) -> list[str]:
    """Names in the rules' expressions that advmon does not export (``advmon_*``) or that
    no recording rule defines (``level:metric:operations``)."""
    groups = rules.get("groups") or []
    records = {
        str(rule["record"]) for group in groups for rule in group["rules"] if "record" in rule
    }
    problems = []
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            for token in _IDENTIFIER.findall(_STRING.sub('""', str(rule["expr"]))):
                if ":" in token and token not in records:
                    problems.append(f"{name}: no recording rule defines {token}")
                elif ":" not in token and token.startswith("advmon_") and token not in exported:
                    problems.append(f"{name}: advmon exports no metric {token}")
    return problems


def test_exported_sample_names_cover_every_metric() -> None:
    names = exported_sample_names()
    assert "advmon_events_flagged_total" in names
    assert "advmon_event_to_decision_seconds_bucket" in names
    assert "advmon_quarantined_sources" in names
    assert "advmon_events_flagged" not in names


def test_rules_use_only_exported_metrics() -> None:
    assert metric_name_problems(load_yaml(PROMETHEUS_RULES), exported_sample_names()) == []


@pytest.mark.parametrize(
    ("expr", "culprit"),
    [
        ("rate(advmon_events_flagged[5m])", "advmon_events_flagged"),  # no _total
        ('rate(advmon_event_to_decision_bucket{le="1.0"}[5m])', "advmon_event_to_decision"),
        ("sum(rate(advmon_events_invalid_totals[5m]))", "advmon_events_invalid_totals"),
        ("job:advmon_undefined:ratio > 1", "job:advmon_undefined:ratio"),
    ],
)
def test_metric_name_check_catches_mistakes(expr: str, culprit: str) -> None:
    rules = {"groups": [{"name": "g", "rules": [{"alert": "AdvmonX", "expr": expr}]}]}
    problems = metric_name_problems(rules, exported_sample_names())
    assert len(problems) == 1
    assert culprit in problems[0]


def test_metric_name_check_ignores_label_values() -> None:
    rules = {
        "groups": [{"name": "g", "rules": [{"alert": "A", "expr": 'up{job="advmon_x"} == 0'}]}]
    }
    assert metric_name_problems(rules, exported_sample_names()) == []


def test_rules_select_the_scrape_job() -> None:
    jobs = {str(c["job_name"]) for c in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert SCRAPE_JOB in jobs
    for group in load_yaml(PROMETHEUS_RULES)["groups"]:
        for rule in group["rules"]:
            expr = str(rule["expr"])
            name = rule.get("alert") or rule.get("record")
            selected = set(_JOB.findall(expr))
            tokens = set(_IDENTIFIER.findall(_STRING.sub('""', expr)))
            if any(t == "up" or t.startswith("advmon_") for t in tokens):
                # Scraped series: select the advmon job (recording rules keep its label).
                assert selected == {SCRAPE_JOB}, name
            else:
                assert selected <= {SCRAPE_JOB}, name


# ---------------------------------------------------------------------------------------
# docker-compose.yml: the Prometheus and Alertmanager services


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def flag(args: list[str], name: str, default: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in ``args`` (last one wins)."""
    value = default
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            value = arg.partition("=")[2]
        elif arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def listen_port(address: str) -> int:
    return int(address.rpartition(":")[2])


def mounted_file(svc: Mapping[str, Any], container_path: PurePosixPath) -> Path:
    """The host file bind-mounted read-only at ``container_path``."""
    mount = mount_for(service_mounts(svc), container_path)
    assert mount is not None, f"nothing is mounted at {container_path}"
    assert mount.is_bind, f"{container_path} is not mounted from the repository"
    assert mount.read_only, f"mount {container_path} read-only"
    source = host_path(mount, container_path, REPO)
    assert source.is_file(), f"{source} (mounted at {container_path}) does not exist"
    return source


def assert_on_named_volume(svc: Mapping[str, Any], path: str) -> None:
    mount = mount_for(service_mounts(svc), PurePosixPath(path))
    assert mount is not None, f"{path} is in no volume"
    assert not mount.is_bind, f"{path} belongs on a named volume"


def published_targets(svc: Mapping[str, Any]) -> set[int]:
    return {m.target for m in service_ports(svc) if m.published == str(m.target)}


def names_of(compose: Mapping[str, Any], name: str) -> set[str]:
    """Names other containers on the default network reach service ``name`` by."""
    svc = service(compose, name)
    return {name} | {str(svc[key]) for key in ("hostname", "container_name") if key in svc}


def alertmanager_port(compose: Mapping[str, Any]) -> int:
    args = argv(service(compose, ALERTMANAGER).get("command")) or []
    return listen_port(flag(args, "web.listen-address", ":9093"))


def test_alerting_images_are_pinned(compose: dict[str, Any]) -> None:
    assert image_problems(compose) == []
    assert str(service(compose, ALERTMANAGER)["image"]).startswith("prom/alertmanager:v0.")
    assert str(service(compose, PROMETHEUS)["image"]).startswith("prom/prometheus:v2.")


def test_alertmanager_service(compose: dict[str, Any]) -> None:
    svc = service(compose, ALERTMANAGER)
    args = argv(svc.get("command")) or []
    config = PurePosixPath(flag(args, "config.file", "/etc/alertmanager/alertmanager.yml"))
    assert mounted_file(svc, config) == ALERTMANAGER_CONFIG
    assert_on_named_volume(svc, flag(args, "storage.path", "/alertmanager"))
    assert alertmanager_port(compose) in published_targets(svc), "publish Alertmanager's port"


def test_prometheus_service(compose: dict[str, Any]) -> None:
    svc = service(compose, PROMETHEUS)
    args = argv(svc.get("command")) or []
    config = PurePosixPath(flag(args, "config.file", "/etc/prometheus/prometheus.yml"))
    assert mounted_file(svc, config) == PROMETHEUS_CONFIG
    rule_files = load_yaml(PROMETHEUS_CONFIG).get("rule_files") or []
    assert rule_files, "prometheus.yml loads no rules"
    for rule_file in rule_files:
        assert not set(str(rule_file)) & set("*?["), "name rule files without globs"
        # Prometheus resolves them relative to its config file.
        in_container = config.parent / str(rule_file)
        on_host = mounted_file(svc, in_container)
        assert on_host == (PROMETHEUS_CONFIG.parent / str(rule_file)).resolve()
    assert PROMETHEUS_RULES in {(PROMETHEUS_CONFIG.parent / str(f)).resolve() for f in rule_files}
    assert_on_named_volume(svc, flag(args, "storage.tsdb.path", "/prometheus"))
    port = listen_port(flag(args, "web.listen-address", "0.0.0.0:9090"))
    assert port in published_targets(svc), "publish Prometheus's port"


def test_prometheus_scrapes_the_worker(compose: dict[str, Any]) -> None:
    runtime_stage = dockerfile_stages()[-1]
    web_port = parse_advmon(worker_argv(compose, runtime_stage)[1:]).web_port
    (job,) = [
        c for c in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if c["job_name"] == SCRAPE_JOB
    ]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets, "the advmon job has no targets"
    for target in targets:
        host, _, port = str(target).rpartition(":")
        assert host in names_of(compose, WORKER), f"{target} is not the worker service"
        assert int(port) == web_port, f"{target}: the worker's web port is {web_port}"


def test_prometheus_alerts_go_to_the_alertmanager_service(compose: dict[str, Any]) -> None:
    managers = load_yaml(PROMETHEUS_CONFIG)["alerting"]["alertmanagers"]
    targets = [t for am in managers for static in am["static_configs"] for t in static["targets"]]
    assert targets
    for target in targets:
        host, _, port = str(target).rpartition(":")
        assert host in names_of(compose, ALERTMANAGER)
        assert int(port) == alertmanager_port(compose)


def test_worker_posts_incidents_to_the_alertmanager_service(compose: dict[str, Any]) -> None:
    urls = service_env(service(compose, WORKER)).get("ADVMON_ALERTING__ALERTMANAGER_URLS", "")
    assert urls, "the worker sends its incident alerts nowhere"
    for url in filter(None, (u.strip() for u in urls.split(","))):
        parts = urlsplit(url)
        assert parts.scheme == "http"
        assert parts.hostname in names_of(compose, ALERTMANAGER)
        assert parts.port == alertmanager_port(compose)
