"""Any other JSON layout through a per-model JSONPath mapping (format ``mapped``).

The fixture ``mapped_custom.json`` stands for a home-grown serving log: metadata, the model
and its version, the features, and a list of named outputs. Paths use ``jsonpath-ng``'s
extended syntax (``jsonpath_ng.ext``), filters included.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from monitor.formats import FieldMapping, FormatError, FormatErrorReason, mapped_event
from schemas import TensorDType, TensorPayload
from tests.monitor.formats.kafka_records import CUSTOM_MAPPING, FIXTURES

CUSTOM = (FIXTURES / "mapped_custom.json").read_bytes()

FULL_MAPPING = CUSTOM_MAPPING


def test_every_field_is_read_from_its_path() -> None:
    event = mapped_event(CUSTOM, FULL_MAPPING, model_id="fraud")
    assert event.event_id == "b7c1d2e3-f405-4617-8a9b-0c1d2e3f4a5b"
    assert event.model_id == "fraud"
    assert event.input == [0.12, 3.5, 1.0, 0.0]
    assert event.output == [0.08, 0.92]
    assert event.ts == datetime(2024, 5, 1, 12, 0, 3, 250000, timezone(timedelta(hours=2)))
    assert event.source == "user-4821"
    assert event.request_id == "req-99"
    assert event.model_version == "2024.04.2"


def test_only_event_id_and_input_are_required() -> None:
    mapping = FieldMapping(event_id="$.meta.id", input="$.payload.features")
    event = mapped_event(CUSTOM, mapping, model_id="fraud")
    assert (event.event_id, event.input) == (
        "b7c1d2e3-f405-4617-8a9b-0c1d2e3f4a5b",
        [0.12, 3.5, 1.0, 0.0],
    )
    assert (event.output, event.ts, event.source, event.request_id, event.model_version) == (
        None,
        None,
        None,
        None,
        None,
    )


def test_optional_paths_that_match_nothing_or_null_leave_the_field_unset() -> None:
    mapping = FieldMapping(
        event_id="$.id", input="$.x", source="$.caller", output="$.scores", ts="$.when"
    )
    event = mapped_event(b'{"id": "e", "x": [1], "caller": null}', mapping, model_id="m")
    assert (event.source, event.output, event.ts) == (None, None, None)


def test_integer_ids_and_a_single_score_are_converted() -> None:
    mapping = FieldMapping(
        event_id="$.id", input="$.x", request_id="$.rid", source="$.uid", output="$.p"
    )
    event = mapped_event(
        b'{"id": 12, "rid": 13, "uid": 14, "x": [[0, 1]], "p": 0.75}', mapping, model_id="m"
    )
    assert (event.event_id, event.request_id, event.source) == ("12", "13", "14")
    assert event.output == [0.75]


def test_a_tensor_payload_input_passes_through() -> None:
    payload = {"dtype": "uint8", "shape": [2], "data_b64": base64.b64encode(b"\x01\x02").decode()}
    value = orjson.dumps({"id": "e", "x": payload})
    event = mapped_event(value, FieldMapping(event_id="$.id", input="$.x"), model_id="m")
    assert isinstance(event.input, TensorPayload)
    assert (event.input.dtype, event.input.to_bytes()) == (TensorDType.UINT8, b"\x01\x02")


def test_epoch_seconds_are_read_as_utc() -> None:
    mapping = FieldMapping(event_id="$.id", input="$.x", ts="$.t")
    event = mapped_event(b'{"id": "e", "x": [1], "t": 1714564800}', mapping, model_id="m")
    assert event.ts is not None
    assert event.ts.timestamp() == 1714564800
    assert event.ts.utcoffset() == timedelta(0)


# --- The mapping's own validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("event_id", "$.meta["),
        ("input", "$.payload..."),
        ("output", "$.result[?(@.name == )]"),
        ("ts", "meta time"),
        ("source", ""),
    ],
)
def test_a_malformed_path_fails_validation_naming_field_and_path(field: str, path: str) -> None:
    fields = {"event_id": "$.meta.id", "input": "$.payload.features", field: path}
    with pytest.raises(ValidationError) as caught:
        FieldMapping.model_validate(fields)
    (error,) = caught.value.errors()
    assert error["loc"] == (field,)
    assert error["type"] == "jsonpath_invalid"
    assert error["msg"].startswith(f"malformed JSONPath {path!r}: ")


def test_a_config_loader_sees_where_the_bad_path_is() -> None:
    class Model(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: str
        mapping: FieldMapping

    with pytest.raises(ValidationError) as caught:
        Model.model_validate({"id": "m", "mapping": {"event_id": "$.id", "input": "$.x["}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("mapping", "input")


def test_unknown_and_missing_mapping_keys_are_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        FieldMapping.model_validate({"event_id": "$.id", "inputs": "$.x"})
    problems = {(error["loc"], error["type"]) for error in caught.value.errors()}
    assert problems == {(("input",), "missing"), (("inputs",), "extra_forbidden")}


def test_paths_lists_the_mapped_fields() -> None:
    mapping = FieldMapping(event_id="$.id", input="$.x", ts="$.t")
    assert mapping.paths() == {"event_id": "$.id", "input": "$.x", "ts": "$.t"}


# --- Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mapping", "reason", "says"),
    [
        (b"{not json", {}, FormatErrorReason.INVALID_JSON, "message value"),
        (
            b'{"x": [1]}',
            {},
            FormatErrorReason.MAPPING_NO_MATCH,
            "'$.id' of field 'event_id' matched nothing",
        ),
        (b'{"id": "e"}', {}, FormatErrorReason.MAPPING_NO_MATCH, "'$.x' of field 'input'"),
        (b'{"id": "e", "x": null}', {}, FormatErrorReason.MAPPING_NO_MATCH, "matched null"),
        (
            b'{"id": "e", "x": [1, 2]}',
            {"input": "$.x[*]"},
            FormatErrorReason.MAPPING_MANY_MATCHES,
            "matched 2 values",
        ),
        (
            b'{"id": "e", "x": [1], "o": [{"p": [1]}, {"p": [2]}]}',
            {"output": "$.o[*].p"},
            FormatErrorReason.MAPPING_MANY_MATCHES,
            "'output'",
        ),
        (b'{"id": "e", "x": "pixels"}', {}, FormatErrorReason.INVALID_EVENT, "message 'e'"),
        (
            b'{"id": "e", "x": [1], "t": "2024-05-01T12:00:00"}',
            {"ts": "$.t"},
            FormatErrorReason.INVALID_EVENT,
            "'ts'",
        ),
        (
            b'{"id": "e", "x": [1], "o": "high"}',
            {"output": "$.o"},
            FormatErrorReason.INVALID_EVENT,
            "'output'",
        ),
        (b'{"id": true, "x": [1]}', {}, FormatErrorReason.INVALID_EVENT, "'event_id'"),
        (b'[{"id": "e"}]', {}, FormatErrorReason.MAPPING_NO_MATCH, "'event_id'"),
    ],
)
def test_problems_name_the_field_and_path(
    value: bytes, mapping: dict[str, Any], reason: FormatErrorReason, says: str
) -> None:
    paths = {"event_id": "$.id", "input": "$.x", **mapping}
    with pytest.raises(FormatError) as caught:
        mapped_event(value, FieldMapping.model_validate(paths), model_id="m")
    assert caught.value.reason == reason
    assert says in str(caught.value)
