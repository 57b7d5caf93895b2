"""``advmon inspect``: the report of each format's records, and the command on a real broker."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from click.testing import CliRunner, Result
from rich.console import Console

from detectors import DetectorConfig, calibrate_detector
from monitor.cli import main
from monitor.demo.run import demo_event
from monitor.errors import InspectError, InspectUsageError
from monitor.formats import FieldMapping
from monitor.inspect import (
    Decoding,
    ExpectedInput,
    KafkaRecord,
    MessageReport,
    inspect_record,
    inspect_records,
    parse_mapping,
    report_tables,
    resolve_decoding,
)
from monitor.kafka.local_broker import free_loopback_port
from tests.cancer import build_cancer_case
from tests.integration.kafka_io import create_topics, produce, unique_name
from tests.monitor.cli_support import DemoModel, assert_clean_failure, normalized
from tests.monitor.formats.kafka_records import (
    Headers,
    binary_headers,
    capture_record,
    fixture_json,
    kafka_record,
    tensor,
    v2_request,
    v2_response,
)

IRIS_ID = "823248cc-d770-4a51-9606-16803395569c"
MNIST_ID = "5f4bd1e0-3c1e-4f8e-9a57-2b1a7c0d9e11"
MAPPING = {
    "event_id": "$.meta.id",
    "input": "$.payload.features",
    "output": "$.result.outputs[?(@.name == 'probs')].data",
    "source": "$.meta.user",
    "request_id": "$.meta.request",
    "ts": "$.meta.time",
    "model_version": "$.model.version",
}


def record(
    value: bytes, headers: Sequence[tuple[str, bytes]] = (), *, offset: int = 0, partition: int = 0
) -> KafkaRecord:
    """A record at ``partition``/``offset`` with key ``k``."""
    return KafkaRecord(partition, offset, b"k", value, tuple(headers))


def oip(name: str, offset: int, partition: int = 0) -> KafkaRecord:
    """The KServe fixture record ``name`` at ``partition``/``offset``."""
    value, headers = kafka_record(name)
    return record(value, headers, offset=offset, partition=partition)


def native(event_id: str, value: Any, model_id: str = "digits") -> bytes:
    """A native event whose input is ``value``."""
    return orjson.dumps({"event_id": event_id, "model_id": model_id, "input": value})


def tensor_input(array: np.ndarray) -> dict[str, Any]:
    """A tensor payload of ``array``."""
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data_b64": base64.b64encode(
            array.astype(array.dtype.newbyteorder("<")).tobytes()
        ).decode(),
    }


# --- native -------------------------------------------------------------------------------


def test_a_native_event_is_summarized() -> None:
    value = orjson.dumps(
        {
            "event_id": "e1",
            "model_id": "digits",
            "model_version": "3",
            "request_id": "r1",
            "source": "u-1",
            "ts": "2024-05-01T12:00:00Z",
            "input": [[0.0, 0.5], [1.0, 0.25]],
            "output": [0.1, 0.9],
        }
    )
    report = inspect_record(record(value, offset=4), Decoding("native"))
    assert report.error is None
    (event,) = report.events
    assert (event.event_id, event.model_id, event.model_version) == ("e1", "digits", "3")
    assert (event.request_id, event.source, event.ts.isoformat() if event.ts else None) == (
        "r1",
        "u-1",
        "2024-05-01T12:00:00+00:00",
    )
    assert (event.input.kind, event.input.dtype, event.input.shape) == ("nested_list", None, [2, 2])
    assert event.output_length == 2
    assert event.input_problem is None
    assert not event.checked


def test_a_native_tensor_payload_keeps_its_dtype() -> None:
    value = native("e1", tensor_input(np.arange(6, dtype=np.uint8).reshape(2, 3)))
    (event,) = inspect_record(record(value), Decoding("native")).events
    assert (event.input.kind, event.input.dtype, event.input.shape) == ("tensor", "uint8", [2, 3])
    assert str(event.input) == "uint8 [2, 3]"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (b"not json", "<json>"),
        (b"[1, 2]", "<root>"),
        (b'{"event_id": "e1", "input": [1]}', "model_id"),
        (b'{"event_id": "e1", "model_id": "m", "input": "pixels"}', "input"),
    ],
)
def test_a_native_record_that_is_no_event_says_why(value: bytes, field: str) -> None:
    report = inspect_record(record(value), Decoding("native"))
    assert report.events == []
    assert report.error is not None
    assert report.error.reason == "invalid_event"
    assert f"field {field!r}" in report.error.message


def test_inputs_that_do_not_decode_to_numbers_are_problems_of_the_event() -> None:
    nan = tensor_input(np.array([np.nan, 1.0], dtype=np.float32))
    reports = inspect_records(
        [
            record(native("ragged", [[1, 2], [3]]), offset=0),
            record(native("nan", nan), offset=1),
        ],
        Decoding("native"),
    )
    problems = [(r.events[0].event_id, r.events[0].input_problem) for r in reports]
    assert [(event_id, p.reason if p else None) for event_id, p in problems] == [
        ("ragged", "ragged"),
        ("nan", "non_finite"),
    ]
    assert reports[0].events[0].input.shape is None


def test_inputs_are_checked_against_the_detector_of_their_model() -> None:
    decoding = Decoding(
        "native",
        expected={
            "digits": ExpectedInput((2, 2), (0.0, 1.0)),
            "tabular": ExpectedInput((None,), None),
            "unloaded": None,
        },
    )
    reports = inspect_records(
        [
            record(native("fits", [[0, 1], [1, 0]]), offset=0),
            record(native("shape", [0, 1, 1]), offset=1),
            record(native("range", [[0, 2], [1, 0]]), offset=2),
            record(native("any-width", [5, 6, 7, 8, 9], model_id="tabular"), offset=3),
            record(native("other", [[0, 1], [1, 0]], model_id="fraud"), offset=4),
            record(native("no-detector", [1, 2, 3], model_id="unloaded"), offset=5),
        ],
        decoding,
    )
    found = {
        r.events[0].event_id: (
            r.events[0].input_problem.reason if r.events[0].input_problem else None,
            r.events[0].checked,
        )
        for r in reports
    }
    assert found == {
        "fits": (None, True),
        "shape": ("shape", True),
        "range": ("range", True),
        "any-width": (None, True),
        "other": ("unknown_model", False),
        "no-detector": (None, False),
    }
    problem = reports[1].events[0].input_problem
    assert problem is not None
    assert problem.message == "input shape [3] does not match the model's [2, 2]"


# --- sagemaker ----------------------------------------------------------------------------


def test_a_sagemaker_batch_is_one_event_per_row() -> None:
    report = inspect_record(
        record(capture_record("sagemaker_csv_batch")), Decoding("sagemaker", model_id="churn")
    )
    assert report.error is None
    assert [e.event_id for e in report.events] == [
        f"4651a1bf-4b00-4248-a309-4a18b11e4277#{row}" for row in range(3)
    ]
    assert {e.request_id for e in report.events} == {"churn-batch-0007"}
    assert {e.model_id for e in report.events} == {"churn"}
    assert [(e.input.kind, e.input.shape, e.output_length) for e in report.events] == [
        ("nested_list", [4], 1)
    ] * 3


def test_a_sagemaker_npy_capture_keeps_the_array_dtype() -> None:
    report = inspect_record(record(capture_record("sagemaker_npy")), Decoding("sagemaker"))
    assert [(e.input.dtype, e.input.shape, e.output_length) for e in report.events] == [
        ("uint8", [2, 2], 2)
    ] * 2
    assert {e.model_id for e in report.events} == {"inspected"}


def test_a_record_that_is_no_sagemaker_capture_says_why() -> None:
    report = inspect_record(record(b'{"captureData": {}}'), Decoding("sagemaker"))
    assert report.error is not None
    assert report.error.reason == "invalid_sagemaker"
    assert "eventMetadata" in report.error.message


# --- mapped -------------------------------------------------------------------------------


def test_a_mapped_record_is_decoded_through_its_mapping() -> None:
    decoding = Decoding("mapped", model_id="fraud", mapping=FieldMapping(**MAPPING))
    value = orjson.dumps(fixture_json("mapped_custom.json"))
    (event,) = inspect_record(record(value), decoding).events
    assert (event.event_id, event.model_id, event.source, event.request_id) == (
        "b7c1d2e3-f405-4617-8a9b-0c1d2e3f4a5b",
        "fraud",
        "user-4821",
        "req-99",
    )
    assert event.model_version == "2024.04.2"
    assert (event.input.shape, event.output_length) == ([4], 2)


def test_a_mapped_record_without_a_required_field_says_which() -> None:
    decoding = Decoding("mapped", mapping=FieldMapping(event_id="$.meta.id", input="$.nowhere"))
    report = inspect_record(record(orjson.dumps(fixture_json("mapped_custom.json"))), decoding)
    assert report.error is not None
    assert report.error.reason == "mapping_no_match"
    assert "'$.nowhere' of field 'input'" in report.error.message


# --- oip-v2 -------------------------------------------------------------------------------


def test_a_request_and_its_response_are_joined() -> None:
    reports = inspect_records(
        [oip("kserve_binary_request", 0), oip("kserve_binary_response", 0, partition=1)],
        Decoding("oip-v2", model_id="iris", source_parameters=("source", "user")),
    )
    request, response = reports
    assert request.oip is not None
    assert response.oip is not None
    assert (request.oip.kind, request.oip.id, request.oip.partner) == ("request", IRIS_ID, (1, 0))
    assert (response.oip.kind, response.oip.id, response.oip.partner) == (
        "response",
        IRIS_ID,
        (0, 0),
    )
    assert [str(t) for t in request.oip.tensors] == ["input-0 float32 [2, 4]"]
    assert [str(t) for t in response.oip.tensors] == ["output-0 float32 [2, 3]"]
    assert [(e.event_id, e.output_length, e.model_version) for e in request.events] == [
        (f"{IRIS_ID}#0", 3, "v1.0.0"),
        (f"{IRIS_ID}#1", 3, "v1.0.0"),
    ]
    assert {(e.model_id, e.source, e.request_id) for e in request.events} == {
        ("iris", "apikey-7f3a", IRIS_ID)
    }
    # The response's time: when serving answered.
    assert {e.ts.isoformat() if e.ts else None for e in request.events} == {
        "2024-05-01T12:00:00.080736+00:00"
    }
    assert response.events == []


def test_a_response_read_before_its_request_is_joined_too() -> None:
    reports = inspect_records(
        [oip("kserve_structured_response", 3), oip("kserve_structured_request", 4)],
        Decoding("oip-v2"),
    )
    response, request = reports
    assert response.oip is not None
    assert request.oip is not None
    assert (response.oip.partner, request.oip.partner) == ((0, 4), (0, 3))
    assert [
        (e.event_id, e.input.dtype, e.input.shape, e.output_length) for e in request.events
    ] == [(MNIST_ID, "uint8", [2, 3], 4)]


def test_halves_without_a_partner_are_reported_alone() -> None:
    reports = inspect_records(
        [oip("kserve_structured_request", 0), oip("kserve_binary_response", 1)],
        Decoding("oip-v2"),
    )
    request, response = reports
    assert request.oip is not None
    assert response.oip is not None
    assert (request.oip.partner, response.oip.partner) == (None, None)
    # The request is scored alone after the join timeout: its events have no output.
    assert [(e.event_id, e.output_length) for e in request.events] == [(MNIST_ID, None)]
    assert response.events == []


def test_a_second_half_of_the_same_kind_is_a_duplicate() -> None:
    reports = inspect_records(
        [
            oip("kserve_binary_request", 0),
            oip("kserve_binary_request", 1),
            oip("kserve_binary_response", 2),
        ],
        Decoding("oip-v2"),
    )
    first, again, response = (r.oip for r in reports)
    assert first is not None
    assert again is not None
    assert response is not None
    assert (first.partner, first.duplicate_of) == ((0, 2), None)
    assert (again.partner, again.duplicate_of) == (None, (0, 0))
    assert response.partner == (0, 0)


def test_a_request_with_several_inputs_needs_the_input_name() -> None:
    message = oip("kserve_binary_multi_input_request", 0)
    report = inspect_record(message, Decoding("oip-v2"))
    assert report.oip is not None
    assert [t.name for t in report.oip.tensors] == ["token_ids", "attention_mask", "amount_cents"]
    assert report.error is not None
    assert report.error.reason == "ambiguous_tensor"
    named = inspect_record(message, Decoding("oip-v2", input_name="amount_cents"))
    assert named.error is None
    assert [(e.input.dtype, e.input.shape) for e in named.events] == [("uint32", [])] * 3


def test_a_join_that_fails_is_the_request_error() -> None:
    request = record(
        v2_request(tensor("x", [2, 2], "FP32", [1, 2, 3, 4])), binary_headers("j1"), offset=0
    )
    response = record(
        v2_response(tensor("y", [3, 1], "FP32", [1, 2, 3])),
        binary_headers("j1", kind="response"),
        offset=1,
    )
    first, second = inspect_records([request, response], Decoding("oip-v2"))
    assert first.error is not None
    assert first.error.reason == "shape_mismatch"
    assert first.events == []
    assert second.error is None


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b'{"inputs": []}', [], "invalid_cloudevent"),
        (b"{", binary_headers(), "invalid_json"),
        (b'{"instances": [[1, 2]]}', binary_headers(), "invalid_oip_v2"),
        (v2_request(tensor("x", [1], "BYTES", ["a"])), binary_headers(), "unsupported_datatype"),
    ],
)
def test_a_record_that_is_no_oip_v2_half_says_why(
    value: bytes, headers: Headers, reason: str
) -> None:
    report = inspect_record(record(value, headers), Decoding("oip-v2"))
    assert report.oip is None
    assert report.error is not None
    assert report.error.reason == reason


# --- JSON and tables ----------------------------------------------------------------------


def test_the_json_report_names_everything() -> None:
    reports = inspect_records(
        [oip("kserve_binary_request", 0), oip("kserve_binary_response", 1), record(b"{", offset=2)],
        Decoding("oip-v2"),
    )
    request, response, bad = (json.loads(json.dumps(r.to_json("logs"))) for r in reports)
    assert request["topic"] == "logs"
    assert (request["partition"], request["offset"], request["key"], request["key_b64"]) == (
        0,
        0,
        "k",
        "aw==",
    )
    assert request["decoded"] is True
    assert request["oip_v2"]["partner"] == {"partition": 0, "offset": 1}
    assert request["events"][0]["input"] == {"kind": "tensor", "dtype": "float32", "shape": [4]}
    assert request["events"][0]["checked_against_detector"] is False
    assert response["oip_v2"]["kind"] == "response"
    assert response["events"] == []
    assert bad["decoded"] is False
    assert bad["error"]["reason"] == "invalid_json"
    assert "oip_v2" not in inspect_record(record(b"{}"), Decoding("native")).to_json("t")


def test_a_key_that_is_not_utf8_is_given_in_base64() -> None:
    data = MessageReport(0, 0, b"\xff\x00", None).to_json("t")
    assert (data["key"], data["key_b64"]) == (None, "/wA=")


def _rendered(reports: Sequence[MessageReport], decoding: Decoding) -> str:
    console = Console(width=300, record=True, file=io.StringIO())
    for table in report_tables(reports, decoding):
        console.print(table)
    return console.export_text()


def test_the_tables_show_joins_halves_alone_and_errors() -> None:
    reports = inspect_records(
        [
            oip("kserve_binary_request", 0),
            oip("kserve_binary_response", 1),
            oip("kserve_structured_request", 2),
            record(b"[bold]x[/bold]", offset=3),
        ],
        Decoding("oip-v2"),
    )
    text = _rendered(reports, Decoding("oip-v2"))
    assert f"request {IRIS_ID} (input-0 float32 [2, 4]), joined with 0/1: 2 event(s)" in text
    assert f"{IRIS_ID}#1" in text
    assert "events of the requests read, joined with their responses" in text
    assert "halves without a partner among the messages read" in text
    assert "scores it without output after join_timeout_seconds" in text
    # Record contents are shown as they are, never read as markup.
    assert "invalid_json" in text


# --- the command line options -------------------------------------------------------------


def test_a_mapping_is_read_from_json_or_a_file(tmp_path: Path) -> None:
    assert parse_mapping(json.dumps(MAPPING)) == FieldMapping(**MAPPING)
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(MAPPING))
    assert parse_mapping(str(path)) == FieldMapping(**MAPPING)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"event_id": "$.id", "input": "$.x["}', "--mapping: field 'input': malformed JSONPath"),
        ('{"event_id": "$.id"}', "--mapping: field 'input': field required"),
        (
            '{"event_id": "$.id", "input": "$.x", "colour": "$.c"}',
            "--mapping: field 'colour': extra",
        ),
        ("{not json", "--mapping is not a valid JSON object"),
        ("missing.yaml", "--mapping: no file 'missing.yaml'"),
    ],
)
def test_a_bad_mapping_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InspectError) as caught:
        parse_mapping(text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_without_a_config_the_options_give_the_decoding() -> None:
    decoding, notes = resolve_decoding("t", "sagemaker")
    assert (decoding.format, decoding.model_id, decoding.expected, notes) == (
        "sagemaker",
        "inspected",
        None,
        [],
    )
    named, _ = resolve_decoding("t", "native", model_id="digits")
    assert named.expected == {"digits": None}
    mapped, _ = resolve_decoding("t", "mapped", model_id="fraud", mapping=json.dumps(MAPPING))
    assert (mapped.model_id, mapped.mapping) == ("fraud", FieldMapping(**MAPPING))


@pytest.mark.parametrize(
    ("event_format", "mapping", "message"),
    [
        (None, None, "give the topic's --format, or a worker --config"),
        ("mapped", None, "format mapped needs --mapping"),
        ("native", json.dumps(MAPPING), "--mapping is only read with format mapped, not native"),
    ],
)
def test_options_that_do_not_fit_are_usage_errors(
    event_format: Any, mapping: str | None, message: str
) -> None:
    with pytest.raises(InspectUsageError, match=message):
        resolve_decoding("t", event_format, mapping=mapping)


def _write_config(path: Path, models: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def test_a_config_gives_the_model_s_options_and_detector(
    tmp_path: Path, detector_path: Path
) -> None:
    config = _write_config(
        tmp_path / "advmon.yaml",
        [
            {"id": "digits", "detector": str(detector_path), "topics": ["events"]},
            {
                "id": "iris",
                "detector": str(detector_path),
                "topics": ["kserve"],
                "format": "oip-v2",
                "oip_v2": {"input_name": "x", "output_name": "y"},
            },
            {
                "id": "fraud",
                "detector": str(tmp_path / "missing.json"),
                "topics": ["fraud"],
                "format": "mapped",
                "mapping": MAPPING,
            },
        ],
    )
    shape = ExpectedInput.of(DetectorConfig.load(detector_path))
    iris, notes = resolve_decoding("kserve", None, config_path=config)
    assert (iris.format, iris.model_id, iris.input_name, iris.output_name) == (
        "oip-v2",
        "iris",
        "x",
        "y",
    )
    assert (iris.expected, notes) == ({"iris": shape}, [])
    digits, _ = resolve_decoding("events", "native", config_path=config)
    assert digits.expected == {"digits": shape}
    other_topic, notes = resolve_decoding("staging", None, config_path=config, model_id="iris")
    assert other_topic.model_id == "iris"
    assert notes == [f"model 'iris' does not list topic 'staging' in {config}"]
    fraud, notes = resolve_decoding("fraud", None, config_path=config)
    assert (fraud.mapping, fraud.expected) == (FieldMapping(**MAPPING), {"fraud": None})
    (note,) = notes
    assert note.startswith("model 'fraud': inputs are not checked against its detector:")
    with pytest.raises(InspectUsageError, match="--format sagemaker disagrees with"):
        resolve_decoding("kserve", "sagemaker", config_path=config)
    with pytest.raises(InspectUsageError, match="lists no model for topic 'nowhere'"):
        resolve_decoding("nowhere", None, config_path=config)
    with pytest.raises(InspectError, match="has no model 'nobody'"):
        resolve_decoding("events", None, config_path=config, model_id="nobody")
    with pytest.raises(InspectError, match="config file not found"):
        resolve_decoding("events", None, config_path=tmp_path / "nothing.yaml")


# --- the command against a real broker ----------------------------------------------------


#: Options are checked before the broker is reached: no broker needed for those tests.
_NO_BROKER = "127.0.0.1:9"


def _inspect(runner: CliRunner, bootstrap: str, *args: str) -> Result:
    return runner.invoke(
        main, ["inspect", *args, "--timeout", "10"], env={"ADVMON_KAFKA__BOOTSTRAP": bootstrap}
    )


def _topic(bootstrap: str, stem: str, partitions: int = 1) -> str:
    name = unique_name(f"inspect-{stem}")
    asyncio.run(create_topics(bootstrap, {name: partitions}))
    return name


def _json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_cli_native_events_checked_against_the_config(
    runner: CliRunner,
    kafka_bootstrap: str,
    demo_model: DemoModel,
    detector_path: Path,
    tmp_path: Path,
) -> None:
    topic = _topic(kafka_bootstrap, "native")
    image = demo_model.data.test_x[0]
    values = [
        demo_event("fits", image, as_tensor=False, source="u-1"),
        demo_event("tensor", image, as_tensor=True, source="u-2"),
        demo_event("wrong-shape", image[:, :3], as_tensor=False, source="u-3"),
        b"this is no event",
    ]
    asyncio.run(produce(kafka_bootstrap, topic, values, keys=[b"a", b"b", b"c", None]))
    config = _write_config(
        tmp_path / "advmon.yaml",
        [{"id": "digits", "detector": str(detector_path), "topics": [topic]}],
    )
    result = _inspect(runner, kafka_bootstrap, "--topic", topic, "--config", str(config), "--json")
    lines = _json_lines(result)
    assert [(line["offset"], line["key"], line["decoded"]) for line in lines] == [
        (0, "a", True),
        (1, "b", True),
        (2, "c", True),
        (3, None, False),
    ]
    checks = [
        (event["event_id"], event["checked_against_detector"], event["input_problem"])
        for line in lines
        for event in line["events"]
    ]
    assert checks[:2] == [("fits", True, None), ("tensor", True, None)]
    wrong_id, checked, problem = checks[2]
    assert (wrong_id, checked, problem["reason"]) == ("wrong-shape", True, "shape")
    assert lines[3]["error"]["reason"] == "invalid_event"
    summary = normalized(result.stderr)
    assert f"4 message(s) read from topic '{topic}'" in summary
    assert "3 decoded, 1 not; 3 event(s), 1 with an input the worker would refuse" in summary


def test_cli_sagemaker_table(runner: CliRunner, kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap, "sagemaker")
    asyncio.run(
        produce(kafka_bootstrap, topic, [capture_record("sagemaker_csv_batch"), b"{}"], keys=None)
    )
    result = _inspect(runner, kafka_bootstrap, "--topic", topic, "--format", "sagemaker")
    assert result.exit_code == 0, result.output
    out = normalized(result.stdout)
    assert "3 event(s)" in out
    assert "4651a1bf-4b00-4248-a309-4a18b11e4277#2" in out
    assert "churn-batch-0007" in out
    assert "invalid_sagemaker" in out
    assert "2 message(s) read" in result.stderr


def test_cli_mapped_with_a_mapping_file(
    runner: CliRunner, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = _topic(kafka_bootstrap, "mapped")
    asyncio.run(produce(kafka_bootstrap, topic, [orjson.dumps(fixture_json("mapped_custom.json"))]))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(MAPPING))
    args = ["--topic", topic, "--format", "mapped", "--model", "fraud", "--json"]
    (line,) = _json_lines(_inspect(runner, kafka_bootstrap, *args, "--mapping", str(mapping)))
    (event,) = line["events"]
    assert (event["event_id"], event["model_id"], event["source"], event["output_length"]) == (
        "b7c1d2e3-f405-4617-8a9b-0c1d2e3f4a5b",
        "fraud",
        "user-4821",
        2,
    )


def test_cli_a_malformed_mapping_is_one_line(runner: CliRunner) -> None:
    mapping = json.dumps({"event_id": "$.id", "input": "$.x["})
    args = ["--topic", "t", "--format", "mapped", "--mapping", mapping]
    message = assert_clean_failure(_inspect(runner, _NO_BROKER, *args))
    assert message.startswith("--mapping: field 'input': malformed JSONPath '$.x['")


def test_cli_mapped_without_a_mapping_is_a_usage_error(runner: CliRunner) -> None:
    result = _inspect(runner, _NO_BROKER, "--topic", "t", "--format", "mapped")
    assert "format mapped needs --mapping" in assert_clean_failure(result, exit_code=2)


def test_cli_oip_v2_joins_a_pair_and_shows_a_lone_request(
    runner: CliRunner, kafka_bootstrap: str
) -> None:
    topic = _topic(kafka_bootstrap, "oip", partitions=2)
    names = ["kserve_binary_request", "kserve_binary_response", "kserve_structured_request"]
    values, headers = zip(*(kafka_record(name) for name in names), strict=True)
    asyncio.run(
        produce(
            kafka_bootstrap,
            topic,
            [*values, b"garbage"],
            partitions=[0, 1, 0, 1],
            headers=[*headers, []],
        )
    )
    args = ["--topic", topic, "--format", "oip-v2"]
    lines = _json_lines(_inspect(runner, kafka_bootstrap, *args, "--json"))
    by_place = {(line["partition"], line["offset"]): line for line in lines}
    request, lone, response, bad = (by_place[p] for p in [(0, 0), (0, 1), (1, 0), (1, 1)])
    assert request["oip_v2"]["partner"] == {"partition": 1, "offset": 0}
    assert response["oip_v2"]["partner"] == {"partition": 0, "offset": 0}
    assert [e["output_length"] for e in request["events"]] == [3, 3]
    assert (lone["oip_v2"]["id"], lone["oip_v2"]["partner"]) == (MNIST_ID, None)
    assert [e["output_length"] for e in lone["events"]] == [None]
    assert bad["error"]["reason"] == "invalid_json"

    table = _inspect(runner, kafka_bootstrap, *args)
    assert table.exit_code == 0, table.output
    out = normalized(table.stdout)
    assert f"request {IRIS_ID} (input-0 float32 [2, 4]), joined with 1/0: 2 event(s)" in out
    assert f"response {IRIS_ID} (output-0 float32 [2, 3]), joined with 0/0" in out
    assert "halves without a partner among the messages read" in out
    assert MNIST_ID in out
    assert "1 request(s) joined with their response, 1 half(s) alone" in normalized(table.stderr)


def test_cli_reads_the_last_messages_unless_asked_for_the_first(
    runner: CliRunner, kafka_bootstrap: str
) -> None:
    topic = _topic(kafka_bootstrap, "count")
    values = [native(f"e{i}", [i, i + 1]) for i in range(8)]
    asyncio.run(produce(kafka_bootstrap, topic, values))
    args = ["--topic", topic, "--format", "native", "--count", "3", "--json"]
    last = _json_lines(_inspect(runner, kafka_bootstrap, *args))
    first = _json_lines(_inspect(runner, kafka_bootstrap, *args, "--from-beginning"))
    assert [line["offset"] for line in last] == [5, 6, 7]
    assert [line["offset"] for line in first] == [0, 1, 2]
    assert [line["events"][0]["event_id"] for line in first] == ["e0", "e1", "e2"]


def test_cli_reads_one_partition_when_asked(runner: CliRunner, kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap, "partition", partitions=2)
    values = [native(f"e{i}", [i]) for i in range(4)]
    asyncio.run(produce(kafka_bootstrap, topic, values, partitions=[0, 1, 0, 1]))
    args = ["--topic", topic, "--format", "native", "--json"]
    lines = _json_lines(_inspect(runner, kafka_bootstrap, *args, "--partition", "1"))
    assert [(line["partition"], line["events"][0]["event_id"]) for line in lines] == [
        (1, "e1"),
        (1, "e3"),
    ]
    missing = _inspect(runner, kafka_bootstrap, *args, "--partition", "5")
    assert (
        assert_clean_failure(missing)
        == f"topic {topic!r} has no partition 5 (its partitions: 0, 1)"
    )


def test_cli_an_empty_topic_is_said_so(runner: CliRunner, kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap, "empty")
    result = _inspect(runner, kafka_bootstrap, "--topic", topic, "--format", "native")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"topic {topic!r} holds no messages" in result.stderr


def test_cli_an_unknown_topic_names_the_topic_and_the_broker(
    runner: CliRunner, kafka_bootstrap: str
) -> None:
    topic = unique_name("inspect-nowhere")
    result = _inspect(runner, kafka_bootstrap, "--topic", topic, "--format", "native")
    assert assert_clean_failure(result) == (
        f"topic {topic!r} does not exist on the Kafka cluster at {kafka_bootstrap}"
    )


def test_cli_an_unreachable_broker_is_one_line(runner: CliRunner) -> None:
    bootstrap = f"127.0.0.1:{free_loopback_port()}"
    result = runner.invoke(
        main,
        ["inspect", "--topic", "t", "--format", "native", "--timeout", "2"],
        env={"ADVMON_KAFKA__BOOTSTRAP": bootstrap},
    )
    message = assert_clean_failure(result)
    assert message.startswith(f"no Kafka broker answered at {bootstrap}")


def test_cli_exports_decoded_traffic_that_calibrates_a_detector(
    runner: CliRunner, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """KServe logs of benign traffic → ``inspect --export`` → ``calibrate --events``: the
    same detector as calibrating on the rows themselves."""
    case = build_cancer_case(tmp_path)
    rows = case.benign[:150]
    topic = _topic(kafka_bootstrap, "export", partitions=2)
    values, headers, partitions = [], [], []
    for i, row in enumerate(rows):
        ce_id = f"cal-{i}"
        values += [
            v2_request(tensor("X", [1, len(row)], "FP32", row.tolist())),
            v2_response(tensor("p", [1, 2], "FP32", [0.4, 0.6])),
        ]
        headers += [binary_headers(ce_id), binary_headers(ce_id, kind="response")]
        partitions += [i % 2, 1 - i % 2]
    values.append(b"not a cloudevent")
    headers.append([])
    partitions.append(0)
    asyncio.run(produce(kafka_bootstrap, topic, values, headers=headers, partitions=partitions))
    exported = tmp_path / "benign.jsonl"
    result = _inspect(
        runner,
        kafka_bootstrap,
        "--topic",
        topic,
        "--format",
        "oip-v2",
        "--from-beginning",
        "--count",
        "1000",
        "--export",
        str(exported),
    )
    assert result.exit_code == 0, result.output
    assert "wrote 150 event(s)" in result.stderr
    assert result.stdout == ""  # no per-message tables when exporting
    lines = exported.read_bytes().splitlines()
    assert len(lines) == 150
    calibrated = tmp_path / "detector.json"
    result = runner.invoke(
        main,
        [
            "calibrate",
            "--model",
            str(case.model_path),
            "--events",
            str(exported),
            "--out",
            str(calibrated),
            "--squeezers",
            "preset",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    reference = calibrate_detector(
        case.model_path,
        lambda: [rows],
        device="cpu",
    )
    assert DetectorConfig.load(calibrated).threshold == pytest.approx(reference.threshold)
