"""Drift detection on real servers: the Kafka broker, PostgreSQL and Alertmanager.

Digits from the held-out set stream through a worker; from event ``SHIFT_AT`` on, every
image is 0.25 brighter (clipped to [0, 1]), as when a camera's exposure changes upstream.
The worker's drift stage must open a drift incident with one alert, within the
documented delay after the shift, and nothing on the stationary prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from monitor.incidents.storage.models import DetectionRow, Incident, IncidentKind
from monitor.incidents.storage.schema import upgrade
from schemas import Detection, DetectionKind
from tests.integration.alertmanager import alertmanager_binary, running_alertmanager
from tests.integration.kafka_io import (
    OutputTopics,
    Record,
    create_topics,
    produce,
    read_topic,
    unique_name,
)
from tests.integration.test_incidents import wait_until
from tests.integration.traffic import DemoDetector, inference_event
from tests.integration.workers import ModelEntry, WorkerLauncher, write_worker_config

pytestmark = pytest.mark.integration

WAIT_S = 90.0
SHIFT_AT = 1200
N_EVENTS = 1700
MAX_DELAY = 100
"""Events after the shift by which the first drift detection is due (docs/drift.md)."""


def shifting_stream(detector: DemoDetector, model_id: str, seed: int = 0) -> list[bytes]:
    """``N_EVENTS`` events: random held-out digits, brightened from ``SHIFT_AT`` on."""
    rng = np.random.default_rng(seed)
    pool = detector.clean.images
    images = pool[rng.integers(0, len(pool), N_EVENTS)].copy()
    images[SHIFT_AT:] = np.clip(images[SHIFT_AT:] + 0.25, 0.0, 1.0)
    return [
        inference_event(f"{model_id}-e{i}", image, model_id=model_id, as_tensor=True)
        for i, image in enumerate(images)
    ]


@pytest.fixture(scope="module")
def database(pg_url: str) -> Engine:
    engine = create_engine(pg_url)
    upgrade(engine)
    return engine


def drift_rows(engine: Engine, model: str) -> list[DetectionRow]:
    with Session(engine, expire_on_commit=False) as session:
        return list(
            session.scalars(
                select(DetectionRow)
                .where(DetectionRow.model_id == model, DetectionRow.kind == IncidentKind.DRIFT)
                .order_by(DetectionRow.offset)
            )
        )


def drift_incidents(engine: Engine, model: str) -> list[tuple[int, int]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(Incident.id, Incident.detection_count).where(
                Incident.model_id == model, Incident.kind == IncidentKind.DRIFT
            )
        ).all()
    return [(row.id, row.detection_count) for row in rows]


async def test_brightened_inputs_open_one_drift_incident_and_one_alert(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    database: Engine,
    pg_url: str,
    tmp_path: Path,
) -> None:
    binary = alertmanager_binary()
    if binary is None:
        pytest.fail("Alertmanager is not installed (.ci/run installs it)", pytrace=False)
    model = unique_name("drift-model")
    topics = await OutputTopics.create(kafka_bootstrap, "drift")
    inference = unique_name("drift-inference")
    await create_topics(kafka_bootstrap, {inference: 1})
    config = write_worker_config(
        tmp_path / "advmon.yaml",
        detector=demo_detector.path,
        models=[ModelEntry(model, [inference])],
        topics=topics,
    )
    with running_alertmanager(binary, tmp_path / "alertmanager") as alertmanager:
        worker = worker_launcher.start(
            "drift",
            config,
            database__url=pg_url,
            alerting__alertmanager_urls=alertmanager.url,
            alerting__resend_seconds="2",
        )
        await worker.wait_consuming(inference, timeout_s=WAIT_S)
        await produce(kafka_bootstrap, inference, shifting_stream(demo_detector, model))

        await wait_until(lambda: bool(drift_incidents(database, model)), "a drift incident")
        metrics = await worker.wait_for_metrics(
            lambda m: m.value("advmon_drift_state_events", model=model) == N_EVENTS,
            timeout_s=WAIT_S,
        )
        assert metrics.value("advmon_drift_state_events", model=model) == N_EVENTS
        published = await read_topic(
            kafka_bootstrap,
            topics.detections,
            lambda records: len(records) >= 1,
            timeout_s=WAIT_S,
        )
        drifts = [Detection.model_validate_json(r.value) for r in published]
        drifts = [d for d in drifts if d.kind is DetectionKind.DRIFT]
        await wait_until(
            lambda: len(drift_rows(database, model)) == len(drifts), "every drift stored"
        )
        rows = drift_rows(database, model)
        offsets = [row.offset for row in rows]
        assert all(o is not None and o >= SHIFT_AT for o in offsets), offsets  # none before
        assert min(o for o in offsets if o is not None) - SHIFT_AT <= MAX_DELAY
        signals = {row.signal for row in rows}
        assert "input_mean" in signals
        assert all(row.detector == "adwin" for row in rows)
        first = rows[0]
        assert first.details is not None
        assert first.details["mean_recent"] > first.details["mean_before"]
        assert metrics.by_label("advmon_drift_detections_total", "model") == {
            model: float(len(rows))
        }

        # Every detection joins one incident, and that incident gets one alert.
        ((incident_id, count),) = drift_incidents(database, model)
        assert count == len(rows)

        def alerted() -> list[dict[str, str]]:
            return [
                a["labels"]
                for a in alertmanager.receiver.alerts()
                if a["labels"].get("incident_id") == str(incident_id)
            ]

        await wait_until(lambda: bool(alerted()), "the drift alert at the webhook")
        labels = alerted()[0]
        assert labels["alertname"] == "AdvmonDrift"
        assert labels["kind"] == "drift"
        assert labels["model"] == model
        held = [
            a
            for a in alertmanager.active_alerts()
            if a["labels"].get("incident_id") == str(incident_id)
        ]
        assert len(held) == 1


async def drift_detections(bootstrap: str, topic: str, at_least: int) -> list[Detection]:
    """The drift detections on ``topic`` (the adversarial ones are left out)."""

    def drifts(records: list[Record]) -> list[Detection]:
        found = [Detection.model_validate_json(r.value) for r in records]
        return [d for d in found if d.kind is DetectionKind.DRIFT]

    records = await read_topic(
        bootstrap, topic, lambda found: len(drifts(found)) >= at_least, timeout_s=WAIT_S
    )
    return drifts(records)


def identity(detection: Detection) -> tuple[object, ...]:
    return (detection.event_id, detection.signal, detection.offset)


@pytest.mark.parametrize(
    "handover",
    ["sigkill-and-restart", "another-worker-takes-over"],
)
async def test_a_worker_stopped_mid_stream_is_continued_from_its_checkpoint(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    demo_detector: DemoDetector,
    tmp_path: Path,
    handover: str,
) -> None:
    """After the stationary prefix the worker is SIGKILLed and restarted (static
    membership), or stopped and replaced by a new member of its group (a rebalance hands
    the partitions over); then the inputs shift. The drift detections equal those of a
    worker that ran the whole stream uninterrupted."""
    model = unique_name("drift-restart")
    inference = unique_name("drift-restart-inference")
    await create_topics(kafka_bootstrap, {inference: 1})
    stream = shifting_stream(demo_detector, model, seed=1)

    restarted_topics = await OutputTopics.create(kafka_bootstrap, "drift-restarted")
    config = write_worker_config(
        tmp_path / "restarted.yaml",
        detector=demo_detector.path,
        models=[ModelEntry(model, [inference])],
        topics=restarted_topics,
    )
    app_id = unique_name("drift-restarted")
    instance = f"{app_id}-0"
    # Static membership lets the SIGKILLed worker take its partitions back; the test
    # broker never evicts a dead member otherwise. A graceful stop leaves the group.
    if handover == "sigkill-and-restart":
        worker = worker_launcher.start(
            "drift-a", config, app_id=app_id, worker__instance_id=instance
        )
    else:
        worker = worker_launcher.start("drift-a", config, app_id=app_id)
    await worker.wait_consuming(inference, timeout_s=WAIT_S)
    await produce(kafka_bootstrap, inference, stream[:SHIFT_AT])
    await worker.wait_for_metrics(
        lambda m: m.value("advmon_drift_state_events", model=model) == SHIFT_AT,
        timeout_s=WAIT_S,
    )
    if handover == "sigkill-and-restart":
        worker.kill()
        revived = worker_launcher.start(
            "drift-a-restarted", config, app_id=app_id, worker__instance_id=instance
        )
    else:
        assert worker.stop() == 0
        revived = worker_launcher.start("drift-b", config, app_id=app_id)
    await revived.wait_consuming(inference, timeout_s=WAIT_S)
    await produce(kafka_bootstrap, inference, stream[SHIFT_AT:])
    metrics = await revived.wait_for_metrics(
        lambda m: m.value("advmon_drift_state_events", model=model) == N_EVENTS,
        timeout_s=WAIT_S,
    )
    # The detectors continued from the 1,200 events learned before the stop.
    assert metrics.value("advmon_drift_state_events", model=model) == N_EVENTS

    # A second worker group reads the whole stream without interruption.
    straight_topics = await OutputTopics.create(kafka_bootstrap, "drift-straight")
    straight_config = write_worker_config(
        tmp_path / "straight.yaml",
        detector=demo_detector.path,
        models=[ModelEntry(model, [inference])],
        topics=straight_topics,
    )
    straight = worker_launcher.start("drift-straight", straight_config)
    await straight.wait_consuming(inference, timeout_s=WAIT_S)
    await straight.wait_for_metrics(
        lambda m: m.value("advmon_drift_state_events", model=model) == N_EVENTS,
        timeout_s=WAIT_S,
    )
    expected = await drift_detections(kafka_bootstrap, straight_topics.detections, 1)
    assert expected
    assert all((d.offset or 0) >= SHIFT_AT for d in expected)
    got = await drift_detections(kafka_bootstrap, restarted_topics.detections, len(expected))
    assert sorted(map(identity, got)) == sorted(map(identity, expected))
    # The same statistics too, to float32 precision: ONNX Runtime's results for an event
    # differ in the last bits with the batch it is scored in, and batches are cut
    # differently around a restart.
    by_id = {d.event_id: d.details for d in expected}
    for detection in got:
        assert detection.details == pytest.approx(by_id[detection.event_id], rel=1e-5)
