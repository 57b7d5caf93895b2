"""Servers a fault scenario stops and starts again on the same address.

- :class:`RestartableKafkaBroker`: an Apache Kafka node of its own (not the session's),
  restarted on the same ports with the same data directory, as after a broker upgrade.
- :class:`RestartableAlertmanager`: Alertmanager on one fixed loopback port, routing to a
  webhook receiver that outlives it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from monitor.errors import BrokerError
from monitor.kafka.local_broker import free_loopback_port
from tests.integration.alertmanager import WebhookReceiver, start_alertmanager, write_config
from tests.kafka import ApacheKafkaBroker

__all__ = ["RestartableAlertmanager", "RestartableKafkaBroker"]


class RestartableKafkaBroker(ApacheKafkaBroker):
    """An Apache Kafka node that :meth:`restart` brings back on its ports and its data.

    The first start formats a fresh store as :class:`ApacheKafkaBroker` does; a restart
    launches the same properties file again, without formatting, so topics, committed
    offsets and the cluster id survive.
    """

    def __init__(self, data_dir: Path, *, start_timeout_s: float = 60.0, heap: str = "1g") -> None:
        super().__init__(data_dir, start_timeout_s=start_timeout_s, heap=heap)
        self._properties: Path | None = None
        self._port = 0

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        if self._properties is None:
            process = super()._launch(port)
            self._properties = self.data_dir / "server.properties"
            self._port = port
            return process
        command = self._java_command("kafka.Kafka", str(self._properties))
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}  # restart\n".encode())
        return self._spawn(command, signal.SIGKILL)

    def restart(self, down_s: float = 0.0) -> float:
        """Stop the node (SIGTERM), wait ``down_s``, start it again; return the seconds
        from the stop until it answers a metadata request once more."""
        assert self._properties is not None, "start the broker before restarting it"
        stopped = time.monotonic()
        self.stop()
        time.sleep(down_s)
        self._process = self._launch(self._port)
        failure = self._wait_ready(self._port, time.monotonic() + self.start_timeout_s)
        if failure:
            raise BrokerError(f"the broker did not come back on {self.bootstrap}: {failure}")
        return time.monotonic() - stopped


class RestartableAlertmanager:
    """Alertmanager on a fixed loopback port; :meth:`stop` and :meth:`start` at will.

    Parameters
    ----------
    binary
        The Alertmanager executable.
    folder
        Its config, data and log.
    receiver
        The webhook receiver it notifies (serving for as long as the test needs).
    """

    def __init__(self, binary: str, folder: Path, receiver: WebhookReceiver) -> None:
        self.binary = binary
        self.folder = folder
        self.receiver = receiver
        self.port = free_loopback_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its base URL, the same across restarts."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Its output, across restarts."""
        return self.folder / "alertmanager.log"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it and wait until ``/-/ready`` answers."""
        write_config(self.folder, self.receiver)
        self._process = start_alertmanager(self.binary, self.folder, self.port, timeout_s=timeout_s)

    def stop(self) -> None:
        """Stop it (SIGTERM)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(10)
