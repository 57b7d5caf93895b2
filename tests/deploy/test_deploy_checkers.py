"""The checkers of deploy_support catch what they are meant to catch."""

from __future__ import annotations

import copy
from typing import Any

import click
import pytest

from monitor.settings import setting_variable_names
from tests.deploy.deploy_support import (
    API,
    KAFKA,
    api_token_problems,
    bootstrap_problems,
    check_advmon_argv,
    check_settings_env,
    image_problems,
    interpolate,
    kraft_problems,
    load_compose,
    parse_advmon,
    service,
    service_env,
    service_mounts,
    service_ports,
)


def test_settings_names_cover_leaves_and_groups() -> None:
    names = setting_variable_names()
    assert {
        "ADVMON_CONFIG",
        "ADVMON_LOG_LEVEL",
        "ADVMON_KAFKA",
        "ADVMON_KAFKA__BOOTSTRAP",
        "ADVMON_SCORING__DEVICE",
        "ADVMON_WORKER__APP_ID",
    } <= names


@pytest.mark.parametrize(
    "name",
    [
        "ADVMON_KAFKA__BOOTSTRAPS",
        "ADVMON_BOGUS",
        "ADVMON_LOGLEVEL",
        "ADVMON_KAFKA_BOOTSTRAP",
        "ADVMON_SCORING__DEVICE__X",
        "advmon_worker__appid",
    ],
)
def test_made_up_settings_are_reported(name: str) -> None:
    assert check_settings_env([name]) != []


def test_real_settings_pass_in_any_case() -> None:
    names = ["advmon_kafka__bootstrap", "ADVMON_Scoring__Batch_Size", "OTHER_VARIABLE"]
    assert check_settings_env(names) == []


def test_interpolation() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${UNSET:-d}", env) == "d"
    assert interpolate("${EMPTY:-d}/${EMPTY-d}", env) == "d/"
    assert interpolate("$SET ${SET} $$SET ${SET:+alt}", env) == "x x $SET alt"
    with pytest.raises(ValueError, match="UNSET"):
        interpolate("${UNSET:?give it}", env)


def test_advmon_argv_checks() -> None:
    assert check_advmon_argv(["worker", "--web-port", "6066", "-l", "info"]) == []
    assert parse_advmon(["worker", "-p", "7000"]).web_port == 7000
    assert parse_advmon(["worker", "--config", "/c.yaml"]).params["config_path"] is not None
    for bad in (
        ["wroker"],
        ["worker", "--web-prot", "6066"],
        ["worker", "--web-port", "http"],
        ["worker", "--loglevel", "loud"],
        ["score", "--detector"],
    ):
        assert check_advmon_argv(bad) != [], bad
    with pytest.raises(click.UsageError):
        parse_advmon([])


def kafka_env() -> dict[str, str]:
    return service_env(service(load_compose(), KAFKA))


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("KAFKA_PROCESS_ROLES", "broker", "broker,controller"),
        ("CLUSTER_ID", "advmon", "CLUSTER_ID"),
        ("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@kafka:9999", "controller listener port"),
        ("KAFKA_CONTROLLER_QUORUM_VOTERS", "2@kafka:9093", "KAFKA_NODE_ID"),
        ("KAFKA_ADVERTISED_LISTENERS", "INTERNAL://kafka:9095", "differs"),
        ("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT", "security protocol"),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3", "single broker"),
    ],
)
def test_kraft_checker_reports(setting: str, value: str, problem: str) -> None:
    env = kafka_env()
    assert kraft_problems(env) == []
    env[setting] = value
    assert any(problem in p for p in kraft_problems(env))


def test_bootstrap_checker_reports() -> None:
    env = kafka_env()
    names = {KAFKA}
    assert bootstrap_problems("kafka:9092", "PLAINTEXT", env, names) == []
    assert bootstrap_problems("kafka:29092", "PLAINTEXT", env, names) != []
    assert bootstrap_problems("broker:9092", "PLAINTEXT", env, names) != []
    assert bootstrap_problems("localhost:9094", "PLAINTEXT", env, names) != []
    assert bootstrap_problems("kafka:9092", "SASL_SSL", env, names) != []


def test_image_checker_reports() -> None:
    compose: dict[str, Any] = copy.deepcopy(load_compose())
    assert image_problems(compose) == []
    compose["services"]["postgres"]["image"] = "postgres"
    compose["services"]["kafka"]["image"] = "apache/kafka:latest"
    compose["services"]["x"] = {"image": "registry:5000/team/app@sha256:" + "0" * 64}
    assert len(image_problems(compose)) == 2


def test_ports_and_volumes_syntax() -> None:
    svc = {
        "ports": ["6066", "127.0.0.1:9000:9001/udp", {"target": 80, "published": "8080"}],
        "volumes": [
            "data:/d",
            "./x:/etc/x:ro,z",
            {"type": "bind", "source": "./y", "target": "/y", "read_only": True},
        ],
    }
    ports = [(p.published, p.target, p.protocol, p.host_ip) for p in service_ports(svc)]
    assert ports == [
        (None, 6066, "tcp", None),
        ("9000", 9001, "udp", "127.0.0.1"),
        ("8080", 80, "tcp", None),
    ]
    mounts = [(m.source, m.target, m.read_only, m.is_bind) for m in service_mounts(svc)]
    assert mounts == [
        ("data", "/d", False, False),
        ("./x", "/etc/x", True, True),
        ("./y", "/y", True, True),
    ]


@pytest.mark.parametrize(
    ("command", "token", "problem"),
    [
        (None, "${ADVMON_API__TOKEN:?set it}", None),
        (None, "${ADVMON_API__TOKEN:-}", "starts it without ADVMON_API__TOKEN"),
        (None, "${ADVMON_API__TOKEN}", "starts it without ADVMON_API__TOKEN"),
        (None, None, "gets no ADVMON_API__TOKEN"),
        (None, "s3cret", "fixed value"),
        (["api", "--host", "127.0.0.1"], None, None),
        (["api"], None, None),
        (["worker"], None, None),
    ],
)
def test_api_token_checker_reports(
    command: list[str] | None, token: str | None, problem: str | None
) -> None:
    svc = copy.deepcopy(service(load_compose(), API))
    if command is not None:
        svc["command"] = command
    svc["environment"].pop("ADVMON_API__TOKEN")
    if token is not None:
        svc["environment"]["ADVMON_API__TOKEN"] = token
    problems = api_token_problems(API, svc)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problem in problems[0]
