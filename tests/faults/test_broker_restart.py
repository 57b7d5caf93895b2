"""A broker restart mid-stream: the worker recovers and no decision is lost.

The test runs an Apache Kafka node of its own (the session's broker is shared by every
other test) and streams 20,000 events to a 4-partition inference topic at 500 events/s.
Once a quarter of them are decided it stops the node (SIGTERM), leaves it down for
:data:`DOWN_S` (5 s), and starts it again on the same ports and data directory; the
test's producer holds what it sends meanwhile and delivers it once the node is back, as
a serving producer would. Acting as a supervisor would, the test starts the worker again
whenever it exits, and records each exit; the test fails on any exit, and on any event
without a decision.

Figures: ``broker_stop_to_ready_s`` runs from the SIGTERM until the node answers a
metadata request again (it includes those 5 s); the worker's times count from that
moment: ``worker_consuming_after_broker_ready_s`` until its ``/healthz`` answers 200 with
every partition, ``first_new_decision_after_broker_ready_s`` until one more event is
decided.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.figures import FigureLog, Stopwatch
from tests.faults.scenario import configure_scenario
from tests.faults.services import RestartableKafkaBroker
from tests.faults.stream import DecisionTally, EventStream, Missing, demo_traffic
from tests.integration.traffic import DemoDetector
from tests.integration.workers import WorkerLauncher

pytestmark = [pytest.mark.integration, pytest.mark.faults]

EVENTS = 20_000
RATE = 500.0
PARTITIONS = 4
RESTART_AT = 0.25
DOWN_S = 5.0
WAIT_S = 180.0
#: Supervisor restarts of the worker beyond which the test gives up.
MOST_RESTARTS = 5


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RestartableKafkaBroker]:
    broker = RestartableKafkaBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_a_broker_restart_mid_stream_loses_no_decision(
    own_broker: RestartableKafkaBroker,
    demo_detector: DemoDetector,
    figures: FigureLog,
    tmp_path: Path,
) -> None:
    bootstrap = own_broker.bootstrap
    launcher = WorkerLauncher(bootstrap, tmp_path / "workers")
    scenario = await configure_scenario(
        bootstrap, demo_detector, tmp_path, "broker-restart", PARTITIONS
    )
    model, inference, topics = scenario.model, scenario.inference, scenario.topics
    config, app_id = scenario.config, scenario.app_id
    traffic = demo_traffic(demo_detector, model, EVENTS)
    stream = EventStream(bootstrap, inference, PARTITIONS, RATE)
    tally = DecisionTally(bootstrap, topics.decisions)
    workers = [launcher.start("broker-restart", config, app_id=app_id)]
    exits: list[int | None] = []

    async def supervise() -> None:
        """Start the worker again whenever it exits, as Kubernetes would."""
        while True:
            process = workers[-1].process
            assert process is not None
            if process.poll() is not None:
                exits.append(process.returncode)
                if len(exits) > MOST_RESTARTS:
                    return
                name = f"broker-restart-{len(exits)}"
                workers.append(launcher.start(name, config, app_id=app_id))
            await asyncio.sleep(0.5)

    async def consuming(timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            page = await workers[-1].healthz()
            if page is not None and page.status == 200 and page.assigned(inference) == wanted:
                return True
            await asyncio.sleep(0.2)
        return False

    wanted = set(range(PARTITIONS))
    supervisor = asyncio.create_task(supervise())
    streaming: asyncio.Task[None] | None = None
    try:
        await workers[-1].wait_consuming(inference, wanted, timeout_s=WAIT_S)
        tally.start()
        clock = Stopwatch()
        streaming = asyncio.create_task(stream.send(traffic.values))
        assert await tally.wait_for(int(EVENTS * RESTART_AT), timeout_s=WAIT_S)
        decided_at_stop = tally.decided
        sent_at_stop = len(stream.placed)
        stopped_at = clock.seconds()
        broker_back_s = round(await asyncio.to_thread(own_broker.restart, DOWN_S), 1)
        back = time.monotonic()
        decided_at_back = tally.decided
        recovered = await consuming(WAIT_S)
        consuming_s = round(time.monotonic() - back, 1) if recovered else None
        progressed = await tally.wait_for(decided_at_back + 1, timeout_s=WAIT_S)
        first_decision_s = round(time.monotonic() - back, 1) if progressed else None
        await streaming
        all_decided = await tally.wait_for(EVENTS, timeout_s=WAIT_S)
        await tally.caught_up()
        missing = await Missing.find(
            bootstrap, app_id, inference, traffic.event_ids, stream.placed, tally.counts
        )
    finally:
        if streaming is not None:
            streaming.cancel()
        supervisor.cancel()
        await tally.stop()
        launcher.stop_all()
    figures.record(
        "broker-restart",
        all_decided and not exits,
        events=EVENTS,
        rate_events_per_s=RATE,
        sent_at_broker_stop=sent_at_stop,
        decided_at_broker_stop=decided_at_stop,
        broker_stopped_at_s=stopped_at,
        broker_down_s=DOWN_S,
        broker_stop_to_ready_s=broker_back_s,
        decided_at_broker_ready=decided_at_back,
        worker_exits=exits,
        worker_restarted_by_test=len(exits),
        worker_consuming_after_broker_ready_s=consuming_s,
        first_new_decision_after_broker_ready_s=first_decision_s,
        lost_decisions=len(missing.lost),
        late_decisions=len(missing.late),
        duplicate_decisions=tally.duplicates(),
        total_s=clock.seconds(),
    )
    assert all_decided, f"{EVENTS - tally.decided} events have no decision: {missing.describe()}"
    assert exits == [], f"the worker exited (status {exits}) and the test had to restart it"
