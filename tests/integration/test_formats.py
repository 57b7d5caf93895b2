"""Serving stacks' own log formats on the real broker, scored end to end.

The monitored model is a scikit-learn MLP on the breast-cancer data, exported with
skl2onnx (``tests/integration/tabular.py``); clean rows and FGSM rows crafted against it
are logged the way each serving stack logs them:

- **oip-v2**: KServe's payload logger (kserve/kserve ``pkg/logger``): a request and a
  response CloudEvent per inference, in Kafka binary mode (``ce_*`` headers, the Open
  Inference Protocol v2 JSON body as value), the two halves on different partitions and
  in shuffled order; some requests have no response, some responses no request;
- **sagemaker**: SageMaker Data Capture records (``captureData.endpointInput`` /
  ``endpointOutput``, CSV, with ``eventMetadata``), one per message;
- **mapped**: an application's own JSON layout read through JSONPath.

Every decision must equal the detector's offline verdict on the same row.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas import DeadLetter, Decision, InferenceEvent
from tests.integration.kafka_io import OutputTopics, create_topics, read_topic, unique_name
from tests.integration.tabular import TabularModel, build_tabular_model
from tests.integration.workers import (
    ModelEntry,
    WorkerLauncher,
    WorkerProcess,
    write_worker_config,
)

pytestmark = pytest.mark.integration

WAIT_S = 90.0
MODEL = "cancer"


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> TabularModel:
    return build_tabular_model(tmp_path_factory.mktemp("tabular"))


Record = tuple[bytes, list[tuple[str, bytes]], int | None]


async def produce_records(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    """Send (value, headers, partition) records in order; wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        pending = [
            await producer.send(topic, value, partition=partition, headers=headers)
            for value, headers, partition in records
        ]
        for future in pending:
            await future
    finally:
        await producer.stop()


def kserve_headers(ce_id: str, kind: str) -> list[tuple[str, bytes]]:
    """The headers KServe's logger gives a CloudEvent in Kafka binary mode."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", b"http://localhost:9081/"),
        ("ce_type", f"org.kubeflow.serving.inference.{kind}".encode()),
        ("ce_time", b"2026-11-24T10:00:00.123456789Z"),
        ("content-type", b"application/json"),
        ("ce_inferenceservicename", b"cancer-mlp"),
        ("ce_namespace", b"default"),
        ("ce_component", b"predictor"),
    ]


def kserve_request(ce_id: str, rows: np.ndarray) -> bytes:
    return orjson.dumps(
        {
            "id": ce_id,
            "parameters": {"source": f"client-{ce_id[-1]}"},
            "inputs": [
                {
                    "name": "X",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.astype(np.float32).ravel().tolist(),
                }
            ],
        }
    )


def kserve_response(ce_id: str, rows: int) -> bytes:
    probabilities = np.tile([0.3, 0.7], (rows, 1))
    return orjson.dumps(
        {
            "model_name": "cancer-mlp",
            "model_version": "v3",
            "id": ce_id,
            "parameters": None,
            "outputs": [
                {
                    "name": "probabilities",
                    "shape": [rows, 2],
                    "datatype": "FP32",
                    "data": probabilities.ravel().tolist(),
                }
            ],
        }
    )


def decisions_by_event(records: Sequence[Any]) -> dict[str, Decision]:
    found: dict[str, Decision] = {}
    for record in records:
        decision = Decision.model_validate_json(record.value)
        found.setdefault(decision.event_id, decision)
    return found


async def decisions_matching(
    bootstrap: str, topics: OutputTopics, expected: dict[str, bool]
) -> dict[str, Decision]:
    """Wait for a decision on every expected event; check each verdict (flagged or not)."""
    decided = await read_topic(
        bootstrap,
        topics.decisions,
        lambda found: set(expected) <= set(decisions_by_event(found)),
        timeout_s=WAIT_S,
    )
    decisions = decisions_by_event(decided)
    assert set(expected) <= set(decisions), sorted(set(expected) - set(decisions))
    assert {e: decisions[e].action.value != "allow" for e in expected} == expected
    return decisions


async def the_dead_letter(bootstrap: str, topics: OutputTopics) -> DeadLetter:
    """The one dead letter of the test."""
    records = await read_topic(bootstrap, topics.dead_letter, lambda found: bool(found))
    (letter,) = [DeadLetter.model_validate_json(r.value) for r in records]
    return letter


async def start_worker(
    launcher: WorkerLauncher,
    bootstrap: str,
    tabular: TabularModel,
    folder: Path,
    topic: str,
    **entry: Any,
) -> tuple[OutputTopics, WorkerProcess]:
    topics = await OutputTopics.create(bootstrap, "formats")
    config = write_worker_config(
        folder / f"{unique_name('formats')}.yaml",
        detector=tabular.detector_path,
        models=[ModelEntry(MODEL, [topic], extra=entry)],
        topics=topics,
    )
    worker = launcher.start("formats", config)
    await worker.wait_consuming(topic, timeout_s=WAIT_S)
    return topics, worker


def rows_and_expected(tabular: TabularModel) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(kind, row, offline verdict) for 24 clean and 16 adversarial rows."""
    for kind, rows in (("clean", tabular.clean[:24]), ("fgsm", tabular.adversarial[:16])):
        _, flagged = tabular.offline(rows)
        for row, verdict in zip(rows, flagged.tolist(), strict=True):
            yield kind, row, bool(verdict)


