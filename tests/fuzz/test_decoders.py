"""Every decoder, fed thousands of mutated and generated messages: events or a reason.

Each property starts from the real fixtures of ``tests/monitor/formats/fixtures`` (or a
demo event) and mutates members or bytes (:mod:`tests.fuzz.mutations`); the only outcomes
allowed, and the time and memory each message may take, are in :mod:`tests.fuzz.bounds`.
Example counts are per test, in CI (``examples``); ``FUZZ_PROFILE=long`` runs 20 times as
many.
"""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.decoding import (
    RecordFormat,
    event_input,
    input_array,
    native_fast,
    oip_half,
    record_events,
)
from monitor.formats import (
    FieldMapping,
    OipMessage,
    decode_oip_v2,
    mapped_event,
    oip_v2_events,
    sagemaker_events,
)
from schemas import InferenceEvent, decode_event
from tests.fuzz.bounds import examples, outcome
from tests.fuzz.mutations import (
    HOSTILE_SHAPES,
    b64,
    capture,
    dumps,
    hostile_values,
    mutated_bytes,
    mutated_json,
    npy_bodies,
)
from tests.fuzz.seeds import INPUT_SHAPE, KSERVE, MAPPED, NATIVE, SAGEMAKER
from tests.monitor.formats.kafka_records import CUSTOM_MAPPING, kafka_record

RESPONSE = decode_oip_v2(*kafka_record("kserve_binary_response"))


_TENSOR_DTYPES = ["float32", "float16", "float64", "uint8", "int64", "bool", "str", "", None]


def _checked_inputs(events: list[InferenceEvent] | Any) -> None:
    """Each decoded event's input, built and checked as the worker checks it."""
    if isinstance(events, list):
        for event in events:
            outcome(partial(input_array, event), 0)
            outcome(partial(event_input, event, INPUT_SHAPE, (0.0, 1.0)), 0)


def _fast_path_agrees(value: bytes) -> None:
    """The worker's fast path takes ``value`` the way the slow path does, or leaves it.

    When :func:`native_fast` returns an event, the slow path (the one every command
    takes, and that words refusals) must accept the record too, give the same event, and
    build the same input; when it returns ``None``, the worker takes the slow path.
    """
    fast = outcome(lambda: native_fast(value), len(value))
    slow = outcome(lambda: record_events(value, RecordFormat()), len(value))
    if fast is None:
        return
    assert isinstance(fast, tuple)
    event, array = fast
    assert isinstance(slow, list), f"the fast path accepted what the slow one refuses: {slow}"
    assert slow == [event]
    expected = outcome(partial(input_array, slow[0]), 0)
    assert isinstance(expected, np.ndarray), "the fast path built an input the slow one refuses"
    assert array.dtype == expected.dtype
    assert array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)


# --- native ---------------------------------------------------------------------------


@settings(max_examples=examples(1500))
@given(st.sampled_from(NATIVE).flatmap(mutated_json).map(dumps))
def test_mutated_native_events_decode_or_are_refused(value: bytes) -> None:
    result = outcome(lambda: decode_event(value), len(value))
    if isinstance(result, InferenceEvent):
        _checked_inputs([result])
    _checked_inputs(outcome(lambda: record_events(value, RecordFormat()), len(value)))


@settings(max_examples=examples(500))
@given(st.sampled_from(NATIVE).map(orjson.dumps).flatmap(mutated_bytes))
def test_native_events_with_damaged_bytes_decode_or_are_refused(value: bytes) -> None:
    _checked_inputs(outcome(lambda: record_events(value, RecordFormat()), len(value)))


@settings(max_examples=examples(1000))
@given(
    st.one_of(
        st.sampled_from(NATIVE).map(orjson.dumps),
        st.sampled_from(NATIVE).flatmap(mutated_json).map(dumps),
        st.sampled_from(NATIVE).map(orjson.dumps).flatmap(mutated_bytes),
    )
)
def test_the_fast_path_decides_native_events_as_the_slow_path_does(value: bytes) -> None:
    _fast_path_agrees(value)


