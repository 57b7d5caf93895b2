"""SageMaker Data Capture records, one per Kafka message (format ``sagemaker``).

Sources of the fixture shapes:

- AWS docs, "Data capture" / "Capture data from real-time endpoint": the JSON Lines record
  ``captureData.endpointInput`` / ``endpointOutput`` (``observedContentType``, ``mode``,
  ``data``, ``encoding``), ``eventMetadata`` and ``eventVersion``; ``CaptureContentTypeHeader``
  decides CSV/JSON text capture, anything else is BASE64.
- AWS docs, "Ingest Ground Truth labels and merge them with predictions": ``inferenceId``
  (the caller's ``InferenceId``) beside the generated ``eventId``.
- The records printed in the SageMaker Model Monitor examples: a Boston-housing XGBoost
  CSV capture (``"observedContentType":"text/csv; charset=utf-8"`` output), and a churn
  capture with BASE64 ``text/csv`` input; SageMaker built-in algorithms' JSON layout
  ``{"instances": [{"features": [...]}]}`` / ``{"predictions": [{"score": ...}]}``.
- The SageMaker Python SDK's ``NumpySerializer``: ``application/x-npy`` bodies.
"""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from monitor.formats import FormatError, FormatErrorReason, sagemaker_events
from schemas import InferenceEvent, TensorDType, TensorPayload
from tests.monitor.formats.kafka_records import capture_record


def _capture(data: str, content_type: str, encoding: str, mode: str) -> dict[str, str]:
    return {"observedContentType": content_type, "mode": mode, "data": data, "encoding": encoding}


def _record(
    input_data: str | None,
    input_type: str = "text/csv",
    input_encoding: str = "CSV",
    output_data: str | None = None,
    output_type: str = "text/csv; charset=utf-8",
    output_encoding: str = "CSV",
    **metadata: Any,
) -> bytes:
    captured: dict[str, Any] = {}
    if input_data is not None:
        captured["endpointInput"] = _capture(input_data, input_type, input_encoding, "INPUT")
    if output_data is not None:
        captured["endpointOutput"] = _capture(output_data, output_type, output_encoding, "OUTPUT")
    event_metadata = {"eventId": "ev-1", "inferenceTime": "2024-05-01T12:00:00Z", **metadata}
    return orjson.dumps(
        {"captureData": captured, "eventMetadata": event_metadata, "eventVersion": "0"}
    )


def _json_record(body: Any, output: Any = None) -> bytes:
    return _record(
        orjson.dumps(body).decode(),
        "application/json",
        "JSON",
        orjson.dumps(output).decode() if output is not None else None,
        "application/json",
        "JSON",
    )


def _npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def _npy_record(array: np.ndarray) -> bytes:
    return _record(_npy(array), "application/x-npy", "BASE64")


def _events(value: bytes) -> list[InferenceEvent]:
    return sagemaker_events(value, model_id="model-a")


# --- Real-shaped records ------------------------------------------------------------------


def test_csv_record_with_one_row() -> None:
    """XGBoost regression capture, as in the Model Monitor examples (CSV in, CSV out)."""
    (event,) = _events(capture_record("sagemaker_csv"))
    assert event.event_id == "8f45e35c-fa44-40d2-8ed3-1bcab3a596f3"
    assert event.request_id == event.event_id  # no inferenceId
    assert event.model_id == "model-a"
    assert event.ts == datetime(2020, 7, 30, 13, 36, 30, tzinfo=UTC)
    # fmt: off
    assert event.input == [
        0.00632, 18.0, 2.31, 0.0, 0.538, 6.575, 65.2, 4.09, 1.0, 296.0, 15.3, 4.98,
    ]
    # fmt: on
    assert event.output == [30.4133586884]
    assert (event.source, event.model_version) == (None, None)


def test_csv_record_with_a_batch_gives_one_event_per_line() -> None:
    """A three-line CSV body, the caller's InferenceId, newline-separated scores."""
    events = _events(capture_record("sagemaker_csv_batch"))
    base = "4651a1bf-4b00-4248-a309-4a18b11e4277"
    assert [e.event_id for e in events] == [f"{base}#0", f"{base}#1", f"{base}#2"]
    assert {e.request_id for e in events} == {"churn-batch-0007"}
    assert [e.input for e in events] == [
        [132.0, 25.0, 113.2, 96.0],
        [69.0, 0.0, 153.7, 84.0],
        [51.0, 0.0, 250.5, 90.0],
    ]
    assert [e.output for e in events] == [[0.019], [0.9121], [0.45]]
    assert {e.ts for e in events} == {datetime(2021, 9, 27, 3, 47, 25, tzinfo=UTC)}


