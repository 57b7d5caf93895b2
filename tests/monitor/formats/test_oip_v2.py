"""Open Inference Protocol v2 bodies logged by KServe as CloudEvents on Kafka (``oip-v2``).

Sources of the fixture shapes:

- KServe's payload logger, kserve/kserve ``pkg/logger/handler.go`` and ``worker.go``: the
  ``org.kubeflow.serving.inference.request`` / ``.response`` types, one id for both, the
  extensions ``inferenceservicename``, ``namespace``, ``component``, ``endpoint``,
  ``metadata``; the logged ``Content-Type`` is the request's, for both events.
- kserve/kserve ``docs/samples/logger/basic/README.md``: a logged pair as the Knative
  event display prints it (nanosecond ``time``, empty ``endpoint``, ``traceparent``).
- cloudevents/spec ``cloudevents/bindings/kafka-protocol-binding.md``: ``ce_`` headers and
  ``content-type`` in binary mode, ``application/cloudevents+json`` in structured mode.
- kserve/open-inference-protocol ``specification/protocol/inference_rest.md``: request,
  response and tensor objects, flat or nested ``data``, the datatype table.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson
import pytest

from monitor.formats import (
    FormatError,
    FormatErrorReason,
    OipMessage,
    decode_oip_v2,
    oip_v2_events,
)
from schemas import TensorDType, TensorPayload
from tests.monitor.formats.kafka_records import (
    Headers,
    binary_headers,
    kafka_record,
    tensor,
    v2_request,
    v2_response,
)

IRIS_ID = "823248cc-d770-4a51-9606-16803395569c"
IRIS_INPUT = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float32)
IRIS_OUTPUT = np.array([[0.0125, 0.8125, 0.175], [0.03125, 0.65625, 0.3125]], dtype=np.float32)


def _decode(name: str) -> OipMessage:
    return decode_oip_v2(*kafka_record(name))


def _request(*inputs: dict[str, Any], ce_id: str = "req-1", **members: Any) -> OipMessage:
    return decode_oip_v2(v2_request(*inputs, **members), binary_headers(ce_id))


def _response(*outputs: dict[str, Any], ce_id: str = "req-1", **members: Any) -> OipMessage:
    return decode_oip_v2(v2_response(*outputs, **members), binary_headers(ce_id, "response"))


def _payload_array(payload: Any) -> np.ndarray:
    assert isinstance(payload, TensorPayload)
    wire = np.dtype(payload.dtype.value).newbyteorder("<")
    return np.frombuffer(payload.to_bytes(), dtype=wire).reshape(payload.shape)


def _reason_of(value: bytes, headers: Headers) -> FormatErrorReason:
    with pytest.raises(FormatError) as caught:
        decode_oip_v2(value, headers)
    return caught.value.reason


# --- KServe's binary-mode pair (Knative Kafka Broker) -------------------------------------


def test_binary_request_gives_its_cloudevent_attributes_and_tensors() -> None:
    """A request as KServe logs it and a Knative Kafka Broker stores it (binary mode)."""
    message = _decode("kserve_binary_request")
    assert message.id == IRIS_ID
    assert message.kind == "request"
    assert message.source == "http://localhost:9081/"
    # Go's RFC3339Nano time, truncated to microseconds.
    assert message.time == datetime(2024, 5, 1, 12, 0, 0, 78952, tzinfo=UTC)
    assert message.attributes == {
        "specversion": "1.0",
        "id": IRIS_ID,
        "source": "http://localhost:9081/",
        "type": "org.kubeflow.serving.inference.request",
        "time": "2024-05-01T12:00:00.078952901Z",
        "datacontenttype": "application/json",
        "inferenceservicename": "sklearn-v2-iris",
        "namespace": "default",
        "component": "predictor",
        "endpoint": "",
        "metadata": "{}",
        "traceparent": "00-90bdf848647d50283394155d2df58f19-84dacdfdf07cadfc-00",
    }
    assert list(message.tensors) == ["input-0"]
    array = message.tensors["input-0"]
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, IRIS_INPUT)
    assert message.model_name is None
    assert message.model_version is None
    assert message.body_id == IRIS_ID
    assert message.parameters == {"source": "apikey-7f3a"}


def test_binary_response_gives_model_name_version_and_outputs() -> None:
    """The response event of the same inference: same CloudEvent id, the response type."""
    message = _decode("kserve_binary_response")
    assert (message.id, message.kind) == (IRIS_ID, "response")
    assert message.time == datetime(2024, 5, 1, 12, 0, 0, 80736, tzinfo=UTC)
    assert (message.model_name, message.model_version) == ("sklearn-v2-iris", "v1.0.0")
    assert message.parameters == {}  # "parameters": null
    np.testing.assert_array_equal(message.tensors["output-0"], IRIS_OUTPUT)


def test_binary_pair_gives_one_event_per_batch_row() -> None:
    """Joined on the CloudEvent id, the iris batch of two gives two events."""
    request, response = _decode("kserve_binary_request"), _decode("kserve_binary_response")
    events = oip_v2_events(request, response, model_id="iris", source_parameters=("source", "user"))
    assert [e.event_id for e in events] == [f"{IRIS_ID}#0", f"{IRIS_ID}#1"]
    for row, event in enumerate(events):
        assert event.model_id == "iris"
        assert event.request_id == IRIS_ID
        assert event.model_version == "v1.0.0"
        assert event.source == "apikey-7f3a"
        assert event.ts == response.time  # when serving answered
        assert isinstance(event.input, TensorPayload)
        assert (event.input.dtype, event.input.shape) == (TensorDType.FLOAT32, [4])
        assert event.input.to_bytes() == IRIS_INPUT[row].astype("<f4").tobytes()
        assert event.output == IRIS_OUTPUT[row].astype(np.float64).tolist()


def test_request_alone_gives_events_without_output_dated_by_the_request() -> None:
    """Logger mode ``request`` (or a failed inference) logs no response."""
    request = _decode("kserve_binary_request")
    events = oip_v2_events(request, None, model_id="iris")
    assert [e.output for e in events] == [None, None]
    assert [e.ts for e in events] == [request.time, request.time]
    assert [e.model_version for e in events] == [None, None]


# --- Structured mode (Knative KafkaSink's default) -----------------------------------------


def test_structured_pair_with_embedded_json_data() -> None:
    """Structured mode: the whole CloudEvent as JSON, the v2 body embedded under ``data``."""
    request, response = _decode("kserve_structured_request"), _decode("kserve_structured_response")
    assert request.id == response.id == "5f4bd1e0-3c1e-4f8e-9a57-2b1a7c0d9e11"
    assert request.attributes["namespace"] == "models"
    assert request.attributes["datacontenttype"] == "application/json"
    assert request.body_id == response.body_id == "42"
    assert request.time == datetime(2024, 5, 1, 12, 0, 1, 500000, tzinfo=UTC)
    assert request.tensors["pixels"].dtype == np.uint8
    (event,) = oip_v2_events(request, response, model_id="mnist")
    assert event.event_id == request.id  # a batch of one keeps the id as it is
    assert isinstance(event.input, TensorPayload)
    assert (event.input.dtype, event.input.shape) == (TensorDType.UINT8, [2, 3])
    assert event.input.to_bytes() == bytes([0, 17, 255, 128, 64, 3])
    assert event.output == [-1.5, 0.25, 3.0, -0.125]
    assert event.model_version == "3"
    assert event.ts == datetime(2024, 5, 1, 12, 0, 1, 625000, tzinfo=UTC)
    assert event.source is None


def test_structured_data_base64_is_read_whatever_the_content_type() -> None:
    """``curl -d`` sends ``application/x-www-form-urlencoded``; KServe logs that type, and a
    structured event then carries the JSON body as ``data_base64``."""
    message = _decode("kserve_structured_base64_request")
    assert message.attributes["datacontenttype"] == "application/x-www-form-urlencoded"
    assert message.tensors["features"].dtype == np.float64
    np.testing.assert_array_equal(message.tensors["features"], [[0.5, -2.25, 0.001]])


def test_structured_data_given_as_a_json_string_is_parsed() -> None:
    body = v2_request(tensor("x", [1, 2], "FP32", [1, 2])).decode()
    envelope = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "/kserve",
        "type": "org.kubeflow.serving.inference.request",
        "data": body,
    }
    message = decode_oip_v2(orjson.dumps(envelope), [])
    np.testing.assert_array_equal(message.tensors["x"], [[1.0, 2.0]])
    assert message.time is None


def test_http_style_headers_are_read_case_insensitively() -> None:
    """A bridge that copies the HTTP binding's ``Ce-*`` headers: accepted as ``ce_*``."""
    message = _decode("kserve_binary_multi_input_request")
    assert message.id == "0009174a-24a8-4603-b098-09c8799950e9"
    assert message.attributes["metadata"] == '{"X-User-Id":["u-4821"]}'
    assert message.attributes["endpoint"] == "canary"
    assert message.time == datetime(2024, 5, 1, 12, 0, 2, 500000, timezone(timedelta(hours=2)))
    assert message.body_id is None