@st.composite
def tensor_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A tensor payload whose dtype, shape and base64 text disagree in every way."""
    shape = draw(
        st.one_of(st.sampled_from(HOSTILE_SHAPES), st.lists(st.integers(0, 6), max_size=5))
    )
    size = draw(st.one_of(st.integers(0, 300), st.just(-1)))
    if size < 0:  # exactly what a float32 tensor of that shape needs, when small
        elements = int(np.prod([d for d in shape if d >= 0])) if shape else 1
        size = elements * 4 if 0 <= elements * 4 <= 4096 else 0
    text = b64(bytes(size))
    damage = draw(st.integers(0, 5))
    if damage == 1:
        text = text.rstrip("=")
    elif damage == 2:
        text = text + draw(st.sampled_from(["=", "==", "A", "!", " ", "\n", "é"]))
    return {"dtype": draw(st.sampled_from(_TENSOR_DTYPES)), "shape": shape, "data_b64": text}


@settings(max_examples=examples(1000))
@given(tensor_payloads())
def test_tensor_payloads_of_any_shape_and_size_decode_or_are_refused(
    payload: dict[str, Any],
) -> None:
    value = dumps({"event_id": "e", "model_id": "m", "input": payload})
    _checked_inputs(outcome(lambda: record_events(value, RecordFormat()), len(value)))
    _fast_path_agrees(value)


@settings(max_examples=examples(500))
@given(hostile_values)
def test_any_input_value_decodes_or_is_refused(value: Any) -> None:
    raw = dumps({"event_id": "e", "model_id": "m", "input": value})
    _checked_inputs(outcome(lambda: record_events(raw, RecordFormat()), len(raw)))
    _fast_path_agrees(raw)


def test_json_nested_deeper_than_the_parser_allows_is_refused() -> None:
    for depth in (1023, 1025, 5000):
        raw = b'{"event_id": "e", "model_id": "m", "input": ' + b"[" * depth + b"]" * depth + b"}"
        _checked_inputs(outcome(partial(record_events, raw, RecordFormat()), len(raw)))


# --- OIP v2 ---------------------------------------------------------------------------


@st.composite
def oip_records(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A KServe fixture record with members of its body, or its headers, mutated."""
    body, headers = draw(st.sampled_from(KSERVE))
    if draw(st.integers(0, 3)) == 0:
        index = draw(st.integers(0, len(headers) - 1))
        name = headers[index][0]
        value = draw(
            st.one_of(
                st.binary(max_size=40),
                st.integers(0, 2000).map(lambda n: b"x" * n),
                st.sampled_from([b"", b"1.0", b"\xff", b"2024-13-45T00:00:00Z"]),
            )
        )
        headers = [*headers[:index], (name, value), *headers[index + 1 :]]
    raw = dumps(draw(mutated_json(body)))
    if draw(st.integers(0, 4)) == 0:
        raw = draw(mutated_bytes(raw))
    return raw, headers


def _oip_events(half: OipMessage | Any) -> None:
    if not isinstance(half, OipMessage):
        return
    if half.kind == "request":
        for response in (None, RESPONSE):
            for input_name in (None, "input-0"):
                _checked_inputs(
                    outcome(
                        partial(oip_v2_events, half, response, model_id="m", input_name=input_name),
                        0,
                    )
                )


@settings(max_examples=examples(1500))
@given(oip_records())
def test_mutated_kserve_records_decode_or_are_refused(
    record: tuple[bytes, list[tuple[str, bytes]]],
) -> None:
    value, headers = record
    half = outcome(lambda: decode_oip_v2(value, headers), len(value))
    _oip_events(half)
    outcome(lambda: oip_half(value, headers), len(value))


