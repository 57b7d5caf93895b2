"""deploy/grafana: the provisioned datasource and the advmon dashboard, and their compose service.

Every panel query must parse (``promtool check rules`` on the queries written as recording
rules; skipped where promtool is absent) and use only metrics advmon exports
(``Metrics.create``, collected at test time) or that deploy/prometheus-rules.yml records.
The dashboard JSON is checked against the structure Grafana requires of the schema version
it declares (no network here to fetch Grafana's own schema).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from monitor.incidents.api import is_loopback
from tests.deploy.deploy_support import (
    REPO,
    host_path,
    load_compose,
    mount_for,
    service,
    service_env,
    service_mounts,
    service_ports,
)
from tests.deploy.test_alerting_configs import (
    PROMETHEUS,
    PROMETHEUS_RULES,
    PROMTOOL,
    SCRAPE_JOB,
    exported_sample_names,
    flag,
    listen_port,
    load_yaml,
    names_of,
    needs_promtool,
    run_tool,
)

GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARDS = GRAFANA_DIR / "dashboards"
PROVISIONING = GRAFANA_DIR / "provisioning"
DATASOURCES = PROVISIONING / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = PROVISIONING / "dashboards" / "advmon.yml"
DASHBOARD = DASHBOARDS / "advmon.json"

GRAFANA = "grafana"
PROMETHEUS_PORT = 9090
# The schema version the pinned Grafana release writes (and the newest it migrates from):
# Grafana 11.0 to 11.2 write 39. Newer schema versions are not understood by older Grafana.
SCHEMA_BY_RELEASE = {"11.0": 39, "11.1": 39, "11.2": 39}
# Panel types built into those releases that this dashboard may use.
PANEL_TYPES = {"row", "timeseries", "stat", "text", "gauge", "bargauge", "table", "barchart"}
# Grafana's built-in variables, and a value for each in a query promtool checks.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "6h",
    "__all": ".*",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


# ---------------------------------------------------------------------------------------
# Helpers


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} must hold a JSON object"
    return data


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def panel_queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(``panel id/refId``, PromQL) for every target of every panel."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets") or []:
            yield (
                f"panel {panel.get('id')} ({panel.get('title')}) {target.get('refId')}",
                str(target.get("expr", "")),
            )


def variable_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """A concrete value for every variable, the dashboard's own and Grafana's built-in ones."""
    values = dict(BUILTIN_VARIABLES)
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        name = str(variable["name"])
        if variable.get("type") == "textbox" or variable.get("type") == "constant":
            values[name] = str(variable.get("query", ""))
        else:
            values[name] = "x"  # a label value: inside a quoted matcher
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[3]
        assert name in values, f"unknown dashboard variable ${name} in {expr!r}"
        return values[name]

    return _VARIABLE.sub(replace, expr)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_CALL = re.compile(r"(?<![\w:])[A-Za-z_][A-Za-z0-9_]*\s*\(")
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][A-Za-z0-9_:]*")
_DURATION = re.compile(r"(?<![\w:])\d+(?:ms|[smhdwy])\b")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = _STRING.sub('""', expr)
    text = _GROUPING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _DURATION.sub(" ", text)
    text = _CALL.sub("(", text)
    return {t for t in _IDENTIFIER.findall(text) if t.lower() not in _KEYWORDS}


def recorded_names() -> set[str]:
    return {
        str(rule["record"])
        for group in load_yaml(PROMETHEUS_RULES)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def known_metric_names() -> set[str]:
    """What Prometheus has for the dashboard: the worker's samples, the rules' records.

    The incident API exports no metrics (monitor/incidents has no prometheus_client), so
    the worker's registry is all advmon serves.
    """
    return exported_sample_names() | recorded_names()


def unknown_metric_problems(dashboard: Mapping[str, Any], known: set[str]) -> list[str]:
    values = variable_values(dashboard)
    return [
        f"{where}: no exported or recorded metric {name}"
        for where, expr in panel_queries(dashboard)
        for name in sorted(metric_names(substitute(expr, values)))
        if name not in known
    ]


def overlaps(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def datasource_uids() -> set[str]:
    return {str(d["uid"]) for d in load_yaml(DATASOURCES)["datasources"]}


def datasource_variables(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """``${name}`` of each Prometheus datasource variable, and the uid it defaults to."""
    found = {}
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") == "datasource" and variable.get("query") == "prometheus":
            current = variable.get("current") or {}
            found[f"${{{variable.get('name')}}}"] = str(current.get("value"))
    return found


def schema_problems(dashboard: Mapping[str, Any], datasources: set[str]) -> list[str]:
    """What Grafana (schema 16 and later, panels with gridPos) requires of a dashboard.

    A datasource is named by a provisioned uid, or by a Prometheus datasource variable
    (``${datasource}``, so the dashboard can be imported into any Grafana) whose default
    is a provisioned uid.
    """
    problems: list[str] = []
    variables = datasource_variables(dashboard)

    def known(uid: Any) -> bool:
        return uid in datasources or uid in variables

    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(dashboard.get(key), kind):
            problems.append(f"{key} must be a {kind.__name__}")
    if problems:
        return problems
    if not _UID.match(dashboard["uid"]):
        problems.append(f"uid {dashboard['uid']!r}: 1 to 40 of A-Z a-z 0-9 _ -")
    if "rows" in dashboard:
        problems.append("top-level rows is the pre-schema-16 layout: use panels")
    if dashboard.get("id") is not None:
        problems.append("id must be null in a provisioned dashboard (Grafana assigns it)")
    time = dashboard.get("time") or {}
    if not (isinstance(time.get("from"), str) and isinstance(time.get("to"), str)):
        problems.append("time needs from and to")
    ids: set[int] = set()
    boxes: list[tuple[str, dict[str, int]]] = []
    for panel in all_panels(dashboard):
        name = f"panel {panel.get('id')} ({panel.get('title')})"
        panel_id = panel.get("id")
        if not isinstance(panel_id, int) or isinstance(panel_id, bool):
            problems.append(f"{name}: id must be an integer")
        elif panel_id in ids:
            problems.append(f"{name}: duplicate id")
        else:
            ids.add(panel_id)
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{name}: unknown panel type {panel.get('type')!r}")
        if not isinstance(panel.get("title"), str):
            problems.append(f"{name}: no title")
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(
            isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")
        ):
            problems.append(f"{name}: gridPos needs integer h, w, x, y")
        elif grid["w"] < 1 or grid["h"] < 1 or grid["x"] < 0 or grid["y"] < 0:
            problems.append(f"{name}: gridPos out of range")
        elif grid["x"] + grid["w"] > 24:
            problems.append(f"{name}: wider than the 24-column grid")
        else:
            problems.extend(
                f"{name} overlaps {other}" for other, box in boxes if overlaps(grid, box)
            )
            boxes.append((name, grid))
        if panel.get("type") == "row":
            if panel.get("panels") and not panel.get("collapsed"):
                problems.append(f"{name}: an open row keeps its panels at the top level")
            continue
        if panel.get("type") == "text":
            continue
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{name}: no targets")
            continue
        references = [panel.get("datasource")] + [t.get("datasource") for t in targets]
        for reference in references:
            if not isinstance(reference, dict) or reference.get("type") != "prometheus":
                problems.append(f"{name}: datasource must be {{type: prometheus, uid: …}}")
            elif not known(reference.get("uid")):
                problems.append(f"{name}: datasource uid {reference.get('uid')!r} not provisioned")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or not all(isinstance(r, str) and r for r in ref_ids):
            problems.append(f"{name}: targets need distinct refIds")
        for target in targets:
            if not str(target.get("expr", "")).strip():
                problems.append(f"{name} {target.get('refId')}: empty expr")
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if not re.fullmatch(r"\w+", str(variable.get("name", ""))):
            problems.append(f"variable {variable.get('name')!r}: bad name")
        if variable.get("type") == "query":
            reference = variable.get("datasource") or {}
            if not known(reference.get("uid")):
                problems.append(f"variable {variable['name']}: datasource not provisioned")
    for name, default in variables.items():
        if default not in datasources:
            problems.append(f"variable {name} defaults to {default!r}, not provisioned")
    return problems


# ---------------------------------------------------------------------------------------
# The dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_matches_its_schema_version(dashboard: dict[str, Any]) -> None:
    assert schema_problems(dashboard, datasource_uids()) == []


def test_schema_version_is_the_pinned_grafanas(dashboard: dict[str, Any]) -> None:
    image = str(service(load_compose(), GRAFANA)["image"])
    repository, _, tag = image.partition(":")
    assert repository in {"grafana/grafana", "grafana/grafana-oss"}, image
    release = ".".join(tag.split(".")[:2])
    assert release in SCHEMA_BY_RELEASE, f"{image}: which schema version does it write?"
    assert dashboard["schemaVersion"] == SCHEMA_BY_RELEASE[release]


def test_panels_use_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    assert unknown_metric_problems(dashboard, known_metric_names()) == []


def test_panels_select_the_scrape_job(dashboard: dict[str, Any]) -> None:
    values = variable_values(dashboard)
    for where, expr in panel_queries(dashboard):
        text = substitute(expr, values)
        if metric_names(text):
            selected = set(re.findall(r'\bjob\s*=\s*"([^"]*)"', text))
            assert selected == {SCRAPE_JOB}, where


@needs_promtool
def test_panel_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    values = variable_values(dashboard)
    rules = [
        {"record": f"dashboard:query_{index}", "expr": substitute(expr, values)}
        for index, (_, expr) in enumerate(panel_queries(dashboard))
    ]
    assert rules
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    run_tool(PROMTOOL, "check", "rules", str(path))


@pytest.mark.parametrize(
    ("expr", "culprit"),
    [
        ('rate(advmon_events_flagged{job="advmon"}[5m])', "advmon_events_flagged"),
        ('sum by (le) (rate(advmon_scoring_bucket{job="advmon"}[5m]))', "advmon_scoring_bucket"),
        ('job_model:advmon_undefined:ratio{job="advmon"}', "job_model:advmon_undefined:ratio"),
        ('sum(node_load1{job="advmon"}) by (instance)', "node_load1"),
    ],
)
def test_metric_check_catches_mistakes(expr: str, culprit: str) -> None:
    dashboard = {"panels": [{"id": 1, "targets": [{"refId": "A", "expr": expr}]}]}
    problems = unknown_metric_problems(dashboard, known_metric_names())
    assert len(problems) == 1
    assert culprit in problems[0]


def test_metric_names_skip_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(advmon_scoring_seconds_bucket{job="a",'
        ' model=~"x|y"}[5m] offset 1h))) > bool 1e3 and on (model) vector(0.05)'
    )
    assert metric_names(expr) == {"advmon_scoring_seconds_bucket"}


def test_schema_check_catches_mistakes(dashboard: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(dashboard))
    panels = [p for p in broken["panels"] if p.get("targets")]
    panels[1]["id"] = panels[0]["id"]
    panels[0]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "nope"}
    del panels[2]["gridPos"]
    problems = schema_problems(broken, datasource_uids())
    assert any("duplicate id" in p for p in problems)
    assert any("'nope' not provisioned" in p for p in problems)
    assert any("gridPos needs" in p for p in problems)


def test_panels_name_their_datasource_by_a_variable(dashboard: dict[str, Any]) -> None:
    """Imported into another Grafana, the dashboard asks for a Prometheus datasource; in
    compose it defaults to the provisioned one."""
    assert datasource_variables(dashboard) == {"${datasource}": "advmon-prometheus"}
    for panel in all_panels(dashboard):
        for target in panel.get("targets") or []:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    broken = json.loads(json.dumps(dashboard))
    broken["templating"]["list"][0]["current"]["value"] = "elsewhere"
    assert schema_problems(broken, datasource_uids()) == [
        "variable ${datasource} defaults to 'elsewhere', not provisioned"
    ]
    broken["templating"]["list"][0]["name"] = "source"
    assert any("'${datasource}' not provisioned" in p for p in schema_problems(broken, set()))


def test_dashboard_variables_all_have_values(dashboard: dict[str, Any]) -> None:
    values = variable_values(dashboard)
    for _, expr in panel_queries(dashboard):
        substitute(expr, values)  # fails on an unknown variable


# ---------------------------------------------------------------------------------------
# Provisioning and the compose service


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def grafana_path(svc: Mapping[str, Any], container_path: PurePosixPath) -> Path:
    """The host path bind-mounted read-only that holds ``container_path``."""
    mount = mount_for(service_mounts(svc), container_path)
    assert mount is not None, f"nothing is mounted at {container_path}"
    assert mount.is_bind, f"{container_path} is not mounted from the repository"
    assert mount.read_only, f"mount {container_path} read-only"
    return host_path(mount, container_path, REPO)


def test_grafana_service_is_provisioned(compose: dict[str, Any]) -> None:
    svc = service(compose, GRAFANA)
    provisioning = grafana_path(svc, PurePosixPath("/etc/grafana/provisioning"))
    assert provisioning == PROVISIONING
    assert (
        grafana_path(svc, PurePosixPath("/etc/grafana/provisioning/datasources/prometheus.yml"))
        == DATASOURCES
    )
    for provider in load_yaml(DASHBOARD_PROVIDERS)["providers"]:
        assert provider["type"] == "file"
        folder = PurePosixPath(str(provider["options"]["path"]))
        on_host = grafana_path(svc, folder)
        assert on_host == DASHBOARDS
        assert sorted(p.name for p in on_host.glob("*.json")) == [DASHBOARD.name]
    data = mount_for(service_mounts(svc), PurePosixPath("/var/lib/grafana"))
    assert data is not None, "keep /var/lib/grafana on a named volume"
    assert not data.is_bind, "keep /var/lib/grafana on a named volume"


def test_datasource_is_the_prometheus_service(compose: dict[str, Any]) -> None:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["access"] == "proxy"
    host, _, port = str(datasource["url"]).removeprefix("http://").rstrip("/").rpartition(":")
    assert host in names_of(compose, PROMETHEUS)
    args = [str(a) for a in service(compose, PROMETHEUS).get("command") or []]
    assert int(port) == listen_port(flag(args, "web.listen-address", f":{PROMETHEUS_PORT}"))
    assert datasource["url"].startswith("http://")


def test_grafana_needs_a_password_and_no_anonymous_access(compose: dict[str, Any]) -> None:
    svc = service(compose, GRAFANA)
    with pytest.raises(ValueError, match="GRAFANA_ADMIN_PASSWORD"):
        service_env(svc)
    env = service_env(svc, {"GRAFANA_ADMIN_PASSWORD": "a-long-random-string"})
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "a-long-random-string"
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED", "false") == "false"


def test_grafana_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    ports = service_ports(service(compose, GRAFANA))
    assert ports, "publish Grafana's port"
    for mapping in ports:
        assert mapping.host_ip is not None, "Grafana is published on every host address"
        assert is_loopback(mapping.host_ip), f"Grafana is published on {mapping.host_ip}"