# --- Several inputs, datatypes, nesting ------------------------------------------------------


def test_several_inputs_need_a_name_and_the_named_one_is_used() -> None:
    """A request with three inputs (INT64, BOOL and UINT32), as a multi-input model takes."""
    request = _decode("kserve_binary_multi_input_request")
    assert list(request.tensors) == ["token_ids", "attention_mask", "amount_cents"]
    with pytest.raises(FormatError) as caught:
        oip_v2_events(request, None, model_id="fraud")
    assert caught.value.reason == FormatErrorReason.AMBIGUOUS_TENSOR
    assert "'token_ids', 'attention_mask', 'amount_cents'" in str(caught.value)
    assert "input_name" in str(caught.value)

    masks = oip_v2_events(request, None, model_id="fraud", input_name="attention_mask")
    assert [e.event_id for e in masks] == [f"{request.id}#{i}" for i in range(3)]
    assert [_payload_array(e.input).tolist() for e in masks] == [
        [True, True],
        [True, False],
        [True, True],
    ]
    tokens = oip_v2_events(request, None, model_id="fraud", input_name="token_ids")
    assert [_payload_array(e.input).tolist() for e in tokens] == [
        [101, 2023],
        [101, 7592],
        [101, 102],
    ]
    assert {e.input.dtype for e in tokens if isinstance(e.input, TensorPayload)} == {
        TensorDType.INT64
    }
    amounts = oip_v2_events(request, None, model_id="fraud", input_name="amount_cents")
    assert [_payload_array(e.input).tolist() for e in amounts] == [1999, 250000, 4294967295]
    assert all(isinstance(e.input, TensorPayload) and e.input.shape == [] for e in amounts)

    with pytest.raises(FormatError) as unknown:
        oip_v2_events(request, None, model_id="fraud", input_name="pixels")
    assert unknown.value.reason == FormatErrorReason.UNKNOWN_TENSOR
    assert "'pixels'" in str(unknown.value)


