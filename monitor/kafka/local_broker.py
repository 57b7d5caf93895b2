"""A local Kafka-protocol broker for the demo and the tests, from the ``noida-db`` package.

Production uses Apache Kafka; this broker lets ``advmon demo`` and the test suite run the
real Kafka protocol on loopback with nothing else installed.

>>> with LocalKafkaBroker(Path("/tmp/advmon-kafka")) as bootstrap:  # doctest: +SKIP
...     print(bootstrap)
127.0.0.1:40517
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient

from monitor.errors import BrokerError

__all__ = [
    "BrokerProcess",
    "LocalKafkaBroker",
    "die_with_parent",
    "free_loopback_port",
    "noida_db_binary",
]

# The noida-db binary is linked against a newer glibc symbol version than some machines
# have; the loader warns on every start, but the broker works. Keep it out of messages.
_GLIBC_WARNING = re.compile(r"weak version `GLIBC_[0-9.]+' not found")
_PORT_IN_USE = "already in use"


def noida_db_binary() -> Path:
    """The broker executable shipped inside the installed ``noida_db`` package."""
    try:
        binary = Path(str(files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        raise BrokerError(
            "the local broker needs the noida-db package: pip install 'advmon[demo]'"
        ) from None
    if not binary.is_file():
        raise BrokerError(f"noida-db binary not found at {binary}; reinstall noida-db")
    if not os.access(binary, os.X_OK):
        # Wheels installed by some tools drop the executable bit.
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``signum`` to the child when its parent dies.

    ``None`` elsewhere than on Linux, where there is no such request.
    """
    if sys.platform != "linux":
        return None

    def request() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG

    return request


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _check_metadata(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    if not cluster.get("brokers"):
        raise RuntimeError(f"metadata from {bootstrap} lists no brokers")


def _answers_metadata(bootstrap: str, timeout_s: float) -> Exception | None:
    # A private event loop: callers may be synchronous code (fixtures, the demo's set-up).
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(_check_metadata(bootstrap), timeout_s))
    except Exception as error:
        return error
    finally:
        loop.close()
    return None


class BrokerProcess:
    """A Kafka broker in a child process on free loopback ports, as a context manager.

    Subclasses say how to launch it (:meth:`_launch`) and what its log says when a port
    was taken (:attr:`port_in_use`); this class starts it, waits until it answers a
    metadata request, retries on another port when the one probed was taken meanwhile,
    and stops it by PID (SIGTERM, then SIGKILL).

    Parameters
    ----------
    data_dir
        Where the broker keeps its data and its log (``broker.log``).
    start_timeout_s
        How long to wait for it to answer a Kafka metadata request.
    """

    #: What the broker's log says when its port was taken.
    port_in_use = _PORT_IN_USE
    #: How long :meth:`stop` waits after SIGTERM before SIGKILL.
    stop_timeout_s = 10.0

    def __init__(self, data_dir: Path, *, start_timeout_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.start_timeout_s = start_timeout_s
        self.log_path = data_dir / "broker.log"
        self.bootstrap = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def describe(self) -> str:
        """One line naming the broker."""
        return type(self).__name__

    def _prepare(self) -> None:
        """Check what the broker needs before the first launch (raise BrokerError)."""

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        """Start the broker on ``port``, its output going to :attr:`log_path`."""
        raise NotImplementedError

    def _spawn(
        self, command: list[str], parent_death: int = signal.SIGTERM
    ) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(parent_death),
            )

    def start(self) -> str:
        """Start the broker and return its ``host:port`` once it serves Kafka requests."""
        self._prepare()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout_s
        failure = ""
        # Another process can take the free port between probing and binding it; the
        # broker then exits saying so, and a new port is tried.
        for _attempt in range(3):
            port = free_loopback_port()
            self.bootstrap = f"127.0.0.1:{port}"
            self._process = self._launch(port)
            failure = self._wait_ready(port, deadline)
            if not failure:
                return self.bootstrap
            self.stop()
            if self.port_in_use not in self.log() or time.monotonic() >= deadline:
                break
        raise BrokerError(
            f"{self.describe()} did not come up on {self.bootstrap}: {failure}\n"
            f"log ({self.log_path}):\n{self.log_tail()}"
        )

    def _wait_ready(self, port: int, deadline: float) -> str:
        assert self._process is not None
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                return f"the broker exited with status {code}"
            if _accepts_tcp(port):
                remaining = max(deadline - time.monotonic(), 0.1)
                last_error = _answers_metadata(self.bootstrap, min(remaining, 5.0))
                if last_error is None:
                    return ""
            time.sleep(0.1)
        detail = f"; last metadata error: {last_error!r}" if last_error else ""
        return f"not ready after {self.start_timeout_s:.0f} s{detail}"

    def log(self) -> str:
        """The broker's log so far."""
        try:
            return self.log_path.read_text(errors="replace") or "<empty>"
        except OSError as error:
            return f"<could not read {self.log_path}: {error}>"

    def log_tail(self, lines: int = 200) -> str:
        """The last ``lines`` lines of the broker's log."""
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the broker by PID (SIGKILL after :attr:`stop_timeout_s`)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalKafkaBroker(BrokerProcess):
    """``noida-db start --only kafka`` on a free loopback port (see :class:`BrokerProcess`)."""

    def describe(self) -> str:
        return "the local Kafka-protocol broker (noida-db)"

    def _prepare(self) -> None:
        self._binary = noida_db_binary()

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        return self._spawn(
            [
                str(self._binary),
                "start",
                "--only",
                "kafka",
                "--kafka-port",
                str(port),
                "--data-dir",
                str(self.data_dir),
            ]
        )

    def log(self) -> str:
        """The broker's log so far, without the loader's glibc warning."""
        lines = [line for line in super().log().splitlines() if not _GLIBC_WARNING.search(line)]
        return "\n".join(lines) or "<empty>"