@settings(max_examples=examples(500))
@given(
    st.sampled_from([*HOSTILE_SHAPES, [2, 4], [1, 4], [4]]),
    st.sampled_from(["FP32", "FP16", "INT8", "UINT64", "BOOL", "BYTES", "BF16", ""]),
    hostile_values,
)
def test_v2_tensors_of_any_shape_datatype_and_data_decode_or_are_refused(
    shape: list[int], datatype: str, data: Any
) -> None:
    body, headers = KSERVE[1]  # a binary-mode request
    tensor = {"name": "input-0", "shape": shape, "datatype": datatype, "data": data}
    value = dumps({**body, "inputs": [tensor]})
    _oip_events(outcome(lambda: decode_oip_v2(value, headers), len(value)))


# --- SageMaker ------------------------------------------------------------------------


_CONTENT_TYPES = [
    "text/csv",
    "application/json",
    "application/jsonlines",
    "application/x-npy",
    "image/png",
    "",
]


_CSV_TEXT = st.text(alphabet='0123456789.,-+e\n\r" naif', max_size=200).map(str.encode)


@st.composite
def captured_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A body and the content type it claims: npy, CSV, JSON or JSON lines of any shape."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(npy_bodies()), draw(st.sampled_from(["application/x-npy", *_CONTENT_TYPES]))
    if kind == 1:
        return draw(_CSV_TEXT), "text/csv"
    if kind == 2:
        return dumps(draw(hostile_values)), "application/json"
    lines = draw(st.lists(hostile_values, max_size=4))
    return b"\n".join(dumps(line) for line in lines), "application/jsonlines"


@settings(max_examples=examples(1000))
@given(st.sampled_from(SAGEMAKER).flatmap(mutated_json).map(dumps))
def test_mutated_capture_records_decode_or_are_refused(value: bytes) -> None:
    _checked_inputs(outcome(lambda: sagemaker_events(value, model_id="m"), len(value)))


@settings(max_examples=examples(1500))
@given(captured_bodies(), st.one_of(st.none(), captured_bodies()))
def test_captured_bodies_of_any_type_decode_or_are_refused(
    body: tuple[bytes, str], output: tuple[bytes, str] | None
) -> None:
    endpoint_output = (
        None
        if output is None
        else {
            "observedContentType": output[1],
            "mode": "OUTPUT",
            "data": base64.b64encode(output[0]).decode(),
            "encoding": "BASE64",
        }
    )
    value = capture(body[0], body[1], endpoint_output)
    _checked_inputs(outcome(lambda: sagemaker_events(value, model_id="m"), len(value)))
    _checked_inputs(
        outcome(lambda: record_events(value, RecordFormat("sagemaker", "m")), len(value))
    )


# --- mapped ---------------------------------------------------------------------------

MAPPINGS = [
    CUSTOM_MAPPING,
    FieldMapping(event_id="$..id", input="$..features", ts="$..time", output="$..data"),
    FieldMapping(event_id="$.meta.id", input="$.payload", source="$.meta.user"),
]


@settings(max_examples=examples(1500))
@given(st.sampled_from(MAPPINGS), mutated_json(MAPPED).map(dumps))
def test_mutated_mapped_messages_decode_or_are_refused(mapping: FieldMapping, value: bytes) -> None:
    _checked_inputs(outcome(lambda: mapped_event(value, mapping, model_id="m"), len(value)))
    record_format = RecordFormat("mapped", "m", mapping)
    _checked_inputs(outcome(lambda: record_events(value, record_format), len(value)))


@settings(max_examples=examples(300))
@given(st.sampled_from(MAPPINGS), hostile_values)
def test_any_json_document_decodes_or_is_refused_by_a_mapping(
    mapping: FieldMapping, document: Any
) -> None:
    value = dumps(document)
    _checked_inputs(outcome(lambda: mapped_event(value, mapping, model_id="m"), len(value)))


# --- the bounds themselves --------------------------------------------------------------


def test_the_memory_bound_catches_a_decoder_that_allocates_what_a_header_claims() -> None:
    with pytest.raises(AssertionError, match="allocated"):
        outcome(lambda: np.ones(2**23), 100)  # 64 MiB