def test_several_outputs_need_a_name() -> None:
    request = _request(tensor("x", [1, 2], "FP32", [1, 2]))
    response = _response(
        tensor("label", [1], "INT64", [1]), tensor("probs", [1, 2], "FP32", [0.25, 0.75])
    )
    with pytest.raises(FormatError) as caught:
        oip_v2_events(request, response, model_id="m")
    assert caught.value.reason == FormatErrorReason.AMBIGUOUS_TENSOR
    assert "output_name" in str(caught.value)
    (event,) = oip_v2_events(request, response, model_id="m", output_name="probs")
    assert event.output == [0.25, 0.75]
    (labelled,) = oip_v2_events(request, response, model_id="m", output_name="label")
    assert labelled.output == [1.0]


@pytest.mark.parametrize(
    "data",
    [
        [1, 2, 3, 4, 5, 6],
        [[1, 2, 3], [4, 5, 6]],
    ],
    ids=["flat", "nested"],
)
def test_flat_and_nested_data_give_the_same_tensor(data: list[Any]) -> None:
    message = _request(tensor("x", [2, 3], "FP64", data))
    np.testing.assert_array_equal(message.tensors["x"], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("BOOL", [True, False], np.bool_),
        ("BOOL", [1, 0], np.bool_),
        ("UINT8", [0, 255], np.uint8),
        ("UINT16", [0, 65535], np.uint16),
        ("UINT32", [0, 4294967295], np.uint32),
        ("UINT64", [0, 18446744073709551615], np.uint64),
        ("INT8", [-128, 127], np.int8),
        ("INT16", [-32768, 32767], np.int16),
        ("INT32", [-2147483648, 2147483647], np.int32),
        ("INT64", [-9223372036854775808, 9223372036854775807], np.int64),
        ("INT32", [3.0, -4.0], np.int32),
        ("INT64", [1.0, 9007199254740993], np.int64),
        ("FP16", [0.5, -65504.0], np.float16),
        ("FP32", [0.1, 3], np.float32),
        ("FP64", [0.1, -2.5e300], np.float64),
    ],
)
def test_every_numeric_datatype_decodes_exactly(
    datatype: str, data: list[Any], dtype: type[np.generic]
) -> None:
    """The spec's datatype table, BYTES aside; integral floats are accepted for integers."""
    request = _request(tensor("x", [2], datatype, data), tensor("y", [2], datatype, data))
    array = request.tensors["x"]
    assert array.dtype == dtype
    np.testing.assert_array_equal(array, np.array(data, dtype=object).astype(dtype))
    events = oip_v2_events(request, None, model_id="m", input_name="x")
    assert [_payload_array(e.input).item() for e in events] == array.tolist()
    assert all(
        isinstance(e.input, TensorPayload) and e.input.dtype == TensorDType(np.dtype(dtype).name)
        for e in events
    )