async def test_kserve_request_and_response_logs_are_joined_and_scored(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    tabular: TabularModel,
    tmp_path: Path,
) -> None:
    topic = unique_name("kserve-logs")
    await create_topics(kafka_bootstrap, {topic: 2})
    topics, worker = await start_worker(
        worker_launcher,
        kafka_bootstrap,
        tabular,
        tmp_path,
        topic,
        format="oip-v2",
        oip_v2={"join_timeout_seconds": 3, "source_parameters": ["source", "user"]},
    )
    cases = list(rows_and_expected(tabular))
    expected: dict[str, bool] = {}
    records: list[Record] = []
    for i, (_, row, flagged) in enumerate(cases):
        ce_id = f"inf-{i}"
        expected[ce_id] = flagged
        request_partition = i % 2
        records.append((kserve_request(ce_id, row[None]), kserve_headers(ce_id, "request"),
                        request_partition))  # fmt: skip
        records.append((kserve_response(ce_id, 1), kserve_headers(ce_id, "response"),
                        1 - request_partition))  # fmt: skip
    # A request of two rows, whose rows become two events.
    pair = tabular.clean[30:32]
    _, pair_flags = tabular.offline(pair)
    records.append((kserve_request("inf-batch", pair), kserve_headers("inf-batch", "request"), 0))
    records.append((kserve_response("inf-batch", 2), kserve_headers("inf-batch", "response"), 1))
    expected.update({f"inf-batch#{r}": bool(pair_flags[r]) for r in range(2)})
    # Requests whose response never comes, responses whose request never comes.
    lone = tabular.clean[40:43]
    _, lone_flags = tabular.offline(lone)
    for j, row in enumerate(lone):
        ce_id = f"lone-request-{j}"
        records.append((kserve_request(ce_id, row[None]), kserve_headers(ce_id, "request"), j % 2))
        expected[ce_id] = bool(lone_flags[j])
    for j in range(2):
        ce_id = f"lone-response-{j}"
        records.append((kserve_response(ce_id, 1), kserve_headers(ce_id, "response"), j % 2))
    rng = np.random.default_rng(7)
    order = rng.permutation(len(records))
    shuffled = [records[k] for k in order]
    # Responses ahead of their requests in the produce order happen (either order works).
    position = {id(r): n for n, r in enumerate(shuffled)}
    responses_first = sum(
        position[id(records[2 * i + 1])] < position[id(records[2 * i])] for i in range(len(cases))
    )
    assert responses_first > 5
    malformed = (b'{"inputs": [', kserve_headers("broken", "request"), 0)
    # A well-formed request whose rows have a feature too few for the model.
    short = (
        kserve_request("short", tabular.clean[:1, :-1]),
        kserve_headers("short", "request"),
        1,
    )
    short_response = (kserve_response("short", 1), kserve_headers("short", "response"), 0)
    await produce_records(kafka_bootstrap, topic, [*shuffled, malformed, short, short_response])

    decisions = await decisions_matching(kafka_bootstrap, topics, expected)
    assert set(decisions) == set(expected)
    verdicts = {event: decisions[event].action.value != "allow" for event in expected}
    assert decisions["inf-0"].request_id == "inf-0"
    assert decisions["inf-0"].source == "client-0"
    assert decisions["inf-0"].model_version == "v3"
    caught = sum(verdicts[f"inf-{i}"] for i, c in enumerate(cases) if c[0] == "fgsm")
    false_alarms = sum(verdicts[f"inf-{i}"] for i, c in enumerate(cases) if c[0] == "clean")
    print(f"FGSM rows flagged: {caught}/16; clean rows flagged: {false_alarms}/24")

    # The joined events carry the response as output; lone requests have none.
    joined = await read_topic(
        kafka_bootstrap, topics.joined, lambda found: len(found) >= len(expected)
    )
    events = {e.event_id: e for e in (InferenceEvent.model_validate_json(r.value) for r in joined)}
    assert events["inf-3"].output is not None
    assert events["inf-3"].output == pytest.approx([0.3, 0.7])
    assert all(events[f"lone-request-{j}"].output is None for j in range(3))

    dead = await read_topic(kafka_bootstrap, topics.dead_letter, lambda found: len(found) >= 2)
    letters = {
        letter.reason: letter for letter in (DeadLetter.model_validate_json(r.value) for r in dead)
    }
    assert sorted(letters) == ["invalid_json", "shape"]
    assert base64.b64decode(letters["invalid_json"].value_b64) == malformed[0]
    # Refused at the join: the dead letter points at the original request record.
    refused = letters["shape"]
    assert (refused.topic, refused.partition, refused.event_id) == (topic, 1, "short")
    assert base64.b64decode(refused.value_b64) == short[0]

    metrics = await worker.wait_for_metrics(
        lambda m: m.value("advmon_oip_joins_total", model=MODEL, outcome="response_dropped") == 2,
        timeout_s=WAIT_S,
    )
    joins = metrics.by_label("advmon_oip_joins_total", "outcome")
    assert joins.get("joined") == len(cases) + 2
    assert joins.get("request_alone") == 3
    assert joins.get("response_dropped") == 2
    assert metrics.value("advmon_events_invalid_total", reason="invalid_json") == 1


