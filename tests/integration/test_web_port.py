"""The worker's web port: ``/metrics`` and ``/healthz`` only, on loopback unless told.

Faust's own pages (``/table/<name>/<key>/`` served a pending OIP v2 request body) must be
absent, and the port must listen where ``ADVMON_WORKER__WEB_BIND`` or ``--web-bind`` say.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.kafka_io import OutputTopics, create_topics, unique_name
from tests.integration.traffic import DemoDetector
from tests.integration.workers import (
    ModelEntry,
    WorkerLauncher,
    WorkerProcess,
    free_loopback_port,
    worker_environment,
    write_worker_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.embedded_broker]

#: Faust's built-in pages, and paths nobody registered.
NOT_SERVED = [
    "/",
    "/table/",
    "/table/oip-pending/",
    "/table/oip-pending/some-cloudevent-id/",
    "/table/drift-states/digits/",
    "/router/",
    "/router/topics",
    "/router/oip-pending/some-cloudevent-id/",
    "/graph/",
    "/assignment/",
    "/stats/",
    "/performance/",
    "/metrics/extra",
    "/no-such-page",
]


def _status(port: int, path: str, host: str = "127.0.0.1") -> int | None:
    """The HTTP status of ``GET path``; ``None`` when nothing answers on ``host``."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(f"http://{host}:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of TCP sockets listening on ``port`` (Linux's /proc/net)."""
    addresses: set[str] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path("/proc/net", table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            addresses.add(socket.inet_ntop(family, packed))
    return addresses


def _other_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # UDP: picks the route, sends nothing
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def _config(kafka_bootstrap: str, detector: DemoDetector, folder: Path) -> tuple[Path, str]:
    inference = unique_name("web-inference")
    await create_topics(kafka_bootstrap, {inference: 1})
    topics = await OutputTopics.create(kafka_bootstrap, "web")
    config = write_worker_config(
        folder / "worker.yaml",
        detector=detector.path,
        models=[ModelEntry("digits", [inference])],
        topics=topics,
    )
    return config, inference


@pytest.mark.skipif(sys.platform != "linux", reason="reads the listening sockets from /proc")
async def test_serves_metrics_and_healthz_only_on_loopback(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
) -> None:
    config, inference = await _config(kafka_bootstrap, demo_detector, tmp_path)
    worker = worker_launcher.start("web", config)
    await worker.wait_consuming(inference)
    port = worker.web_port
    assert await asyncio.to_thread(_status, port, "/metrics") == 200
    assert await asyncio.to_thread(_status, port, "/healthz") == 200
    served = {path: await asyncio.to_thread(_status, port, path) for path in NOT_SERVED}
    assert served == dict.fromkeys(NOT_SERVED, 404)
    assert _listening_addresses(port) == {"127.0.0.1"}
    other = _other_address()
    if other is not None:
        assert await asyncio.to_thread(_status, port, "/metrics", other) is None


@pytest.mark.skipif(sys.platform != "linux", reason="reads the listening sockets from /proc")
@pytest.mark.parametrize(
    ("web_bind_setting", "options", "listening"),
    [
        ("0.0.0.0", [], "0.0.0.0"),
        # The command line is applied after the settings.
        ("0.0.0.0", ["--web-bind", "127.0.0.1"], "127.0.0.1"),
    ],
)
async def test_web_bind_setting_and_its_command_line_override(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    worker_launcher: WorkerLauncher,
    tmp_path: Path,
    web_bind_setting: str,
    options: list[str],
    listening: str,
) -> None:
    config, inference = await _config(kafka_bootstrap, demo_detector, tmp_path)
    port = free_loopback_port()
    env = worker_environment(
        kafka__bootstrap=kafka_bootstrap,
        worker__app_id=unique_name("web-bind"),
        kafka__session_timeout_ms="6000",
        scoring__device="cpu",
        scoring__intra_op_threads="1",
        worker__web_bind=web_bind_setting,
    )
    command = [sys.executable, "-m", "monitor", "worker", "--config", str(config)]
    worker = WorkerProcess(
        name="web-bind",
        command=[*command, "-l", "info", "--web-port", str(port), *options],
        env=env,
        workdir=tmp_path / "web-bind",
        web_port=port,
        app_id=env["ADVMON_WORKER__APP_ID"],
    )
    worker.start()
    worker_launcher.workers.append(worker)  # stopped with the launcher's workers
    await worker.wait_consuming(inference)
    assert _listening_addresses(port) == {listening}
    assert await asyncio.to_thread(_status, port, "/table/") == 404
    other = _other_address()
    if other is not None:
        expected = 200 if listening == "0.0.0.0" else None
        assert await asyncio.to_thread(_status, port, "/metrics", other) == expected