def test_the_caller_is_read_only_where_the_operator_trusts_it() -> None:
    x = tensor("x", [1, 1], "FP32", [1])
    claims = {"source": "victim-1", "user": "u"}
    # By default the body's parameters are not read: the client writes them.
    assert oip_v2_events(_request(x, parameters=claims), None, model_id="m")[0].source is None
    opted_in = ("source", "user")

    def source(request: OipMessage, **where: Any) -> str | None:
        return oip_v2_events(request, None, model_id="m", **where)[0].source

    assert source(_request(x, parameters={"user": 17}), source_parameters=opted_in) == "17"
    assert source(_request(x, parameters=claims), source_parameters=opted_in) == "victim-1"
    assert source(_request(x), source_parameters=opted_in) is None
    assert source(_request(x, parameters={"user": True}), source_parameters=opted_in) is None
    # A trusted CloudEvent attribute wins over whatever the body claims.
    trusted = replace(_request(x, parameters=claims), attributes={"authuser": "alice"})
    where = {"source_attribute": "AuthUser", "source_parameters": opted_in}
    assert source(trusted, **where) == "alice"


def test_an_empty_batch_gives_no_events() -> None:
    request = _request(tensor("x", [0, 4], "FP32", []))
    assert request.tensors["x"].shape == (0, 4)
    assert oip_v2_events(request, None, model_id="m") == []


