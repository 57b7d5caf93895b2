"""Decoding and validating the native inference event."""

from __future__ import annotations

import base64
import pickle
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_OUTPUT_VALUES,
    MAX_TENSOR_DIMS,
    InferenceEvent,
    InvalidEventError,
    SchemaError,
    TensorDType,
    TensorPayload,
    decode_event,
    validate_event,
)


def _tensor(dtype: str = "float32", shape: list[int] | None = None, data: bytes = b"") -> Any:
    shape = [2, 2] if shape is None else shape
    if not data and dtype == "float32":
        data = struct.pack("<4f", 0.0, 0.25, 0.5, 1.0)
    return {"dtype": dtype, "shape": shape, "data_b64": base64.b64encode(data).decode()}


_MISSING = object()


def _event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": "e1", "model_id": "digits", "input": [[0.0, 1.0]]}
    event.update(fields)
    return {name: value for name, value in event.items() if value is not _MISSING}


def _raw(**fields: Any) -> bytes:
    return orjson.dumps(_event(**fields))


def _invalid(raw: bytes | str) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as caught:
        decode_event(raw)
    return caught.value


# --- valid events -------------------------------------------------------------------------


def test_full_event_with_nested_list() -> None:
    event = decode_event(
        _raw(
            model_version="3",
            ts="2024-05-01T14:00:00+02:00",
            request_id="r1",
            source="key-7",
            input=[[[0, 1], [2, 3]], [[4, 5], [6, 7]]],
            output=[0.1, 0.9],
        )
    )
    assert event == InferenceEvent(
        event_id="e1",
        model_id="digits",
        model_version="3",
        ts=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        request_id="r1",
        source="key-7",
        input=[[[0, 1], [2, 3]], [[4, 5], [6, 7]]],
        output=[0.1, 0.9],
    )
    assert event.ts is not None
    assert event.ts.utcoffset() == timedelta(hours=2)


def test_minimal_event_defaults_optional_fields_to_none() -> None:
    event = decode_event(_raw())
    assert (event.model_version, event.ts, event.request_id, event.source, event.output) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert event.input == [[0.0, 1.0]]


def test_str_input_is_accepted() -> None:
    assert decode_event(_raw().decode()).event_id == "e1"


def test_zulu_timestamp_is_utc() -> None:
    event = decode_event(_raw(ts="2024-05-01T12:00:00.250Z"))
    assert event.ts == datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


def test_tensor_payload_event() -> None:
    event = decode_event(_raw(input=_tensor()))
    assert isinstance(event.input, TensorPayload)
    assert event.input.dtype is TensorDType.FLOAT32
    assert event.input.shape == [2, 2]
    assert struct.unpack("<4f", event.input.to_bytes()) == (0.0, 0.25, 0.5, 1.0)


@pytest.mark.parametrize(
    ("dtype", "itemsize"),
    [
        ("float16", 2),
        ("float32", 4),
        ("float64", 8),
        ("int8", 1),
        ("int16", 2),
        ("int32", 4),
        ("int64", 8),
        ("uint8", 1),
        ("uint16", 2),
        ("uint32", 4),
        ("uint64", 8),
        ("bool", 1),
    ],
)
def test_every_dtype_with_its_itemsize(dtype: str, itemsize: int) -> None:
    payload = TensorPayload.model_validate(_tensor(dtype, [3], bytes(3 * itemsize)))
    assert payload.dtype.itemsize == itemsize
    assert len(payload.to_bytes()) == 3 * itemsize


def test_scalar_and_empty_tensors() -> None:
    assert TensorPayload.model_validate(_tensor("int64", [], bytes(8))).shape == []
    assert TensorPayload.model_validate(_tensor("uint8", [0, 5], b"")).shape == [0, 5]


def test_unknown_fields_are_ignored() -> None:
    input_ = {**_tensor(), "order": "C"}
    event = decode_event(_raw(input=input_, trace={"span": 1}, schema_version=2))
    assert event == decode_event(_raw(input=_tensor()))
    assert "trace" not in event.model_dump()


def test_events_are_frozen() -> None:
    event = decode_event(_raw())
    with pytest.raises(ValidationError):
        event.event_id = "other"  # type: ignore[misc]


