"""The streaming half of ``advmon demo``: a broker, a worker, live traffic and decisions.

It starts the local Kafka-protocol broker, an ``advmon worker`` process monitoring the
demo model under the ``enforce`` policy, and a traffic generator: benign digits from
twenty users, then a burst of PGD adversarial digits from one attacking source mixed
into the benign stream, the queries of a second attacker probing the model with ART's
HopSkipJump (a black-box query attack), and a few malformed messages. A live panel shows
decisions by action, dead letters and quarantined sources as they arrive; a summary
follows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import create_engine

from monitor.demo.run import MALFORMED_LINES, DemoArtifacts, demo_event
from monitor.errors import DemoError
from monitor.incidents.storage.incidents import IncidentStore
from monitor.incidents.storage.models import Incident, IncidentKind
from monitor.incidents.storage.schema import upgrade
from monitor.kafka.local_broker import LocalKafkaBroker, free_loopback_port
from monitor.worker.decisions import QUERY_ATTACK_NAME, SOURCE_LIMIT_NAME
from schemas import Action, DeadLetter, Decision, Scope

__all__ = ["run_streaming_demo"]

ATTACKER = "attacker-7"
PROBER = "prober-3"
USERS = [f"user-{i}" for i in range(1, 21)]
QUARANTINE_LIMIT = 10
WORKER_START_TIMEOUT_S = 60.0
DECISIONS_TIMEOUT_S = 60.0
INCIDENTS_TIMEOUT_S = 20.0
SOURCE_DECISIONS_GRACE_S = 10.0
EVENTS_PER_SECOND = 250.0


@dataclass
class _Tally:
    sent: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    flagged_by_kind: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    quarantines: dict[tuple[str, str], Decision] = field(default_factory=dict)
    """Source decisions by source and the detector that decided."""
    request_decisions: int = 0

    def panel(self, started: float) -> Group:
        sent = Table(title="traffic sent", show_edge=False)
        sent.add_column("kind")
        sent.add_column("events", justify="right")
        for kind, count in sorted(self.sent.items()):
            sent.add_row(kind, str(count))
        decided = Table(title="decisions published by advmon", show_edge=False)
        decided.add_column("action")
        decided.add_column("events", justify="right")
        for action in ("allow", "flag", "quarantine"):
            decided.add_row(action, str(self.actions[action]))
        dead = ", ".join(f"{reason} {n}" for reason, n in sorted(self.dead_letters.items()))
        quarantined = ", ".join(
            f"[bold red]{source}[/] ({detector}) until {d.expires_at:%H:%M:%S}"
            if d.expires_at
            else source
            for (source, detector), d in self.quarantines.items()
        )
        return Group(
            f"[dim]{time.monotonic() - started:5.1f} s[/]",
            sent,
            decided,
            f"dead-lettered: {dead or 'none yet'}",
            f"sources quarantined: {quarantined or 'none yet'}",
        )


def _write_config(path: Path, detector: Path, topic: str) -> None:
    path.write_text(
        "# Written by advmon demo.\n"
        f"quarantine: {{limit: {QUARANTINE_LIMIT}, window_seconds: 60, ttl_seconds: 600}}\n"
        "batching: {max_events: 64, max_wait_ms: 20}\n"
        "models:\n"
        f"  - id: digits\n    detector: {detector}\n    topics: [{topic}]\n"
        "    policy: enforce\n"
    )


def _start_worker(
    config: Path, bootstrap: str, web_port: int, log: Path, database_url: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ADVMON_KAFKA__BOOTSTRAP": bootstrap,
        "ADVMON_WORKER__APP_ID": "advmon-demo",
        "ADVMON_WORKER__DATA_DIR": str(log.parent / "worker-data"),
        "ADVMON_DATABASE__URL": database_url,
    }
    command = [
        sys.executable,
        "-m",
        "monitor",
        "worker",
        "--config",
        str(config),
        "--web-port",
        str(web_port),
        "-l",
        "warn",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def _wait_healthy(worker: subprocess.Popen[bytes], web_port: int, log: Path) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    url = f"http://127.0.0.1:{web_port}/healthz"
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise DemoError(f"the worker exited with status {worker.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise DemoError(
        f"the worker was not consuming after {WORKER_START_TIMEOUT_S:.0f} s:\n{_tail(log)}"
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _traffic(artifacts: DemoArtifacts) -> list[tuple[str, bytes]]:
    """(kind, message) pairs: benign warm-up, then the attacks mixed into benign traffic."""
    clean = artifacts.data.test_x
    messages: list[tuple[str, bytes]] = []
    for i in range(300):
        messages.append(
            (
                "benign",
                demo_event(
                    f"benign-{i}", clean[i], as_tensor=i % 2 == 0, source=USERS[i % len(USERS)]
                ),
            )
        )
    attack = artifacts.adversarial[:120]
    for i, image in enumerate(attack):
        messages.append(
            ("adversarial", demo_event(f"attack-{i}", image, as_tensor=True, source=ATTACKER))
        )
        j = 300 + i
        messages.append(
            (
                "benign",
                demo_event(f"benign-{j}", clean[j], as_tensor=False, source=USERS[j % len(USERS)]),
            )
        )
        if i < len(artifacts.probe_queries):
            messages.append(
                (
                    "probing",
                    demo_event(
                        f"probe-{i}",
                        artifacts.probe_queries[i],
                        as_tensor=True,
                        source=PROBER,
                        request_id=f"probe-request-{i}",
                    ),
                )
            )
        if i % 12 == 0:
            messages.append(("malformed", MALFORMED_LINES[(i // 12) % len(MALFORMED_LINES)]))
    return messages


async def _stream(bootstrap: str, topic: str, artifacts: DemoArtifacts, console: Console) -> _Tally:
    tally = _Tally()
    traffic = _traffic(artifacts)
    kinds = {orjson.loads(m)["event_id"]: k for k, m in traffic if k != "malformed"}
    expected = len(kinds)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        "advmon-decisions",
        "advmon-dead-letter",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
    )
    await producer.start()
    await consumer.start()
    started = time.monotonic()
    try:

        async def produce() -> None:
            for i, (kind, message) in enumerate(traffic):
                await producer.send(topic, message)
                tally.sent[kind] += 1
                await asyncio.sleep(max(0.0, started + i / EVENTS_PER_SECOND - time.monotonic()))
            await producer.flush()

        async def consume() -> None:
            # Source decisions come from stages of their own and may follow the last
            # request decision; they get a few seconds more.
            settled: float | None = None
            while tally.request_decisions < expected or (
                not {(ATTACKER, SOURCE_LIMIT_NAME), (PROBER, QUERY_ATTACK_NAME)}
                <= tally.quarantines.keys()
                and time.monotonic() < (settled or 0.0) + SOURCE_DECISIONS_GRACE_S
            ):
                if settled is None and tally.request_decisions >= expected:
                    settled = time.monotonic()
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                for records in batches.values():
                    for record in records:
                        _count(record.topic, record.value or b"", tally, kinds)

        with Live(tally.panel(started), console=console, refresh_per_second=4) as live:
            producing = asyncio.create_task(produce())
            consuming = asyncio.create_task(consume())
            deadline = started + len(traffic) / EVENTS_PER_SECOND + DECISIONS_TIMEOUT_S
            while not consuming.done() and time.monotonic() < deadline:
                live.update(tally.panel(started))
                await asyncio.sleep(0.25)
            live.update(tally.panel(started))
            await producing
            if not consuming.done():
                consuming.cancel()
                raise DemoError(
                    f"only {tally.request_decisions} of {expected} decisions arrived within "
                    f"{DECISIONS_TIMEOUT_S:.0f} s of the last event"
                )
    finally:
        await consumer.stop()
        await producer.stop()
    return tally


def _count(topic: str, value: bytes, tally: _Tally, kinds: dict[str, str]) -> None:
    if topic == "advmon-dead-letter":
        tally.dead_letters[DeadLetter.model_validate_json(value).reason] += 1
        return
    decision = Decision.model_validate_json(value)
    if decision.scope is Scope.SOURCE:
        if decision.source is not None:
            tally.quarantines[decision.source, decision.reasons[0].detector] = decision
        return
    tally.request_decisions += 1
    tally.actions[decision.action.value] += 1
    if decision.action is not Action.ALLOW:
        tally.flagged_by_kind[kinds.get(decision.event_id, "?")] += 1


def run_streaming_demo(out_dir: Path, artifacts: DemoArtifacts, console: Console) -> None:
    """Run the broker, a worker and the traffic; print the live panel and a summary."""
    console.rule("advmon demo: the stream processor on live traffic")
    topic = "inference-events"
    config_path = out_dir / "advmon.yaml"
    _write_config(config_path, artifacts.detector_path.resolve(), topic)
    worker_log = out_dir / "worker.log"
    worker_log.write_bytes(b"")
    # Every run starts from scratch: a fresh broker, worker state and incident database.
    for state in (out_dir / "kafka", out_dir / "worker-data"):
        shutil.rmtree(state, ignore_errors=True)
    database = out_dir / "advmon.db"
    database.unlink(missing_ok=True)
    database_url = f"sqlite:///{database.resolve()}"
    store = IncidentStore(create_engine(database_url))
    upgrade(store.engine)
    with LocalKafkaBroker(out_dir / "kafka") as bootstrap:
        console.print(f"5. started a local Kafka-protocol broker on {bootstrap}")
        web_port = free_loopback_port()
        worker = _start_worker(config_path, bootstrap, web_port, worker_log, database_url)
        try:
            _wait_healthy(worker, web_port, worker_log)
            console.print(
                f"6. advmon worker --config {config_path} is consuming {topic!r} "
                f"(metrics on http://127.0.0.1:{web_port}/metrics, log {worker_log})"
            )
            console.print(
                f"7. streaming {len(USERS)} users' benign digits, then {ATTACKER!r} sending PGD "
                f"digits among them, {PROBER!r} sending HopSkipJump's queries, and malformed "
                f"messages; quarantine after {QUARANTINE_LIMIT} flagged events per minute, or "
                "a query attack"
            )
            tally = asyncio.run(_stream(bootstrap, topic, artifacts, console))
            flagged = sum(tally.flagged_by_kind.values())
            incidents = _wait_for_incidents(store, flagged)
        finally:
            _stop(worker)
    _summary(tally, console)
    _incident_summary(incidents, database_url, console)


def _wait_for_incidents(store: IncidentStore, flagged: int) -> list[Incident]:
    """The incidents once the worker stored every flagged event, the quarantine and the
    query attack."""
    deadline = time.monotonic() + INCIDENTS_TIMEOUT_S
    while True:
        incidents, _ = store.find()
        kinds = {incident.kind for incident in incidents}
        stored = sum(i.detection_count for i in incidents if i.kind is IncidentKind.ADVERSARIAL)
        if {IncidentKind.QUARANTINE, IncidentKind.QUERY_ATTACK} <= kinds and stored >= flagged:
            return incidents
        if time.monotonic() > deadline:
            return incidents
        time.sleep(0.5)


def _incident_summary(incidents: list[Incident], database_url: str, console: Console) -> None:
    table = Table(title="incidents for on-call (stored in SQLite for the demo)")
    for column in ("id", "kind", "model", "source", "status", "detections", "peak score"):
        table.add_column(column)
    for incident in sorted(incidents, key=lambda i: i.id):
        table.add_row(
            str(incident.id),
            incident.kind.value,
            incident.model_id,
            incident.source or "",
            incident.status.value,
            str(incident.detection_count),
            f"{incident.peak_score:.3f}",
        )
    console.print(table)
    console.print(
        "Look into them as on-call would (in a shell with the virtualenv active: "
        "source .venv/bin/activate):\n"
        f"  export ADVMON_DATABASE__URL={database_url}\n"
        "  advmon incidents list\n"
        "  advmon incidents show 1\n"
        "  advmon incidents export --format markdown"
    )


def _summary(tally: _Tally, console: Console) -> None:
    console.print()
    table = Table(title="what advmon decided")
    table.add_column("traffic")
    table.add_column("sent", justify="right")
    table.add_column("flagged or quarantined", justify="right")
    for kind in ("benign", "adversarial", "probing"):
        sent = tally.sent[kind]
        hit = tally.flagged_by_kind[kind]
        table.add_row(kind, str(sent), f"{hit} ({hit / sent:.1%})" if sent else "0")
    table.add_row(
        "malformed",
        str(tally.sent["malformed"]),
        f"{sum(tally.dead_letters.values())} dead-lettered",
    )
    console.print(table)
    for (source, _), decision in tally.quarantines.items():
        reason = decision.reasons[0]
        why = (
            f"{reason.score:.0f} of its queries linked by near-matches, threshold "
            f"{reason.threshold:.0f}: a query attack"
            if reason.detector == "query_attack"
            else f"{reason.score:.0f} flagged events in the window"
        )
        console.print(
            f"source [bold]{source}[/]: {decision.action.value} until "
            f"{decision.expires_at:%Y-%m-%d %H:%M:%S %Z} ({why})"
        )
    decided = {source for source, _ in tally.quarantines}
    for source in (ATTACKER, PROBER):
        if source not in decided:
            console.print(f"[yellow]{source} was not quarantined[/]")
    console.print(
        "Decisions are on the advmon-decisions topic (keyed by request id, or source for "
        "quarantines); bad messages on advmon-dead-letter with the reason and original bytes."
    )