def test_response_time_missing_falls_back_to_request_time() -> None:
    request = _request(tensor("x", [1, 1], "FP32", [1]))
    response = decode_oip_v2(
        v2_response(tensor("y", [1, 1], "FP32", [2])), binary_headers(kind="response", time=None)
    )
    (event,) = oip_v2_events(request, response, model_id="m")
    assert event.ts == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert event.output == [2.0]


# --- Errors ------------------------------------------------------------------------------


def _without(headers: Headers, name: str) -> Headers:
    return [(key, value) for key, value in headers if key != name]


def _replace(headers: Headers, name: str, value: bytes) -> Headers:
    return [*_without(headers, name), (name, value)]


_BODY = v2_request(tensor("x", [1, 2], "FP32", [1, 2]))
_HEADERS = binary_headers()
_CE = FormatErrorReason.INVALID_CLOUDEVENT


def assert_refused(value: bytes, headers: Headers, reason: FormatErrorReason, says: str) -> None:
    """The record is refused with ``reason`` and a message that says ``says``."""
    with pytest.raises(FormatError) as caught:
        decode_oip_v2(value, headers)
    assert caught.value.reason == reason
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("value", "headers", "reason", "says"),
    [
        (b"{not json", _HEADERS, FormatErrorReason.INVALID_JSON, "message value"),
        (b"", _HEADERS, _CE, "no data"),
        (_BODY, _without(_HEADERS, "ce_id"), _CE, "ce_id"),
        (_BODY, _without(_HEADERS, "ce_source"), _CE, "ce_source"),
        (_BODY, _without(_HEADERS, "ce_type"), _CE, "ce_type"),
        (_BODY, _without(_HEADERS, "ce_specversion"), _CE, "ce_specversion"),
        (_BODY, _replace(_HEADERS, "ce_id", b""), _CE, "'id'"),
        (_BODY, _replace(_HEADERS, "ce_specversion", b"0.3"), _CE, "'0.3'"),
        (_BODY, _replace(_HEADERS, "ce_time", b"yesterday"), _CE, "ce_time"),
        (_BODY, _replace(_HEADERS, "ce_time", b"2024-05-01T12:00:00"), _CE, "offset"),
        (_BODY, _replace(_HEADERS, "ce_type", b"com.example.other"), _CE, "com.example.other"),
        (_BODY, [*_HEADERS, ("ce-id", b"other")], _CE, "two values"),
        (_BODY, [*_HEADERS, ("ce_namespace", b"\xff\xfe")], _CE, "ce_namespace"),
        (_BODY, [("content-type", b"application/json")], _CE, "no CloudEvent found"),
        (_BODY, [], _CE, "no CloudEvent found"),
    ],
)
def test_cloudevent_problems_name_the_header(
    value: bytes, headers: Headers, reason: FormatErrorReason, says: str
) -> None:
    assert_refused(value, headers, reason, says)


def test_repeated_header_with_the_same_value_is_accepted() -> None:
    message = decode_oip_v2(_BODY, [*_HEADERS, ("ce-id", b"req-1"), ("CE_ID", b"req-1")])
    assert message.id == "req-1"


def _structured(**members: Any) -> bytes:
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "/kserve",
        "type": "org.kubeflow.serving.inference.request",
    }
    envelope.update(members)
    return orjson.dumps({k: v for k, v in envelope.items() if v is not None})


_STRUCTURED = [("content-type", b"application/cloudevents+json")]
_ENCODED = base64.b64encode(_BODY).decode()