def test_json_record_in_the_built_in_algorithm_layout() -> None:
    """``{"instances": [{"features": ...}]}`` in, ``{"predictions": [{"score": ...}]}`` out."""
    events = _events(capture_record("sagemaker_json"))
    assert [e.event_id for e in events] == [
        "a1b2c3d4-e5f6-7890-abcd-ef1234567890#0",
        "a1b2c3d4-e5f6-7890-abcd-ef1234567890#1",
    ]
    assert {e.request_id for e in events} == {"loan-81"}
    assert [e.input for e in events] == [[1.5, 16.0, 14.0, 23.0], [0.5, 2.0, 4.0, 3.0]]
    assert [e.output for e in events] == [[0.98], [0.0625]]
    assert events[0].ts == datetime(2025, 11, 15, 10, 30, 45, 123000, tzinfo=UTC)


def test_base64_json_record() -> None:
    """No CaptureContentTypeHeader: SageMaker captures the JSON bodies as BASE64."""
    events = _events(capture_record("sagemaker_base64_json"))
    assert [e.input for e in events] == [[0.0, 0.5, 1.0], [0.25, 0.75, 0.125]]
    assert [e.output for e in events] == [[0.1, 0.9], [0.75, 0.25]]


def test_base64_csv_record() -> None:
    """CSV captured as BASE64, with a JSON ``{"predictions": [...]}`` answer."""
    (event,) = _events(capture_record("sagemaker_base64_csv"))
    assert event.event_id == "d5c7e9f1-0a2b-4c6d-8e0f-1a3b5c7d9e1f"
    assert event.input == [6.0, 148.0, 72.0, 35.0, 0.0, 33.6, 0.627, 50.0]
    assert event.output == [1.0]


def test_npy_record_keeps_the_dtype() -> None:
    """``application/x-npy`` bodies (the SDK's NumpySerializer): a batch of two uint8 images."""
    events = _events(capture_record("sagemaker_npy"))
    images = [[[0, 255], [17, 128]], [[1, 2], [3, 4]]]
    for event, image in zip(events, images, strict=True):
        assert isinstance(event.input, TensorPayload)
        assert (event.input.dtype, event.input.shape) == (TensorDType.UINT8, [2, 2])
        assert event.input.to_bytes() == np.array(image, dtype=np.uint8).tobytes()
    assert [e.output for e in events] == [[2.5, -1.0], [0.0, 4.0]]


def test_big_endian_npy_rows_become_little_endian_payloads() -> None:
    (event,) = _events(_npy_record(np.array([[1.5, -2.0, 3.25]], dtype=">f4")))
    assert isinstance(event.input, TensorPayload)
    assert (event.input.dtype, event.input.shape) == (TensorDType.FLOAT32, [3])
    assert event.input.to_bytes() == np.array([1.5, -2.0, 3.25], dtype="<f4").tobytes()


def test_a_one_dimensional_npy_array_is_one_row() -> None:
    (event,) = _events(_npy_record(np.array([True, False])))
    assert isinstance(event.input, TensorPayload)
    assert (event.input.dtype, event.input.shape) == (TensorDType.BOOL, [2])
    assert event.input.to_bytes() == b"\x01\x00"


def _npz() -> str:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros(2))
    return base64.b64encode(buffer.getvalue()).decode()


def _pickled_npy() -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (_npy(np.zeros((2, 3), dtype=np.float32))[:40], ".npy"),
        (_npz(), ".npz archive"),
        (_pickled_npy(), "allow_pickle"),
    ],
    ids=["truncated", "npz", "pickled-objects"],
)
def test_npy_bodies_that_are_not_plain_arrays_are_refused(data: str, says: str) -> None:
    """Pickled object arrays are never loaded: a capture is untrusted input."""
    with pytest.raises(FormatError) as caught:
        _events(_record(data, "application/x-npy", "BASE64"))
    assert caught.value.reason == FormatErrorReason.INVALID_SAGEMAKER
    assert says in str(caught.value)