def capture_record(event_id: str, rows: np.ndarray, inference_id: str | None = None) -> bytes:
    """A SageMaker Data Capture record of a CSV request and its CSV response."""
    csv = "\n".join(",".join(f"{v:.9g}" for v in row) for row in rows)
    metadata: dict[str, Any] = {"eventId": event_id, "inferenceTime": "2026-11-24T10:00:00Z"}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    return orjson.dumps(
        {
            "captureData": {
                "endpointInput": {
                    "observedContentType": "text/csv",
                    "mode": "INPUT",
                    "data": csv,
                    "encoding": "CSV",
                },
                "endpointOutput": {
                    "observedContentType": "text/csv; charset=utf-8",
                    "mode": "OUTPUT",
                    "data": "\n".join("0.7" for _ in rows),
                    "encoding": "CSV",
                },
            },
            "eventMetadata": metadata,
            "eventVersion": "0",
        }
    )


async def test_sagemaker_data_capture_records_are_scored(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    tabular: TabularModel,
    tmp_path: Path,
) -> None:
    topic = unique_name("sagemaker-capture")
    await create_topics(kafka_bootstrap, {topic: 1})
    topics, _ = await start_worker(
        worker_launcher, kafka_bootstrap, tabular, tmp_path, topic, format="sagemaker"
    )
    expected: dict[str, bool] = {}
    values: list[Record] = []
    for i, (_, row, flagged) in enumerate(rows_and_expected(tabular)):
        values.append((capture_record(f"cap-{i}", row[None]), [], None))
        expected[f"cap-{i}"] = flagged
    rows = tabular.adversarial[20:23]
    _, flags = tabular.offline(rows)
    values.append((capture_record("cap-batch", rows, inference_id="req-77"), [], None))
    expected.update({f"cap-batch#{r}": bool(flags[r]) for r in range(3)})
    values.append((b'{"captureData": {}}', [], None))
    await produce_records(kafka_bootstrap, topic, values)

    decisions = await decisions_matching(kafka_bootstrap, topics, expected)
    assert decisions["cap-batch#1"].request_id == "req-77"
    letter = await the_dead_letter(kafka_bootstrap, topics)
    assert letter.reason == "invalid_sagemaker"


async def test_an_applications_own_json_is_read_through_its_mapping(
    kafka_bootstrap: str,
    worker_launcher: WorkerLauncher,
    tabular: TabularModel,
    tmp_path: Path,
) -> None:
    topic = unique_name("app-logs")
    await create_topics(kafka_bootstrap, {topic: 1})
    mapping = {
        "event_id": "$.meta.id",
        "input": "$.payload.features",
        "source": "$.meta.user",
        "ts": "$.meta.time",
        "output": "$.result.outputs[?(@.name == 'probs')].data",
    }
    topics, _ = await start_worker(
        worker_launcher,
        kafka_bootstrap,
        tabular,
        tmp_path,
        topic,
        format="mapped",
        mapping=mapping,
    )
    expected: dict[str, bool] = {}
    values: list[Record] = []
    for i, (_, row, flagged) in enumerate(rows_and_expected(tabular)):
        document = {
            "meta": {"id": f"app-{i}", "user": f"user-{i % 3}", "time": "2026-11-24T10:00:00Z"},
            "payload": {"features": row.astype(float).tolist()},
            "result": {"outputs": [{"name": "probs", "data": [0.3, 0.7]}]},
        }
        values.append((orjson.dumps(document), [], None))
        expected[f"app-{i}"] = flagged
    values.append((orjson.dumps({"meta": {"id": "no-features"}}), [], None))
    await produce_records(kafka_bootstrap, topic, values)

    decisions = await decisions_matching(kafka_bootstrap, topics, expected)
    assert decisions["app-4"].source == "user-1"
    letter = await the_dead_letter(kafka_bootstrap, topics)
    assert letter.reason == "mapping_no_match"
    assert letter.event_id is None