# --- malformed events ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"event_id": _MISSING}, "event_id", "field required"),
        ({"event_id": ""}, "event_id", "string should have at least 1 character"),
        ({"event_id": 17}, "event_id", "input should be a valid string"),
        ({"model_id": _MISSING}, "model_id", "field required"),
        ({"model_id": ""}, "model_id", "string should have at least 1 character"),
        ({"input": _MISSING}, "input", "field required"),
        ({"output": ["high"]}, "output.0", "input should be a valid number"),
    ],
)
def test_field_errors(fields: dict[str, Any], field: str, reason: str) -> None:
    error = _invalid(_raw(**fields))
    assert error.field == field
    assert error.reason.startswith(reason)
    assert str(error) == f"invalid event: field {field!r}: {error.reason}"


def test_message_format() -> None:
    assert str(_invalid(_raw(event_id=_MISSING))) == (
        "invalid event: field 'event_id': field required"
    )


def test_naive_timestamp_is_rejected() -> None:
    error = _invalid(_raw(ts="2024-05-01T12:00:00"))
    assert error.field == "ts"
    assert "no timezone offset" in error.reason
    assert "RFC 3339" in error.reason


def test_malformed_timestamp_is_rejected() -> None:
    assert _invalid(_raw(ts="yesterday")).field == "ts"


@pytest.mark.parametrize("input_", ["pixels", 3, 2.5, None, True])
def test_input_of_wrong_type(input_: Any) -> None:
    error = _invalid(_raw(input=input_))
    assert error.field == "input"
    assert error.reason == (
        "input must be a nested list of numbers or an object {dtype, shape, data_b64}"
    )


def test_bad_base64() -> None:
    error = _invalid(_raw(input={**_tensor(), "data_b64": "not base64!"}))
    assert error.field == "input.data_b64"
    assert error.reason.startswith("not valid standard base64: ")


def test_urlsafe_base64_is_not_standard() -> None:
    data = bytes([0xFB, 0xFF, 0xBF, 0xFF])  # standard "+/+/", urlsafe "-_-_"
    urlsafe = base64.urlsafe_b64encode(data).decode()
    error = _invalid(_raw(input={**_tensor("uint8", [4]), "data_b64": urlsafe}))
    assert error.field == "input.data_b64"


def test_byte_length_mismatch() -> None:
    error = _invalid(_raw(input=_tensor("float32", [2, 3])))
    assert error.field == "input.data_b64"
    assert error.reason == "decoded 16 bytes, but shape [2, 3] of float32 needs 24"


def test_bad_dtype() -> None:
    error = _invalid(_raw(input={**_tensor(), "dtype": "complex64"}))
    assert error.field == "input.dtype"
    assert "'float32'" in error.reason
    assert "'bool'" in error.reason


def test_negative_shape() -> None:
    error = _invalid(_raw(input={**_tensor(), "shape": [2, -2]}))
    assert error.field == "input.shape.1"
    assert error.reason == "input should be greater than or equal to 0"
    # the size check is skipped when the shape itself is wrong
    assert error.errors == [("input.shape.1", error.reason)]


@pytest.mark.parametrize("dim", [2.0, "2", True])
def test_shape_dimensions_must_be_integers(dim: Any) -> None:
    error = _invalid(_raw(input={**_tensor(), "shape": [2, dim]}))
    assert error.field == "input.shape.1"


def test_missing_tensor_fields() -> None:
    error = _invalid(_raw(input={"dtype": "float32"}))
    assert error.errors == [
        ("input.shape", "field required"),
        ("input.data_b64", "field required"),
    ]


def test_invalid_json() -> None:
    error = _invalid(b'{"event_id": "e1",')
    assert error.field == "<json>"
    assert error.reason.startswith("not valid JSON: ")


def test_invalid_utf8() -> None:
    assert _invalid(b'{"event_id": "\xff"}').field == "<json>"


def test_empty_message() -> None:
    assert _invalid(b"").field == "<json>"


@pytest.mark.parametrize(
    ("raw", "kind"), [(b"[1, 2]", "array"), (b'"e1"', "string"), (b"null", "null")]
)
def test_top_level_must_be_an_object(raw: bytes, kind: str) -> None:
    error = _invalid(raw)
    assert error.field == "<root>"
    assert error.reason == f"an event must be a JSON object, got {kind}"


