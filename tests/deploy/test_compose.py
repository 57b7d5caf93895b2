"""docker-compose.yml against the code it runs: settings, CLI, worker config, Kafka."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from monitor.config import MonitorConfig, load_config
from monitor.incidents.api import is_loopback
from monitor.settings import Settings
from tests.deploy.deploy_support import (
    API,
    DOCKERFILE,
    KAFKA,
    POSTGRES,
    REPO,
    WORKER,
    Stage,
    api_token_problems,
    argv,
    bootstrap_problems,
    check_advmon_argv,
    check_settings_env,
    dockerfile_stages,
    host_path,
    image_problems,
    kraft_problems,
    load_compose,
    mount_for,
    parse_advmon,
    parse_listeners,
    run_argv,
    service,
    service_env,
    service_mounts,
    service_ports,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def runtime_stage() -> Stage:
    return dockerfile_stages()[-1]


def worker_env(compose: dict[str, Any], runtime_stage: Stage) -> dict[str, str]:
    """What the worker process sees: the image's ENV, then compose's environment."""
    return {**runtime_stage.env, **service_env(service(compose, WORKER))}


def worker_argv(compose: dict[str, Any], runtime_stage: Stage) -> list[str]:
    """The worker's full command line: entrypoint + command, compose overriding the image."""
    svc = service(compose, WORKER)
    return run_argv(runtime_stage, argv(svc.get("entrypoint")), argv(svc.get("command")))


def kafka_names(compose: dict[str, Any]) -> set[str]:
    """Names other containers on the default network reach the kafka service by."""
    svc = service(compose, KAFKA)
    names = {KAFKA}
    if "hostname" in svc:
        names.add(str(svc["hostname"]))
    return names


def test_services_exist(compose: dict[str, Any]) -> None:
    for name in (KAFKA, POSTGRES, WORKER):
        service(compose, name)


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    assert image_problems(compose) == []


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for mount in service_mounts(svc):
            if mount.source and not mount.is_bind:
                assert mount.source in declared, f"{name}: volume {mount.source} not declared"


def test_kafka_is_a_single_kraft_node(compose: dict[str, Any]) -> None:
    kafka = service(compose, KAFKA)
    assert str(kafka["image"]).startswith("apache/kafka:")
    assert kraft_problems(service_env(kafka)) == []


def test_kafka_keeps_its_log_in_a_volume(compose: dict[str, Any]) -> None:
    kafka = service(compose, KAFKA)
    log_dirs = service_env(kafka).get("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs")
    for log_dir in log_dirs.split(","):
        mount = mount_for(service_mounts(kafka), PurePosixPath(log_dir))
        assert mount is not None, f"{log_dir} is in no volume"
        assert not mount.is_bind, f"{log_dir} is on a bind mount, not a named volume"


def test_kafka_healthcheck_uses_a_bound_listener(compose: dict[str, Any]) -> None:
    kafka = service(compose, KAFKA)
    test = kafka.get("healthcheck", {}).get("test")
    assert test, "kafka needs a healthcheck (the worker waits for service_healthy)"
    words = argv(test) or []
    assert "--bootstrap-server" in words
    address = words[words.index("--bootstrap-server") + 1]
    ports = {x.port for x in parse_listeners(service_env(kafka)["KAFKA_LISTENERS"]).values()}
    assert int(address.rpartition(":")[2]) in ports


def test_kafka_host_listener_is_published(compose: dict[str, Any]) -> None:
    kafka = service(compose, KAFKA)
    advertised = parse_listeners(service_env(kafka)["KAFKA_ADVERTISED_LISTENERS"])
    published = {(m.published, m.target) for m in service_ports(kafka)}
    for listener in advertised.values():
        if listener.host in {"localhost", "127.0.0.1"}:
            assert (str(listener.port), listener.port) in published, (
                f"{listener.name} advertises {listener.host}:{listener.port} to the host "
                "but the port is not published as the same number"
            )


