"""Formats in the scoring pipeline, and the OIP v2 join, without a broker.

Records are the real-shaped fixtures of ``tests/monitor/formats/fixtures`` (a KServe
payload-logger request and response in binary mode, SageMaker Data Capture lines, a
custom JSON layout).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from monitor.config import MonitorConfig
from monitor.decoding import RecordFormat, record_events
from monitor.worker.metrics import Metrics
from monitor.worker.records import InputMessage, OutputRecord
from monitor.worker.stages.join import MAX_WAITING_PER_ID, JoinStage, PendingJoin
from monitor.worker.stages.scoring import ScoringPipeline
from schemas import DeadLetter, InferenceEvent, OipHalf, TensorPayload
from tests.monitor.formats.kafka_records import (
    binary_headers,
    capture_record,
    fixture_json,
    kafka_record,
    tensor,
    v2_request,
    v2_response,
)

CE_ID = "823248cc-d770-4a51-9606-16803395569c"


def config(**model: Any) -> MonitorConfig:
    entry = {"id": "iris", "detector": "iris.json", "topics": ["kserve-logs"], **model}
    return MonitorConfig.model_validate({"models": [entry]})


def message(
    value: bytes,
    headers: Sequence[tuple[str, bytes]] = (),
    *,
    topic: str = "kserve-logs",
    offset: int = 42,
) -> InputMessage:
    return InputMessage(topic, 1, offset, None, value, 1_714_564_800.0, tuple(headers))


class Published:
    def __init__(self) -> None:
        self.records: list[OutputRecord] = []

    async def __call__(self, records: Sequence[OutputRecord]) -> None:
        self.records.extend(records)

    def on(self, topic: str) -> list[OutputRecord]:
        return [r for r in self.records if r.topic == topic]


def halves_of(
    *records: tuple[bytes, list[tuple[str, bytes]]], first_offset: int = 42
) -> list[bytes]:
    """The halves forwarded for ``records``, read at consecutive offsets of one partition."""
    pipeline = ScoringPipeline(config(format="oip-v2"), {})
    decoded = pipeline.decode(
        [
            message(value, headers, offset=first_offset + i)
            for i, (value, headers) in enumerate(records)
        ]
    )
    assert decoded.dead_letters == []
    return [r.value for r in decoded.halves]


def test_oip_v2_records_are_forwarded_keyed_by_cloudevent_id() -> None:
    request, response = (
        kafka_record("kserve_binary_request"),
        kafka_record("kserve_binary_response"),
    )
    pipeline = ScoringPipeline(config(format="oip-v2"), {})
    decoded = pipeline.decode([message(*request), message(*response)])
    assert decoded.batches == []
    assert [(r.topic, r.key) for r in decoded.halves] == [("advmon-oip-halves", CE_ID.encode())] * 2
    assert decoded.half_kinds == [("iris", "request"), ("iris", "response")]
    half = OipHalf.model_validate_json(decoded.halves[0].value)
    assert (half.kind, half.model_id, half.topic, half.partition, half.offset) == (
        "request",
        "iris",
        "kserve-logs",
        1,
        42,
    )
    assert base64.b64decode(half.value_b64) == request[0]
    assert [(n, base64.b64decode(v)) for n, v in half.headers] == request[1]


def test_a_malformed_oip_v2_record_is_dead_lettered_with_its_reason() -> None:
    value, headers = kafka_record("kserve_binary_request")
    broken = [(n, b"org.example.other" if n == "ce_type" else v) for n, v in headers]
    decoded = ScoringPipeline(config(format="oip-v2"), {}).decode([message(value, broken)])
    (letter,) = [DeadLetter.model_validate_json(r.value) for r in decoded.dead_letters]
    assert letter.reason == "invalid_cloudevent"
    assert "org.example.other" in letter.error
    assert decoded.invalid_reasons == ["invalid_cloudevent"]
    assert base64.b64decode(letter.value_b64) == value


def joined_events(published: Published) -> list[InferenceEvent]:
    return [
        InferenceEvent.model_validate_json(r.value) for r in published.on("advmon-joined-events")
    ]


@pytest.mark.parametrize("response_first", [False, True], ids=["in-order", "response-first"])
def test_request_and_response_join_in_either_order(response_first: bool) -> None:
    request, response = halves_of(
        kafka_record("kserve_binary_request"), kafka_record("kserve_binary_response")
    )
    published = Published()
    stage = JoinStage(
        config(format="oip-v2", oip_v2={"source_parameters": ["source", "user"]}),
        {},
        Metrics.create(CollectorRegistry()),
        published,
    )
    for raw in [response, request] if response_first else [request, response]:
        asyncio.run(stage.observe(raw, now=100.0))
    events = joined_events(published)
    assert [e.event_id for e in events] == [f"{CE_ID}#0", f"{CE_ID}#1"]
    assert all(e.request_id == CE_ID and e.model_id == "iris" for e in events)
    outputs = [e.output for e in events]
    expected = np.array([[0.0125, 0.8125, 0.175], [0.03125, 0.65625, 0.3125]], np.float32)
    np.testing.assert_array_equal(np.array(outputs, np.float32), expected)  # FP32 on the wire
    assert events[0].source == "apikey-7f3a"
    assert events[0].model_version == "v1.0.0"
    first = events[0].input
    assert isinstance(first, TensorPayload)
    np.testing.assert_array_equal(
        np.frombuffer(first.to_bytes(), "<f4"), np.array([6.8, 2.8, 4.8, 1.4], np.float32)
    )
    assert [r.key for r in published.on("advmon-joined-events")] == [CE_ID.encode()] * 2
    # The joined records' positions are remembered until the timeout passes, then forgotten.
    entry = PendingJoin.model_validate_json(stage.pending[CE_ID])
    assert (entry.waiting, len(entry.handled)) == ([], 2)
    asyncio.run(stage.expire(now=129.0))
    assert CE_ID in stage.pending
    asyncio.run(stage.expire(now=130.0))
    assert stage.pending == {}
    assert len(published.records) == 2


def test_a_half_read_again_joins_nothing_twice() -> None:
    request, response = halves_of(
        kafka_record("kserve_binary_request"), kafka_record("kserve_binary_response")
    )
    published = Published()
    registry = CollectorRegistry()
    stage = JoinStage(config(format="oip-v2"), {}, Metrics.create(registry), published)
    for raw in (request, request, response, response, request):
        asyncio.run(stage.observe(raw, now=1.0))
    assert len(joined_events(published)) == 2
    assert (
        registry.get_sample_value(
            "advmon_oip_joins_total", {"model": "iris", "outcome": "duplicate"}
        )
        == 3
    )


def test_a_lone_request_is_scored_without_output_after_the_timeout() -> None:
    (request,) = halves_of(kafka_record("kserve_binary_request"))
    published = Published()
    registry = CollectorRegistry()
    stage = JoinStage(
        config(format="oip-v2", oip_v2={"join_timeout_seconds": 5}),
        {},
        Metrics.create(registry),
        published,
    )
    asyncio.run(stage.observe(request, now=10.0))
    asyncio.run(stage.expire(now=14.9))
    assert published.records == []
    assert registry.get_sample_value("advmon_oip_pending") == 1
    asyncio.run(stage.expire(now=15.0))
    events = joined_events(published)
    assert [e.event_id for e in events] == [f"{CE_ID}#0", f"{CE_ID}#1"]
    assert all(e.output is None for e in events)
    assert stage.pending == {}
    assert (
        registry.get_sample_value(
            "advmon_oip_joins_total", {"model": "iris", "outcome": "request_alone"}
        )
        == 1
    )


def test_a_lone_response_is_dropped_and_counted() -> None:
    (response,) = halves_of(kafka_record("kserve_binary_response"))
    published = Published()
    registry = CollectorRegistry()
    stage = JoinStage(config(format="oip-v2"), {}, Metrics.create(registry), published)
    asyncio.run(stage.observe(response, now=0.0))
    asyncio.run(stage.expire(now=60.0))
    assert published.records == []
    assert stage.pending == {}
    assert (
        registry.get_sample_value(
            "advmon_oip_joins_total", {"model": "iris", "outcome": "response_dropped"}
        )
        == 1
    )


def test_a_response_that_does_not_fit_its_request_dead_letters_the_request() -> None:
    request = (v2_request(tensor("x", [2, 4], "FP32", [0.0] * 8)), binary_headers("r-9"))
    response = (
        v2_response(tensor("y", [3, 2], "FP32", [0.0] * 6)),
        binary_headers("r-9", kind="response"),
    )
    halves = halves_of(request, response)
    published = Published()
    stage = JoinStage(config(format="oip-v2"), {}, Metrics.create(CollectorRegistry()), published)
    for raw in halves:
        asyncio.run(stage.observe(raw, now=0.0))
    (letter,) = [
        DeadLetter.model_validate_json(r.value) for r in published.on("advmon-dead-letter")
    ]
    assert letter.reason == "shape_mismatch"
    assert (letter.topic, letter.partition, letter.offset) == ("kserve-logs", 1, 42)
    assert base64.b64decode(letter.value_b64) == request[0]
    assert joined_events(published) == []


# --- SageMaker and mapped records in the pipeline ------------------------------------


def test_sagemaker_records_become_events_of_their_model() -> None:
    pipeline = ScoringPipeline(config(format="sagemaker"), {})
    value = capture_record("sagemaker_csv")
    events = record_events(value, RecordFormat.of(pipeline.topic_models["kserve-logs"]))
    (event,) = events
    assert event.model_id == "iris"
    assert event.event_id == "8f45e35c-fa44-40d2-8ed3-1bcab3a596f3"
    assert event.output == [30.4133586884]


def test_mapped_records_follow_the_model_mapping() -> None:
    mapping = {"event_id": "$.meta.id", "input": "$.payload.features", "source": "$.meta.user"}
    pipeline = ScoringPipeline(config(format="mapped", mapping=mapping), {})
    value = orjson.dumps(fixture_json("mapped_custom.json"))
    (event,) = record_events(value, RecordFormat.of(pipeline.topic_models["kserve-logs"]))
    assert event.event_id == "b7c1d2e3-f405-4617-8a9b-0c1d2e3f4a5b"
    assert event.source == "user-4821"
    assert event.input == [0.12, 3.5, 1.0, 0.0]
    broken = orjson.dumps({"meta": {"id": "x"}})
    decoded = pipeline.decode([message(broken)])
    (letter,) = [DeadLetter.model_validate_json(r.value) for r in decoded.dead_letters]
    assert letter.reason == "mapping_no_match"


@pytest.mark.parametrize(
    ("models", "message_part"),
    [
        ([{"format": "mapped"}], "format mapped needs a mapping"),
        (
            [{"format": "sagemaker", "mapping": {"event_id": "$.a", "input": "$.b"}}],
            "mapping is only read with format mapped",
        ),
        (
            [{"format": "mapped", "mapping": {"event_id": "$.a", "input": "$.b["}}],
            "malformed JSONPath '$.b['",
        ),
        (
            [{"format": "sagemaker"}, {"id": "other", "format": "native"}],
            "topic 'kserve-logs' of model 'iris' (format sagemaker) is also listed by other",
        ),
    ],
)
def test_format_settings_are_checked_when_the_config_loads(
    models: list[dict[str, Any]], message_part: str
) -> None:
    entries = [
        {"id": "iris", "detector": "iris.json", "topics": ["kserve-logs"], **m} for m in models
    ]
    with pytest.raises(ValueError, match=re.escape(message_part)):
        MonitorConfig.model_validate({"models": entries})


def test_halves_recovered_from_the_table_expire_only_where_this_worker_owns_them() -> None:
    (request,) = halves_of(kafka_record("kserve_binary_request"))
    other = halves_of(
        (
            v2_request(tensor("x", [1, 4], "FP32", [0.0] * 4)),
            binary_headers("elsewhere"),
        )
    )[0]
    # As after a restart: the table holds entries this stage never saw arrive, written
    # before several halves could wait under one id.
    recovered = {CE_ID: request, "elsewhere": other}
    table = {
        key: orjson.dumps({"half": orjson.loads(half), "waiting_since": 0.0, "done": False})
        for key, half in recovered.items()
    }
    published = Published()
    stage = JoinStage(
        config(format="oip-v2"),
        table,
        Metrics.create(CollectorRegistry()),
        published,
        owns=lambda key: key != "elsewhere",  # that partition went to another worker
    )
    asyncio.run(stage.expire(now=31.0))
    assert [e.event_id for e in joined_events(published)] == [f"{CE_ID}#0", f"{CE_ID}#1"]
    assert set(table) == {"elsewhere"}


def test_a_joined_row_its_detector_refuses_is_dead_lettered_with_the_original_request() -> None:
    from detectors import CalibrationSummary, DetectorConfig

    # The second row leaves the image range the detector was calibrated on.
    request = (
        v2_request(tensor("x", [2, 4], "FP32", [0.5] * 4 + [0.5, 5.0, 0.5, 0.5])),
        binary_headers("r-5"),
    )
    (half,) = halves_of(request)
    detector = DetectorConfig(
        model_path="iris.onnx",
        model_sha256="0" * 64,
        input_name="x",
        input_shape=(4,),
        input_kind="image",
        input_range=(0.0, 1.0),
        output_name="p",
        output_kind="probabilities",
        num_classes=3,
        squeezers=(),
        threshold=0.5,
        target_fpr=0.05,
        calibration=CalibrationSummary(200, 0.05, {}, 0.0, 1.0, "CPUExecutionProvider"),
    )
    published = Published()
    stage = JoinStage(
        config(format="oip-v2", oip_v2={"join_timeout_seconds": 1}),
        {},
        Metrics.create(CollectorRegistry()),
        published,
        detectors={"iris": detector},
    )
    asyncio.run(stage.observe(half, now=0.0))
    asyncio.run(stage.expire(now=5.0))
    assert [e.event_id for e in joined_events(published)] == ["r-5#0"]
    (letter,) = [
        DeadLetter.model_validate_json(r.value) for r in published.on("advmon-dead-letter")
    ]
    assert (letter.reason, letter.event_id) == ("range", "r-5#1")
    assert (letter.topic, letter.partition, letter.offset) == ("kserve-logs", 1, 42)
    assert base64.b64decode(letter.value_b64) == request[0]


def test_requests_that_share_a_cloudevent_id_each_get_their_response() -> None:
    """KServe copies the client's Ce-Id: 20 requests under one id are 20 inferences."""
    records = [kafka_record("kserve_binary_request"), kafka_record("kserve_binary_response")]
    published = Published()
    registry = CollectorRegistry()
    stage = JoinStage(config(format="oip-v2"), {}, Metrics.create(registry), published)
    pairs = [halves_of(*records, first_offset=100 + 2 * i) for i in range(20)]
    for request, _response in pairs:  # every request first, then every response
        asyncio.run(stage.observe(request, now=1.0))
    for _request, response in pairs:
        asyncio.run(stage.observe(response, now=2.0))
    assert len(joined_events(published)) == 40  # two rows per request
    assert (
        registry.get_sample_value("advmon_oip_joins_total", {"model": "iris", "outcome": "joined"})
        == 20
    )
    assert (
        registry.get_sample_value(
            "advmon_oip_joins_total", {"model": "iris", "outcome": "duplicate"}
        )
        is None
    )
    # Replays of those records, read again after a restart, join nothing.
    for request, response in pairs[:3]:
        asyncio.run(stage.observe(request, now=3.0))
        asyncio.run(stage.observe(response, now=3.0))
    assert len(joined_events(published)) == 40
    assert (
        registry.get_sample_value(
            "advmon_oip_joins_total", {"model": "iris", "outcome": "duplicate"}
        )
        == 6
    )


