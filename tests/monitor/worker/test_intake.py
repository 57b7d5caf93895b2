"""The intake's pieces that need no broker (the loop itself runs in tests/integration and
tests/faults, on Apache Kafka)."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from monitor.worker.intake import inference_group, input_messages
from monitor.worker.records import InputMessage


def _record(**fields: object) -> ConsumerRecord[bytes, bytes]:
    values: dict[str, object] = {
        "topic": "t",
        "partition": 1,
        "offset": 7,
        "timestamp": 1_700_000_000_123,
        "timestamp_type": 0,
        "key": b"k",
        "value": b"{}",
        "checksum": None,
        "serialized_key_size": 1,
        "serialized_value_size": 2,
        "headers": (),
    }
    values.update(fields)
    return ConsumerRecord(**values)


def test_records_become_input_messages_with_seconds_and_byte_headers() -> None:
    records = [
        _record(headers=(("ce_id", b"abc"), ("empty", None))),
        _record(offset=8, value=None, timestamp=None, key=None),
    ]
    assert input_messages(records) == [
        InputMessage(
            "t", 1, 7, b"k", b"{}", 1_700_000_000.123, (("ce_id", b"abc"), ("empty", b""))
        ),
        InputMessage("t", 1, 8, None, b"", None, ()),
    ]


def test_the_inference_group_is_named_after_the_app() -> None:
    assert inference_group("fraud-model") == "fraud-model-inference"
