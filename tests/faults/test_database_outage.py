"""PostgreSQL unreachable for 60 s while detections flow: none is lost once it is back.

One worker scores a steady stream of events and stores its detections through a loopback
proxy to PostgreSQL (:class:`tests.integration.test_incidents.TcpGate`). Once the stream
is under way the proxy closes, cutting every open connection and refusing new ones, for
60 s; the stream (100 events/s, 9,000 events) goes on; then it opens again. Every event
the worker emitted a detection for must have one row in the database.

Figures: ``detection_rows_*`` are read from PostgreSQL directly (not through the proxy);
``events_decided_during_outage`` counts events that got their first decision while the
proxy was closed; ``*_after_reopen_s`` count from the moment it opened again.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import Engine

from tests.faults.figures import Stopwatch
from tests.faults.group import emitted_detections, stored_detections, wait_stored
from tests.faults.scenario import Rig, configure_scenario
from tests.faults.stream import DecisionTally, EventStream, Missing, demo_traffic
from tests.integration.test_incidents import TcpGate

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_S = 60.0
RATE = 100.0
#: Events before, during and after the outage.
EVENTS = int(RATE * (OUTAGE_S + 30))
PARTITIONS = 2
WAIT_S = 120.0


async def _first_new_row(
    engine: Engine, model: str, rows: int, *, timeout_s: float
) -> float | None:
    """Seconds until the model has more than ``rows`` stored detections; None on timeout."""
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        if (await asyncio.to_thread(stored_detections, engine, model)).rows > rows:
            return round(time.monotonic() - started, 1)
        await asyncio.sleep(0.2)
    return None


async def test_no_detection_is_lost_while_postgresql_is_unreachable_for_60_s(
    rig: Rig,
) -> None:
    gate = TcpGate()
    await gate.open()
    scenario = await configure_scenario(
        rig.bootstrap, rig.detector, rig.folder, "db-outage", PARTITIONS
    )
    model, inference, topics = scenario.model, scenario.inference, scenario.topics
    worker = rig.launcher.start(
        "db-outage",
        scenario.config,
        app_id=scenario.app_id,
        database__url=gate.url_for(rig.database_url),
        incidents__gap_seconds="3600",
        incidents__quiet_period_seconds="86400",
    )
    await worker.wait_consuming(inference, set(range(PARTITIONS)), timeout_s=WAIT_S)

    traffic = demo_traffic(rig.detector, model, EVENTS)
    stream = EventStream(rig.bootstrap, inference, PARTITIONS, RATE)
    tally = DecisionTally(rig.bootstrap, topics.decisions)
    tally.start()
    clock = Stopwatch()
    streaming = asyncio.create_task(stream.send(traffic.values))
    try:
        # A quarter of the stream's length with the database up, then the outage.
        await asyncio.sleep(EVENTS / RATE / 6)
        before = await asyncio.to_thread(stored_detections, rig.database, model)
        await gate.close()
        closed = time.monotonic()
        decided_at_close = tally.decided
        await asyncio.sleep(OUTAGE_S)
        during = await asyncio.to_thread(stored_detections, rig.database, model)
        decided_during = tally.decided - decided_at_close
        worker.assert_running()
        await gate.open(gate.port)
        reopened = time.monotonic()
        outage_s = round(reopened - closed, 1)
        first_row_s = await _first_new_row(rig.database, model, during.rows, timeout_s=WAIT_S)
        await streaming
        stream_ended_s = round(time.monotonic() - reopened, 1)
        all_decided = await tally.wait_for(EVENTS, timeout_s=WAIT_S)
        await tally.caught_up()
        records, emitted = await emitted_detections(rig.bootstrap, topics.detections)
        stored = await wait_stored(rig.database, model, emitted, timeout_s=WAIT_S)
        caught_up_s = round(time.monotonic() - reopened, 1)
    finally:
        streaming.cancel()
        await tally.stop()
        await gate.close()
    missing = await Missing.find(
        rig.bootstrap, scenario.app_id, inference, traffic.event_ids, stream.placed, tally.counts
    )
    worker.assert_running()
    lost = sorted(emitted - stored.event_ids)
    passed = all_decided and not lost and stored.duplicate_rows == 0
    rig.figures.record(
        "database-outage",
        passed,
        events=EVENTS,
        rate_events_per_s=RATE,
        outage_s=outage_s,
        detection_rows_before_outage=before.rows,
        detection_rows_at_end_of_outage=during.rows,
        events_decided_during_outage=decided_during,
        detections_emitted=records,
        detection_events=len(emitted),
        detection_rows=stored.rows,
        lost_detections=len(lost),
        duplicate_detection_rows=stored.duplicate_rows,
        lost_decisions=len(missing.lost),
        late_decisions=len(missing.late),
        first_row_stored_after_reopen_s=first_row_s,
        stream_ended_after_reopen_s=stream_ended_s,
        all_stored_after_reopen_s=caught_up_s,
        total_s=clock.seconds(),
    )
    assert all_decided, f"{EVENTS - tally.decided} events have no decision: {missing.describe()}"
    assert not lost, f"{len(lost)} detections never stored after the outage: {lost[:20]}"
    assert stored.duplicate_rows == 0