def test_requests_beyond_the_limit_of_one_id_are_scored_alone_never_dropped() -> None:
    record = kafka_record("kserve_binary_request")
    published = Published()
    registry = CollectorRegistry()
    stage = JoinStage(config(format="oip-v2"), {}, Metrics.create(registry), published)
    requests = [halves_of(record, first_offset=i)[0] for i in range(MAX_WAITING_PER_ID + 5)]
    for request in requests:
        asyncio.run(stage.observe(request, now=1.0))
    assert len(joined_events(published)) == 2 * 5  # the 5 oldest, without output
    entry = PendingJoin.model_validate_json(stage.pending[CE_ID])
    assert len(entry.waiting) == MAX_WAITING_PER_ID
    asyncio.run(stage.expire(now=1.0 + 30.0))
    assert len(joined_events(published)) == 2 * len(requests)
    assert registry.get_sample_value(
        "advmon_oip_joins_total", {"model": "iris", "outcome": "request_alone"}
    ) == len(requests)


def test_a_record_whose_half_would_outgrow_the_producer_limit_is_dead_lettered() -> None:
    value, headers = kafka_record("kserve_binary_request")
    pipeline = ScoringPipeline(config(format="oip-v2"), {}, max_half_bytes=len(value) + 16_384)
    decoded = pipeline.decode([message(value, headers)])
    assert (len(decoded.halves), decoded.invalid_reasons) == (0, ["too_large"])
    roomy = ScoringPipeline(config(format="oip-v2"), {}, max_half_bytes=4 * len(value) + 32_768)
    assert len(roomy.decode([message(value, headers)]).halves) == 1