def test_postgres(compose: dict[str, Any]) -> None:
    postgres = service(compose, POSTGRES)
    assert str(postgres["image"]).startswith("postgres:16")
    raw_password = str(postgres["environment"]["POSTGRES_PASSWORD"])
    assert "${POSTGRES_PASSWORD" in raw_password, "the password comes from the environment"
    data = mount_for(service_mounts(postgres), PurePosixPath("/var/lib/postgresql/data"))
    assert data is not None, "PostgreSQL data is in no volume"
    assert not data.is_bind, "PostgreSQL data belongs on a named volume"
    assert "pg_isready" in " ".join(argv(postgres["healthcheck"]["test"]) or [])


def test_worker_is_built_from_the_dockerfile(compose: dict[str, Any]) -> None:
    build = service(compose, WORKER)["build"]
    assert isinstance(build, dict)
    context = (REPO / str(build.get("context", "."))).resolve()
    assert context == REPO, "the Dockerfile COPYs from the repository root"
    assert (context / str(build.get("dockerfile", "Dockerfile"))).resolve() == DOCKERFILE


def test_worker_waits_for_a_healthy_kafka(compose: dict[str, Any]) -> None:
    depends = service(compose, WORKER)["depends_on"]
    assert isinstance(depends, dict), "use the long depends_on form with a condition"
    assert depends[KAFKA]["condition"] == "service_healthy"
    assert service(compose, KAFKA).get("healthcheck")


def test_worker_environment_is_real_settings(compose: dict[str, Any], runtime_stage: Stage) -> None:
    assert check_settings_env(worker_env(compose, runtime_stage)) == []


