"""Alertmanager down while an incident opens: the alert is delivered once it is back.

A worker posts alerts to an Alertmanager on a fixed loopback port, which routes them to
a webhook receiver standing in for on-call tooling. Alertmanager is stopped, detections
open an incident, and for 20 s (:data:`DOWN_S`) after that the worker cannot post; then
Alertmanager starts again on the same port and the incident's alert must reach the
receiver.

Figures: ``alertmanager_down_s`` runs from its stop to its start again;
``delivered_after_restart_s`` from that start until the receiver has the incident's
alert; ``alert_marked_sent_while_down`` is the incident's ``alert_sent_at`` just before
the restart.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from monitor.incidents.storage.models import Incident
from tests.faults.scenario import Rig
from tests.faults.services import RestartableAlertmanager
from tests.integration.alertmanager import WebhookReceiver, installed_alertmanager
from tests.integration.kafka_io import produce, unique_name
from tests.integration.test_incidents import detection, start_incident_worker, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: How long Alertmanager stays down after the incident is in the database.
DOWN_S = 20.0
RESEND_S = 2.0
WAIT_S = 90.0


def _incident(engine: Engine, model: str) -> tuple[int, datetime | None] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(Incident.id, Incident.alert_sent_at).where(Incident.model_id == model)
        ).first()
    return None if row is None else (row.id, row.alert_sent_at)


async def test_an_incident_opened_while_alertmanager_is_down_is_alerted_once_it_is_back(
    rig: Rig,
) -> None:
    binary = installed_alertmanager()
    receiver = WebhookReceiver()
    with receiver.serving():
        alertmanager = RestartableAlertmanager(binary, rig.folder / "alertmanager", receiver)
        alertmanager.start()
        try:
            topics, _ = await start_incident_worker(
                rig.launcher,
                rig.bootstrap,
                rig.detector,
                rig.folder,
                rig.database_url,
                alertmanager_url=alertmanager.url,
            )
            worker = rig.launcher.workers[-1]
            alertmanager.stop()
            stopped = time.monotonic()

            model = unique_name("am-outage")
            now = datetime.now(UTC)
            await produce(
                rig.bootstrap,
                topics.detections,
                [detection(f"{model}-{i}", model, now + timedelta(seconds=i)) for i in range(3)],
            )
            await wait_until(lambda: _incident(rig.database, model) is not None, "the incident")
            opened = time.monotonic()
            await asyncio.sleep(DOWN_S)
            worker.assert_running()
            found = _incident(rig.database, model)
            assert found is not None
            incident_id, sent_while_down = found
            notified_while_down = [
                a for a in receiver.alerts() if a["labels"].get("incident_id") == str(incident_id)
            ]

            alertmanager.start()
            restarted = time.monotonic()
            down_s = round(restarted - stopped, 1)

            def delivered() -> bool:
                return any(
                    a["labels"].get("incident_id") == str(incident_id) for a in receiver.alerts()
                )

            try:
                await wait_until(delivered, "the alert at the webhook receiver", timeout_s=WAIT_S)
            except AssertionError:
                delivered_s = None
            else:
                delivered_s = round(time.monotonic() - restarted, 1)
            worker.assert_running()
        finally:
            alertmanager.stop()
    rig.figures.record(
        "alertmanager-outage",
        delivered_s is not None and not notified_while_down and sent_while_down is None,
        alertmanager_down_s=down_s,
        incident_open_before_restart_s=round(restarted - opened, 1),
        resend_seconds=RESEND_S,
        alert_marked_sent_while_down=sent_while_down is not None,
        notified_while_down=len(notified_while_down),
        delivered_after_restart_s=delivered_s,
    )
    assert sent_while_down is None, "the incident was marked alerted while Alertmanager was down"
    assert delivered_s is not None, (
        f"incident {incident_id}'s alert did not reach the webhook receiver within "
        f"{WAIT_S:.0f} s of Alertmanager's restart; Alertmanager log:\n"
        + alertmanager.log_path.read_text(errors="replace")[-3000:]
    )
