"""The fast path of native event decoding: the same events as ``decode_event``, or none.

The fuzz suite (``tests/fuzz/test_decoders.py``) holds the two paths to the same answer
over mutated records; these are the cases a reader should see spelled out.
"""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from monitor.decoding import input_array, native_fast
from schemas import InvalidEventError, decode_event, fast_event

DATA = base64.b64encode(bytes(range(4))).decode()
TENSOR: dict[str, object] = {"dtype": "uint8", "shape": [2, 2], "data_b64": DATA}


def _event(**fields: object) -> bytes:
    return orjson.dumps({"event_id": "e1", "model_id": "m", "input": [[1, 2], [3, 4]], **fields})


@pytest.mark.parametrize(
    "value",
    [
        _event(),
        _event(input=TENSOR),
        _event(ts="2026-12-06T18:39:00.5+02:00", source="s", request_id="r", model_version="3"),
        _event(ts="2026-12-06T18:39:00Z", output=[0.25, 1, -3e5]),
        _event(source=None, output=None),
    ],
)
def test_an_ordinary_event_takes_the_fast_path_and_reads_as_decode_event_reads_it(
    value: bytes,
) -> None:
    fast = native_fast(value)
    assert fast is not None
    event, array = fast
    assert event == decode_event(value)
    np.testing.assert_array_equal(array, input_array(decode_event(value)))
    assert array.dtype == np.float32


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        # Fields the contract does not name: pydantic ignores them, but their text and
        # numbers must still be JSON that orjson reads, which msgspec would not check.
        (_event(extra=1), True),
        (_event()[:-1] + b',"extra":"\xff"}', False),
        (_event()[:-1] + b',"extra":1e999}', False),
        (_event(input={**TENSOR, "extra": 1}), True),
        # Values pydantic reads leniently, or refuses: left to it.
        (_event(ts=1_700_000_000), True),
        (_event(ts="2026-12-06T18:39:00"), False),
        (_event(output=[True]), True),
        (_event(output=["1.5"]), True),
        (_event(event_id=""), False),
        (_event(event_id="x" * 501), False),
        (_event(input={**TENSOR, "data_b64": DATA + "\n"}), False),
        (_event(input={**TENSOR, "shape": [2, 3]}), False),
        (_event(input={**TENSOR, "shape": [True, 2]}), False),
        (_event(input="pixels"), False),
        (_event(input=[[1, 2], [3]]), True),  # decoded; its input is refused downstream
        (b"[1, 2]", False),
        (b'{"event_id": "e1", "model_id": "m", "input": [1]} trailing', False),
    ],
)
def test_anything_else_is_left_to_the_slow_path(value: bytes, accepted: bool) -> None:
    assert native_fast(value) is None
    try:
        decode_event(value)
    except InvalidEventError:
        assert not accepted
    else:
        assert accepted


def test_the_tensor_bytes_are_returned_decoded_once() -> None:
    fast = fast_event(_event(input=TENSOR))
    assert fast is not None
    assert fast[1] == bytes(range(4))