# --- Layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        ([0.5, 1.5, 2.5], [[0.5, 1.5, 2.5]]),
        (7, [[7.0]]),
        ([[1, 2], [3, 4]], [[1.0, 2.0], [3.0, 4.0]]),
        ([[[1, 2], [3, 4]]], [[[1.0, 2.0], [3.0, 4.0]]]),
        ([1.5, [2.5]], [[1.5], [2.5]]),
        ({"instances": [[1, 2], [3, 4]]}, [[1.0, 2.0], [3.0, 4.0]]),
        ({"instances": [1, 2]}, [[1.0], [2.0]]),
        ({"instances": [{"features": [1, 2]}]}, [[1.0, 2.0]]),
        ({"inputs": [[1, 2], [3, 4]]}, [[1.0, 2.0], [3.0, 4.0]]),
        ({"inputs": {"pixels": [[[0, 1], [1, 0]]]}}, [[[0.0, 1.0], [1.0, 0.0]]]),
    ],
)
def test_understood_json_input_layouts(body: Any, rows: list[Any]) -> None:
    """A flat list is one row; lists of rows, instances and columnar inputs are batches."""
    assert [e.input for e in _events(_json_record(body))] == rows


def test_json_lines_input_and_output() -> None:
    events = _events(
        _record(
            '[1, 2]\n\n{"features": [3, 4]}\n',
            "application/jsonlines",
            "JSON",
            '{"score": 0.25}\n[0.5, 0.5]\n',
            "application/jsonlines",
            "JSON",
        )
    )
    assert [e.input for e in events] == [[1.0, 2.0], [3.0, 4.0]]
    assert [e.output for e in events] == [[0.25], [0.5, 0.5]]


@pytest.mark.parametrize(
    ("rows", "output", "expected"),
    [
        ([[1, 2]], [0.2, 0.8], [[0.2, 0.8]]),
        ([[1, 2], [3, 4]], [0.2, 0.8], [[0.2], [0.8]]),
        ([[1, 2], [3, 4]], [[0.2, 0.8], [0.6, 0.4]], [[0.2, 0.8], [0.6, 0.4]]),
        ([[1, 2]], {"predictions": [[0.3, 0.7]]}, [[0.3, 0.7]]),
        ([[1, 2]], {"outputs": 0.5}, [[0.5]]),
        ([[1, 2]], 3, [[3.0]]),
        (
            [[1, 2], [3, 4]],
            [{"probabilities": [0.1, 0.9]}, {"scores": [0.5, 0.5]}],
            [[0.1, 0.9], [0.5, 0.5]],
        ),
        ([[1, 2]], [{"predicted_label": 1, "probability": 0.75}], [[0.75]]),
    ],
)
def test_understood_json_output_layouts(
    rows: list[Any], output: Any, expected: list[list[float]]
) -> None:
    """For one row a flat list is its scores; for a batch, one value per row."""
    assert [e.output for e in _events(_json_record(rows, output))] == expected


def test_one_csv_line_of_one_score_per_row_is_split() -> None:
    """Some XGBoost containers answer a CSV batch with one comma-separated line."""
    events = _events(_record("1,2\n3,4\n5,6", output_data="0.1,0.2,0.3"))
    assert [e.output for e in events] == [[0.1], [0.2], [0.3]]


def test_an_output_of_another_content_type_is_left_out() -> None:
    """Output is informational: a PNG mask does not stop the input being scored."""
    png = base64.b64encode(b"\x89PNG\r\n").decode()
    (event,) = _events(
        _record("1,2", output_data=png, output_type="image/png", output_encoding="BASE64")
    )
    assert (event.input, event.output) == ([1.0, 2.0], None)


def test_a_record_without_output_or_time() -> None:
    """Capture mode Input only; inferenceTime left out."""
    value = orjson.dumps(
        {
            "captureData": {"endpointInput": _capture("1,2", "text/csv", "CSV", "INPUT")},
            "eventMetadata": {"eventId": "ev-9"},
        }
    )
    (event,) = _events(value)
    assert (event.event_id, event.output, event.ts) == ("ev-9", None, None)


def test_json_content_type_parameters_and_suffix_are_understood() -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json", "TEXT/CSV"):
        data = "1,2" if content_type == "TEXT/CSV" else "[1, 2]"
        (event,) = _events(_record(data, content_type, "CSV"))
        assert event.input == [1.0, 2.0]


# --- Errors ------------------------------------------------------------------------------

_INVALID = FormatErrorReason.INVALID_SAGEMAKER
_SHAPE = FormatErrorReason.SHAPE_MISMATCH