@pytest.mark.parametrize(
    ("value", "headers", "reason", "says"),
    [
        (
            _structured(data=orjson.loads(_BODY)),
            [("content-type", b"application/cloudevents+avro")],
            _CE,
            "avro",
        ),
        (_structured(data=orjson.loads(_BODY), data_base64=_ENCODED), _STRUCTURED, _CE, "both"),
        (_structured(data_base64="not base64!"), _STRUCTURED, _CE, "data_base64"),
        (
            _structured(data_base64=base64.b64encode(b"{oops").decode()),
            _STRUCTURED,
            FormatErrorReason.INVALID_JSON,
            "data_base64",
        ),
        (_structured(data_base64=17), _STRUCTURED, _CE, "data_base64"),
        (_structured(), _STRUCTURED, _CE, "no 'data'"),
        (_structured(id=None, data=orjson.loads(_BODY)), _STRUCTURED, _CE, "'id'"),
        (_structured(source=7, data=orjson.loads(_BODY)), _STRUCTURED, _CE, "'source'"),
        (_structured(time="noon", data=orjson.loads(_BODY)), _STRUCTURED, _CE, "member 'time'"),
        (
            _structured(data="{not json"),
            _STRUCTURED,
            FormatErrorReason.INVALID_JSON,
            "member 'data'",
        ),
        (b"[1, 2]", _STRUCTURED, _CE, "no CloudEvent found"),
        (b"{oops", _STRUCTURED, FormatErrorReason.INVALID_JSON, "structured CloudEvent"),
    ],
)
def test_structured_cloudevent_problems(
    value: bytes, headers: Headers, reason: FormatErrorReason, says: str
) -> None:
    assert_refused(value, headers, reason, says)


def test_structured_extension_values_of_other_json_types_become_text() -> None:
    value = _structured(data=orjson.loads(_BODY), retries=2, sampled=True, labels={"a": 1})
    message = decode_oip_v2(value, _STRUCTURED)
    assert message.attributes["retries"] == "2"
    assert message.attributes["sampled"] == "true"
    assert message.attributes["labels"] == '{"a":1}'


_INVALID = FormatErrorReason.INVALID_OIP_V2
_SHAPE = FormatErrorReason.SHAPE_MISMATCH
_DATATYPE = FormatErrorReason.UNSUPPORTED_DATATYPE


@pytest.mark.parametrize(
    ("body", "reason", "says"),
    [
        (b'{"instances": [[6.8, 2.8, 4.8, 1.4]]}', _INVALID, "KServe V1"),
        (b'{"inputs": "x"}', _INVALID, "'inputs'"),
        (b"[1, 2]", _INVALID, "JSON object"),
        (v2_request({"name": "x", "datatype": "FP32", "data": [1]}), _INVALID, "'inputs.0.shape'"),
        (v2_request(tensor("x", [-1, 2], "FP32", [1, 2])), _INVALID, "'inputs.0.shape.0'"),
        (v2_request(tensor("x", [1, 2], "FP32", None)), _INVALID, "no 'data'"),
        (
            v2_request(
                {**tensor("x", [1, 2], "FP32", None), "parameters": {"binary_data_size": 8}}
            ),
            _INVALID,
            "binary tensor data extension",
        ),
        (v2_request(tensor("x", [1], "BYTES", ["hello"])), _DATATYPE, "BYTES"),
        (v2_request(tensor("x", [1], "BF16", [1.0])), _DATATYPE, "'BF16'"),
        (v2_request(tensor("x", [2, 2], "FP32", [1, 2, 3])), _SHAPE, "3 elements"),
        (v2_request(tensor("x", [2, 2], "FP32", [[1, 2, 3], [4, 5, 6]])), _SHAPE, "nested"),
        (v2_request(tensor("x", [1, 2, 2], "FP32", [[1, 2], [3, 4]])), _SHAPE, "nested"),
        (v2_request(tensor("x", [2, 2], "FP32", [[1, 2], [3]])), _SHAPE, "ragged"),
        (v2_request(tensor("x", [2], "FP32", 1.5)), _INVALID, "JSON array"),
        (v2_request(tensor("x", [2], "FP32", ["1.5", "2"])), _INVALID, "not FP32 numbers"),
        (v2_request(tensor("x", [2], "FP32", [1, None])), _INVALID, "not FP32 numbers"),
        (v2_request(tensor("x", [2], "FP32", [True, False])), _INVALID, "true/false"),
        (v2_request(tensor("x", [1], "FP32", [1e39])), _INVALID, "FP32 range"),
        (v2_request(tensor("x", [1], "FP16", [70000])), _INVALID, "FP16 range"),
        (v2_request(tensor("x", [2], "INT32", [1.5, 2])), _INVALID, "non-integer"),
        (v2_request(tensor("x", [1], "UINT8", [300])), _INVALID, "UINT8 range"),
        (v2_request(tensor("x", [1], "UINT32", [-1])), _INVALID, "UINT32 range"),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", '
            b'"data": [18446744073709551616]}]}',
            _INVALID,
            "INT64 range",
        ),
        (v2_request(tensor("x", [1], "BOOL", [2])), _INVALID, "true/false"),
        (v2_request(tensor("x", [1], "BOOL", [0.5])), _INVALID, "true/false"),
        (
            v2_request(tensor("x", [1], "FP32", [1]), tensor("x", [1], "FP32", [2])),
            _INVALID,
            "appears twice",
        ),
    ],
)
def test_body_problems_name_the_tensor_and_field(
    body: bytes, reason: FormatErrorReason, says: str
) -> None:
    with pytest.raises(FormatError) as caught:
        decode_oip_v2(body, _HEADERS)
    assert caught.value.reason == reason
    assert says in str(caught.value)
    assert "req-1" in str(caught.value)


