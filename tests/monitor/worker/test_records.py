from __future__ import annotations

import base64
from datetime import UTC, datetime

from monitor.errors import InvalidRecordError
from monitor.worker.records import InputMessage, OutputRecord, dead_letter
from schemas import DeadLetter, OipHalf, Reason


def test_a_dead_letter_keeps_the_message_bytes_coordinates_and_reason() -> None:
    message = InputMessage("inference", 2, 41, b"user-7", b"\x00not json")
    error = InvalidRecordError("invalid_json", "not JSON", event_id="e1", model_id="m")
    record = dead_letter("dead", message, error)
    letter = DeadLetter.model_validate_json(record.value)
    assert (record.topic, record.key) == ("dead", b"user-7")
    assert (letter.reason, letter.error, letter.topic, letter.partition, letter.offset) == (
        "invalid_json",
        "not JSON",
        "inference",
        2,
        41,
    )
    assert base64.b64decode(letter.value_b64) == b"\x00not json"
    assert base64.b64decode(letter.key_b64 or "") == b"user-7"
    assert (letter.event_id, letter.model_id) == ("e1", "m")


def test_a_message_without_key_gives_a_dead_letter_keyed_by_partition() -> None:
    message = InputMessage("inference", 3, 0, None, b"{}")
    record = dead_letter("dead", message, InvalidRecordError("invalid_event", "no event_id"))
    letter = DeadLetter.model_validate_json(record.value)
    assert record.key == b"inference/3"
    assert (letter.key_b64, letter.event_id, letter.model_id) == (None, None, None)


def test_a_dead_letter_of_an_oip_half_points_at_the_logged_record() -> None:
    half = OipHalf(
        id="ce-1",
        kind="request",
        model_id="m",
        topic="kserve",
        partition=1,
        offset=9,
        key_b64=None,
        value_b64=base64.b64encode(b'{"inputs": []}').decode(),
        headers=[],
        timestamp=None,
        received_at=datetime.now(UTC),
    )
    error = InvalidRecordError("invalid_oip_v2", "no inputs")
    record = dead_letter("dead", half, error, key=b"ce-1", event_id="ce-1", model_id="m")
    letter = DeadLetter.model_validate_json(record.value)
    assert record.key == b"ce-1"
    assert (letter.topic, letter.partition, letter.offset, letter.value_b64) == (
        "kserve",
        1,
        9,
        half.value_b64,
    )
    assert (letter.event_id, letter.model_id) == ("ce-1", "m")


def test_an_output_record_is_the_json_of_its_contract() -> None:
    letter = Reason(detector="feature_squeezing", score=0.9, threshold=0.5)
    assert OutputRecord.of("t", b"k", letter) == OutputRecord(
        "t", b"k", letter.model_dump_json().encode()
    )