def test_worker_environment_values_validate(
    compose: dict[str, Any], runtime_stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ADVMON_"):
            monkeypatch.delenv(name)
    for name, value in worker_env(compose, runtime_stage).items():
        monkeypatch.setenv(name, value)
    Settings()


def test_bootstrap_is_an_advertised_listener(compose: dict[str, Any], runtime_stage: Stage) -> None:
    env = worker_env(compose, runtime_stage)
    assert "ADVMON_KAFKA__BOOTSTRAP" in env
    protocol = env.get("ADVMON_KAFKA__SECURITY_PROTOCOL", "PLAINTEXT")
    kafka_env = service_env(service(compose, KAFKA))
    problems = bootstrap_problems(
        env["ADVMON_KAFKA__BOOTSTRAP"], protocol, kafka_env, kafka_names(compose)
    )
    assert problems == []


def test_worker_command_line_is_valid(compose: dict[str, Any], runtime_stage: Stage) -> None:
    full = worker_argv(compose, runtime_stage)
    assert full[0] == "advmon"
    assert check_advmon_argv(full[1:]) == []
    assert parse_advmon(full[1:]).command == "worker"


def test_worker_web_port_is_published_and_exposed(
    compose: dict[str, Any], runtime_stage: Stage
) -> None:
    port = parse_advmon(worker_argv(compose, runtime_stage)[1:]).web_port
    targets = {m.target for m in service_ports(service(compose, WORKER))}
    assert port in targets, f"the worker's web port {port} is not published"
    exposed = {
        int(word.split("/")[0]) for i in runtime_stage.all("EXPOSE") for word in i.value.split()
    }
    assert port in exposed, f"the image does not EXPOSE the web port {port}"


def test_worker_web_port_reaches_prometheus_and_the_host_loopback_only(
    compose: dict[str, Any], runtime_stage: Stage
) -> None:
    invocation = parse_advmon(worker_argv(compose, runtime_stage)[1:])
    # Prometheus scrapes it from its own container: loopback in the worker's would not do.
    assert invocation.web_bind(worker_env(compose, runtime_stage)) == "0.0.0.0"
    published = [
        m for m in service_ports(service(compose, WORKER)) if m.target == invocation.web_port
    ]
    assert published
    for mapping in published:
        assert mapping.host_ip is not None, "the web port is published on every host address"
        assert is_loopback(mapping.host_ip), f"the web port is published on {mapping.host_ip}"


def test_api_beyond_loopback_needs_a_token(compose: dict[str, Any]) -> None:
    advmon = [name for name, svc in compose["services"].items() if "build" in svc]
    assert API in advmon
    assert [p for name in advmon for p in api_token_problems(name, service(compose, name))] == []


def test_api_environment_values_validate(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = service(compose, API)
    with pytest.raises(ValueError, match="ADVMON_API__TOKEN"):
        service_env(api)
    for name in list(os.environ):
        if name.upper().startswith("ADVMON_"):
            monkeypatch.delenv(name)
    env = service_env(api, {"ADVMON_API__TOKEN": "a-long-random-string"})
    assert check_settings_env(env) == []
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    token = Settings().api.token
    assert token is not None
    assert token.get_secret_value() == "a-long-random-string"


def test_worker_healthcheck_matches_the_web_port(
    compose: dict[str, Any], runtime_stage: Stage
) -> None:
    port = parse_advmon(worker_argv(compose, runtime_stage)[1:]).web_port
    healthcheck = service(compose, WORKER).get("healthcheck")
    if healthcheck is None:
        instruction = runtime_stage.last("HEALTHCHECK")
        assert instruction is not None, "neither compose nor the image has a healthcheck"
        text = instruction.value
    else:
        text = " ".join(argv(healthcheck["test"]) or [])
    assert f"http://localhost:{port}/healthz" in text


def worker_config_path(compose: dict[str, Any], runtime_stage: Stage) -> PurePosixPath:
    invocation = parse_advmon(worker_argv(compose, runtime_stage)[1:])
    path = invocation.params.get("config_path") or worker_env(compose, runtime_stage).get(
        "ADVMON_CONFIG"
    )
    assert path, "the worker gets no config: neither --config nor ADVMON_CONFIG"
    return PurePosixPath(str(path))


def test_worker_config_is_mounted_and_valid(compose: dict[str, Any], runtime_stage: Stage) -> None:
    container_path = worker_config_path(compose, runtime_stage)
    mounts = service_mounts(service(compose, WORKER))
    mount = mount_for(mounts, container_path)
    assert mount is not None, f"nothing is mounted at {container_path}"
    assert mount.is_bind, f"{container_path} is not mounted from the repository"
    assert mount.read_only, "mount the worker config read-only"
    source = host_path(mount, container_path, REPO)
    assert source.is_file(), f"{source} (mounted at {container_path}) does not exist"
    MonitorConfig.model_validate(yaml.safe_load(source.read_text(encoding="utf-8")))
    load_config(source)


def test_detectors_lie_in_a_read_only_volume(compose: dict[str, Any], runtime_stage: Stage) -> None:
    container_path = worker_config_path(compose, runtime_stage)
    mounts = service_mounts(service(compose, WORKER))
    config_mount = mount_for(mounts, container_path)
    assert config_mount is not None
    host_config = host_path(config_mount, container_path, REPO)
    on_host = load_config(host_config)
    in_container = MonitorConfig.model_validate(
        yaml.safe_load(host_config.read_text(encoding="utf-8"))
    )
    for model, host_model in zip(in_container.models, on_host.models, strict=True):
        detector = PurePosixPath(container_path.parent, model.detector.as_posix())
        mount = mount_for(mounts, detector)
        assert mount is not None, f"model {model.id}: detector {detector} is in no volume"
        assert mount.read_only, f"mount {mount.target} (detectors) read-only"
        if mount.is_bind:
            # The same relative layout on the host: the config also works with
            # `advmon worker --config deploy/advmon.yaml` outside the container.
            assert host_path(mount, detector, REPO) == Path(host_model.detector)


def test_deploy_readme_lists_every_service(compose: dict[str, Any]) -> None:
    """deploy/README.md's table of services names exactly the services compose starts."""
    readme = (REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    table = readme.split("| service | image | what for |", 1)[1].split("\n\n", 1)[0]
    listed = {row.split("|")[1].strip().strip("`") for row in table.strip().splitlines()[1:]}
    assert listed == set(compose["services"])
    count = readme.split(" services on one machine", 1)[0].rsplit(" ", 1)[1]
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    assert count in words, count
    assert words.index(count) + 1 == len(compose["services"])