def test_a_v1_response_is_named_as_such() -> None:
    with pytest.raises(FormatError) as caught:
        decode_oip_v2(b'{"predictions": [1, 1]}', binary_headers(kind="response"))
    assert caught.value.reason == _INVALID
    assert "'predictions'" in str(caught.value)


def test_join_problems() -> None:
    x = tensor("x", [2, 1], "FP32", [1, 2])
    request = _request(x, ce_id="a")
    with pytest.raises(FormatError) as other_id:
        oip_v2_events(request, _response(x, ce_id="b"), model_id="m")
    assert other_id.value.reason == FormatErrorReason.JOIN_MISMATCH
    assert "request 'a' and response 'b'" in str(other_id.value)
    with pytest.raises(FormatError) as swapped:
        oip_v2_events(_response(x, ce_id="a"), None, model_id="m")
    assert swapped.value.reason == FormatErrorReason.JOIN_MISMATCH
    with pytest.raises(FormatError) as two_requests:
        oip_v2_events(request, request, model_id="m")
    assert two_requests.value.reason == FormatErrorReason.JOIN_MISMATCH


@pytest.mark.parametrize(
    ("request_tensor", "response_tensor"),
    [
        (tensor("x", [2, 1], "FP32", [1, 2]), tensor("y", [3, 1], "FP32", [1, 2, 3])),
        (tensor("x", [2, 1], "FP32", [1, 2]), tensor("y", [], "FP32", [1])),
        (tensor("x", [], "FP32", [1]), None),
    ],
)
def test_batch_axis_problems(
    request_tensor: dict[str, Any], response_tensor: dict[str, Any] | None
) -> None:
    request = _request(request_tensor)
    response = _response(response_tensor) if response_tensor is not None else None
    with pytest.raises(FormatError) as caught:
        oip_v2_events(request, response, model_id="m")
    assert caught.value.reason == FormatErrorReason.SHAPE_MISMATCH


def test_a_request_with_no_inputs_is_invalid() -> None:
    with pytest.raises(FormatError) as caught:
        oip_v2_events(decode_oip_v2(b'{"inputs": []}', _HEADERS), None, model_id="m")
    assert caught.value.reason == _INVALID


def test_an_event_breaking_the_native_contract_is_reported() -> None:
    with pytest.raises(FormatError) as caught:
        oip_v2_events(_request(tensor("x", [1, 1], "FP32", [1])), None, model_id="")
    assert caught.value.reason == FormatErrorReason.INVALID_EVENT
    assert "model_id" in str(caught.value)
