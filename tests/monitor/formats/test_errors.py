"""One error type for every decoder: reason codes, pickling, and no other exception escaping.

The robustness tests take every real-shaped fixture, break it one place at a time (each
JSON node replaced by a value of another type, each header dropped or garbled, the value
cut short) and check that decoding either succeeds or raises :class:`FormatError`, never a
bare ``KeyError``, ``ValueError``, ``TypeError`` or an orjson/numpy/pydantic error.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from monitor.formats import (
    FormatError,
    FormatErrorReason,
    decode_oip_v2,
    mapped_event,
    oip_v2_events,
    sagemaker_events,
)
from tests.monitor.formats.kafka_records import (
    CUSTOM_MAPPING,
    FIXTURES,
    Headers,
    capture_record,
    kafka_record,
)

KSERVE_RECORDS = sorted(p.name.removesuffix(".value.json") for p in FIXTURES.glob("*.value.json"))
SAGEMAKER_RECORDS = sorted(p.stem for p in FIXTURES.glob("*.jsonl"))
REPLACEMENTS: list[Any] = [None, "x", "", 0, -1, 2.5, True, [], {}, [[1], [2, 3]], {"a": 1}]
GARBLED_HEADERS = [b"", b"\xff\xfe", b"0.3", b"not-a-time"]


def test_the_fixtures_are_all_found() -> None:
    assert len(KSERVE_RECORDS) == 6
    assert len(SAGEMAKER_RECORDS) == 6


def test_reason_codes_are_snake_case_and_unique() -> None:
    codes = [reason.value for reason in FormatErrorReason]
    assert all(re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", code) for code in codes)
    assert len(set(codes)) == len(codes)
    assert f"{FormatErrorReason.INVALID_JSON}" == "invalid_json"


def test_format_error_keeps_reason_and_message_through_pickle() -> None:
    error = FormatError(FormatErrorReason.SHAPE_MISMATCH, "input 'x' has 3 elements")
    copied = pickle.loads(pickle.dumps(error))
    assert type(copied) is FormatError
    assert (copied.reason, copied.message, str(copied)) == (
        FormatErrorReason.SHAPE_MISMATCH,
        "input 'x' has 3 elements",
        "input 'x' has 3 elements",
    )
    assert FormatError("invalid_json", "x").reason is FormatErrorReason.INVALID_JSON  # type: ignore[arg-type]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*prefix, index))


def _mutations(document: Any) -> Iterator[bytes]:
    for path in _paths(document):
        for replacement in REPLACEMENTS:
            mutated = copy.deepcopy(document)
            parent = mutated
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = replacement
            yield orjson.dumps(mutated)


def _truncations(value: bytes) -> Iterator[bytes]:
    step = max(1, len(value) // 40)
    for end in range(0, len(value), step):
        yield value[:end]


def _only_format_errors(decode: Callable[[bytes], object], values: Iterator[bytes]) -> int:
    tried = 0
    for value in values:
        tried += 1
        try:
            decode(value)
        except FormatError:
            pass
        except Exception as exc:  # the test's point: report what escaped, with its input
            pytest.fail(f"{type(exc).__name__}: {exc} escaped for {value[:300]!r}")
    return tried


def _kserve_pipeline(headers: Headers) -> Callable[[bytes], object]:
    def decode(value: bytes) -> object:
        message = decode_oip_v2(value, headers)
        if message.kind == "request":
            return [
                oip_v2_events(message, None, model_id="m", input_name=n) for n in message.tensors
            ]
        return message

    return decode


@pytest.mark.parametrize("name", KSERVE_RECORDS)
def test_broken_kserve_values_raise_only_format_errors(name: str) -> None:
    value, headers = kafka_record(name)
    decode = _kserve_pipeline(headers)
    decode(value)  # the unbroken record decodes
    tried = _only_format_errors(decode, _mutations(orjson.loads(value)))
    tried += _only_format_errors(decode, _truncations(value))
    assert tried > 100


@pytest.mark.parametrize("name", KSERVE_RECORDS)
def test_broken_kserve_headers_raise_only_format_errors(name: str) -> None:
    value, headers = kafka_record(name)
    for index, (key, _) in enumerate(headers):
        variants = [headers[:index] + headers[index + 1 :]]
        variants += [
            [*headers[:index], (key, bad), *headers[index + 1 :]] for bad in GARBLED_HEADERS
        ]
        for variant in variants:
            _only_format_errors(_kserve_pipeline(variant), iter([value]))


def test_joining_broken_responses_raises_only_format_errors() -> None:
    request = decode_oip_v2(*kafka_record("kserve_binary_request"))
    value, headers = kafka_record("kserve_binary_response")

    def join(broken: bytes) -> object:
        return oip_v2_events(request, decode_oip_v2(broken, headers), model_id="m")

    assert _only_format_errors(join, _mutations(orjson.loads(value))) > 100


@pytest.mark.parametrize("name", SAGEMAKER_RECORDS)
def test_broken_sagemaker_records_raise_only_format_errors(name: str) -> None:
    value = capture_record(name)

    def decode(broken: bytes) -> object:
        return sagemaker_events(broken, model_id="m")

    decode(value)
    record = orjson.loads(value)
    tried = _only_format_errors(decode, _mutations(record))
    tried += _only_format_errors(decode, _truncations(value))
    # The captured bodies themselves, broken the same ways.
    for side in ("endpointInput", "endpointOutput"):
        captured = record["captureData"][side]
        if captured["encoding"] == "BASE64":
            continue
        for body in [*_truncations(captured["data"].encode()), b"[[1], [2, 3]]", b'{"a": 1}']:
            broken = copy.deepcopy(record)
            broken["captureData"][side]["data"] = body.decode("utf-8", "replace")
            tried += _only_format_errors(decode, iter([orjson.dumps(broken)]))
    assert tried > 50


def test_broken_mapped_messages_raise_only_format_errors() -> None:
    value = (FIXTURES / "mapped_custom.json").read_bytes()
    mapping = CUSTOM_MAPPING

    def decode(broken: bytes) -> object:
        return mapped_event(broken, mapping, model_id="m")

    decode(value)
    tried = _only_format_errors(decode, _mutations(orjson.loads(value)))
    tried += _only_format_errors(decode, _truncations(value))
    assert tried > 100