def test_all_errors_are_kept_in_order() -> None:
    error = _invalid(_raw(event_id=_MISSING, model_id="", ts="2024-05-01T12:00:00"))
    assert [field for field, _ in error.errors] == ["event_id", "model_id", "ts"]
    assert (error.field, error.reason) == error.errors[0]


def test_error_tree() -> None:
    error = _invalid(b"[]")
    assert isinstance(error, SchemaError)
    assert isinstance(error, ValueError)


def test_error_pickles() -> None:
    error = _invalid(_raw(event_id=_MISSING, model_id=""))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.field, copy.reason, copy.errors, str(copy)) == (
        error.field,
        error.reason,
        error.errors,
        str(error),
    )


def test_validate_event_takes_parsed_json() -> None:
    assert validate_event(_event()) == decode_event(_raw())
    with pytest.raises(InvalidEventError, match="field 'model_id'"):
        validate_event(_event(model_id=_MISSING))


def test_model_keeps_offset_of_aware_python_datetime() -> None:
    ts = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert InferenceEvent(event_id="e", model_id="m", input=[1], ts=ts).ts == ts


# --- hard limits (issue 12): refused as too large, before anything is allocated --------


def _nested(depth: int) -> Any:
    value: Any = 0.5
    for _ in range(depth):
        value = [value]
    return value


def _with_input(value: Any, **fields: Any) -> dict[str, Any]:
    return {"event_id": "e", "model_id": "m", "input": value, **fields}


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (_with_input({"dtype": "uint8", "shape": [1] * 33, "data_b64": "AA=="}), "input.shape"),
        (_with_input({"dtype": "uint8", "shape": [0, 2**63], "data_b64": ""}), "input.shape.1"),
        (_with_input({"dtype": "uint8", "shape": [4096, 4097], "data_b64": ""}), "input.shape"),
        (_with_input({"dtype": "float64", "shape": [2**24], "data_b64": ""}), "input.data_b64"),
        (_with_input(_nested(33)), "input"),
        (_with_input([[0.5] * 4097] * 4097), "input"),
        (_with_input([0.5], event_id="e" * (MAX_ID_LENGTH + 1)), "event_id"),
        (_with_input([0.5], source="s" * (MAX_ID_LENGTH + 1)), "source"),
        (_with_input([0.5], model_id="m" * (MAX_NAME_LENGTH + 1)), "model_id"),
        (_with_input([0.5], output=[0.0] * (MAX_OUTPUT_VALUES + 1)), "output"),
    ],
    ids=[
        "33 dims",
        "dim of 2**63",
        "too many elements",
        "too many bytes",
        "too deep a list",
        "too long a list",
        "event_id",
        "source",
        "model_id",
        "output",
    ],
)
def test_events_over_a_limit_are_refused_as_too_large(event: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        validate_event(event)
    assert caught.value.field == field
    assert caught.value.too_large


def test_events_at_the_limits_are_accepted() -> None:
    deep = _nested(MAX_TENSOR_DIMS)
    event = validate_event(_with_input(deep, event_id="e" * MAX_ID_LENGTH))
    assert event.event_id == "e" * MAX_ID_LENGTH
    shape = [1] * (MAX_TENSOR_DIMS - 1) + [2]
    payload = {"dtype": "uint8", "shape": shape, "data_b64": "AAA="}
    assert validate_event(_with_input(payload)).input.shape == shape  # type: ignore[union-attr]


def test_a_tensor_payload_of_the_wrong_size_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The size is computed from the base64 text's length: a payload that claims a small
    shape is never decoded when its text is too long for it."""
    decoded: list[int] = []
    real = base64.b64decode

    def counted(value: str, **options: Any) -> bytes:
        decoded.append(len(value))
        return real(value, **options)

    monkeypatch.setattr(base64, "b64decode", counted)
    payload = {"dtype": "uint8", "shape": [2], "data_b64": "A" * 4_000_000}
    with pytest.raises(InvalidEventError, match="decoded 3000000 bytes, but shape"):
        validate_event(_with_input(payload))
    assert decoded == []


def test_a_malformed_event_is_not_taken_for_a_large_one() -> None:
    with pytest.raises(InvalidEventError) as caught:
        validate_event(_with_input([0.5], event_id=""))
    assert not caught.value.too_large


def test_too_large_survives_pickling() -> None:
    error = InvalidEventError("input", "too big", too_large=True)
    assert pickle.loads(pickle.dumps(error)).too_large