def test_dead_letters_keep_as_much_of_the_value_as_the_config_says() -> None:
    settings = MonitorConfig.model_validate(
        {
            "models": [{"id": "iris", "detector": "iris.json", "topics": ["kserve-logs"]}],
            "dead_letters": {"copy_bytes": 8},
        }
    )
    decoded = ScoringPipeline(settings, {}).decode([message(b"\x00" * 100)])
    (record,) = decoded.dead_letters
    letter = DeadLetter.model_validate_json(record.value)
    assert (len(base64.b64decode(letter.value_b64)), letter.value_size) == (8, 100)
    assert letter.value_truncated


@pytest.mark.parametrize(
    "stored",
    [b"\xff not json", b'{"half": {"id": 1}}', b'{"waiting": "no"}', b"[]"],
    ids=["bytes", "old-format-broken", "wrong-type", "not-an-object"],
)
def test_an_unreadable_table_entry_is_dropped_and_the_join_goes_on(stored: bytes) -> None:
    request, response = halves_of(
        kafka_record("kserve_binary_request"), kafka_record("kserve_binary_response")
    )
    published = Published()
    table = {CE_ID: stored}
    stage = JoinStage(
        config(format="oip-v2"), table, Metrics.create(CollectorRegistry()), published
    )
    asyncio.run(stage.expire(now=1.0))
    for raw in (request, response):
        asyncio.run(stage.observe(raw, now=2.0))
    assert len(joined_events(published)) == 2
