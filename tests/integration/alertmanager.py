"""A real Alertmanager on loopback, routing every alert to a webhook receiver of the test's.

Alertmanager is Debian's ``prometheus-alertmanager`` (``.ci/run`` installs it). The
webhook receiver is an aiohttp server in a thread that records every notification, so a
test can see what on-call tooling would be sent.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from monitor.kafka.local_broker import free_loopback_port

__all__ = [
    "Alertmanager",
    "WebhookReceiver",
    "alertmanager_binary",
    "installed_alertmanager",
    "running_alertmanager",
    "start_alertmanager",
    "write_config",
]

_CONFIG = """\
route:
  receiver: webhook
  group_by: [incident_id]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: {url}
        send_resolved: true
"""


def alertmanager_binary() -> str | None:
    """The Alertmanager executable, if installed (Debian names it prometheus-alertmanager)."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def installed_alertmanager() -> str:
    """The Alertmanager executable; fails the test, saying how to install it, if absent."""
    binary = alertmanager_binary()
    if binary is None:
        pytest.fail(
            "Alertmanager is not installed: apt-get install -y prometheus-alertmanager "
            "(.ci/run does this)",
            pytrace=False,
        )
    return binary


@dataclass
class WebhookReceiver:
    """Records Alertmanager's webhook notifications."""

    port: int = field(default_factory=free_loopback_port)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Where Alertmanager posts."""
        return f"http://127.0.0.1:{self.port}/hook"

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification received so far."""
        with self._lock:
            return [alert for n in self.notifications for alert in n.get("alerts", [])]

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self.notifications.append(body)
        return web.Response(text="ok")

    @contextmanager
    def serving(self) -> Iterator[WebhookReceiver]:
        """Serve in a background thread for the duration of the block."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app)

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        thread = threading.Thread(target=serve, name="webhook-receiver", daemon=True)
        thread.start()
        started.wait(10)
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


@dataclass(frozen=True)
class Alertmanager:
    """A running Alertmanager and the receiver it notifies."""

    url: str
    receiver: WebhookReceiver

    def active_alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: what Alertmanager holds now."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            alerts: list[dict[str, Any]] = json.load(response)
            return alerts


def write_config(folder: Path, receiver: WebhookReceiver) -> Path:
    """Write ``folder/alertmanager.yml``, routing every alert to ``receiver`` grouped by
    incident, and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "alertmanager.yml"
    config.write_text(_CONFIG.format(url=receiver.url), encoding="utf-8")
    return config


def start_alertmanager(
    binary: str, folder: Path, port: int, *, timeout_s: float = 30.0
) -> subprocess.Popen[bytes]:
    """Start Alertmanager on loopback ``port`` with ``folder``'s config (see
    :func:`write_config`), data and log (appended to), and wait until ``/-/ready`` answers.

    Raises :class:`RuntimeError` with its log, having stopped it, if it does not start.
    """
    log_path = folder / "alertmanager.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'alertmanager.yml'}",
                f"--storage.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.terminate()
            process.wait(10)
            raise RuntimeError(
                "Alertmanager did not start:\n" + log_path.read_text(errors="replace")
            )
        time.sleep(0.2)


@contextmanager
def running_alertmanager(binary: str, folder: Path) -> Iterator[Alertmanager]:
    """Start Alertmanager on a free loopback port, routing to a fresh webhook receiver."""
    receiver = WebhookReceiver()
    with receiver.serving():
        write_config(folder, receiver)
        port = free_loopback_port()
        process = start_alertmanager(binary, folder, port)
        try:
            yield Alertmanager(f"http://127.0.0.1:{port}", receiver)
        finally:
            process.terminate()
            process.wait(10)