@pytest.mark.parametrize(
    ("value", "reason", "says"),
    [
        (b"{not json", FormatErrorReason.INVALID_JSON, "message value"),
        (b"[]", _INVALID, "'<root>'"),
        (b'{"captureData": {}}', _INVALID, "'eventMetadata'"),
        (_record("1,2", eventId=""), _INVALID, "'eventMetadata.eventId'"),
        (_record("1,2", inferenceTime="2024-05-01T12:00:00"), _INVALID, "inferenceTime"),
        (_record(None, output_data="0.5"), _INVALID, "no captureData.endpointInput"),
        (_record("1,2", input_encoding="GZIP"), _INVALID, "'GZIP'"),
        (_record("not base64!", input_encoding="BASE64"), _INVALID, "base64"),
        (
            _record(base64.b64encode(b"\xff\xfe").decode(), input_encoding="BASE64"),
            _INVALID,
            "UTF-8",
        ),
        (_record("age,income\n31,52000"), _INVALID, "row 1, column 1 is 'age'"),
        (_record("1,,3"), _INVALID, "column 2"),
        (_record('1,"2'), _INVALID, "not valid CSV"),
        (_record("\n \n"), _INVALID, "no input rows"),
        (
            _record("/9j/4AAQ", "image/jpeg", "BASE64"),
            FormatErrorReason.UNSUPPORTED_CONTENT_TYPE,
            "'image/jpeg'",
        ),
        (_json_record({"data": [1, 2]}), _INVALID, "['data']"),
        (_json_record({"instances": 5}), _INVALID, "'instances' must be a list"),
        (_json_record({"inputs": {"a": [1], "b": [2]}}), _INVALID, "['a', 'b']"),
        (_json_record({"inputs": 5}), _INVALID, "must be a batch"),
        (_json_record([{"pixels": [1]}]), _INVALID, "['pixels']"),
        (_json_record([[[1, 2], [3]]]), _INVALID, "row 0 is not a rectangular"),
        (_json_record([["a", "b"]]), _INVALID, "rectangular"),
        (_json_record("hello"), _INVALID, "str"),
        (_json_record([]), _INVALID, "no input rows"),
        (
            _record("{oops", "application/json", "JSON"),
            FormatErrorReason.INVALID_JSON,
            "endpointInput",
        ),
        (
            _record("[1]\n{oops", "application/jsonlines", "JSON"),
            FormatErrorReason.INVALID_JSON,
            "line 2",
        ),
        (_npy_record(np.array([1 + 2j])), FormatErrorReason.UNSUPPORTED_DATATYPE, "complex128"),
        (_npy_record(np.array(3.0)), _INVALID, "scalar"),
        (
            _record(base64.b64encode(b"not npy").decode(), "application/x-npy", "BASE64"),
            _INVALID,
            ".npy",
        ),
        (_record("1,2\n3,4", output_data="0.5"), _SHAPE, "1 CSV lines for 2 input rows"),
        (_record("1,2", output_data="0.5\n0.6"), _SHAPE, "2 CSV lines for 1 input rows"),
        (_record("1,2", output_data="yes"), _INVALID, "endpointOutput"),
        (_json_record([[1], [2]], [0.1, 0.2, 0.3]), _SHAPE, "3 predictions for 2 input rows"),
        (_json_record([[1], [2]], [[0.1], [0.2], [0.3]]), _SHAPE, "3 predictions"),
        (_json_record([[1]], {"label": 1}), _INVALID, "['label']"),
        (_json_record([[1]], [{"label": 1}]), _INVALID, "has none of scores"),
        (_json_record([[1]], "positive"), _INVALID, "predictions must be"),
        (_json_record([[1]], [["a"]]), _INVALID, "rectangular"),
        (
            _record(
                "1",
                output_data="[1]\n[2]",
                output_type="application/jsonlines",
                output_encoding="JSON",
            ),
            _SHAPE,
            "2 JSON lines",
        ),
    ],
)
def test_problems_say_what_and_where(value: bytes, reason: FormatErrorReason, says: str) -> None:
    with pytest.raises(FormatError) as caught:
        _events(value)
    assert caught.value.reason == reason
    assert says in str(caught.value)


def test_an_event_breaking_the_native_contract_is_reported() -> None:
    with pytest.raises(FormatError) as caught:
        sagemaker_events(_record("1,2"), model_id="")
    assert caught.value.reason == FormatErrorReason.INVALID_EVENT
