"""The fast path of :func:`schemas.decode_event`, for the events a worker sees all day.

:func:`decode_event` validates with pydantic, which words every refusal precisely; for a
valid event that costs several times what parsing it does. :func:`fast_event` decodes
the envelope with msgspec (typed, with the contract's limits), leaves ``input`` raw, and
reads it with orjson (a nested list) or msgspec (a tensor payload), checking it with the
very functions the pydantic model's validators call. It returns the same
:class:`InferenceEvent` that :func:`decode_event` would, or ``None`` for anything it does
not accept, without saying why: the caller then takes :func:`decode_event`'s path, which
accepts or refuses it and says why. A record is therefore accepted or refused, and
refused in the same words, whichever path it took; ``tests/fuzz`` holds the two paths to
that.

Every byte of a record the fast path accepts is parsed by a typed msgspec decoder or by
orjson: a record with fields the contract does not name (which pydantic ignores, and
msgspec would skip without orjson's checks of their text and numbers) takes the slow path.

The tensor's bytes are returned along with the event (decoded once, here), so that the
caller need not decode ``data_b64`` again.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta
from pydantic import TypeAdapter

from schemas._events import (
    _MAX_BASE64_LENGTH,
    InferenceEvent,
    TensorDType,
    TensorPayload,
    _check_nesting,
    tensor_data,
    tensor_elements,
)
from schemas._limits import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_OUTPUT_VALUES,
    MAX_TENSOR_DIMS,
    MAX_TENSOR_ELEMENTS,
)
from schemas._types import AwareTimestamp

__all__ = ["fast_event"]

_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
_NULL = msgspec.Raw(b"null")


class _Tensor(msgspec.Struct, forbid_unknown_fields=True):
    dtype: TensorDType
    shape: Annotated[
        list[Annotated[int, Meta(ge=0, le=MAX_TENSOR_ELEMENTS)]], Meta(max_length=MAX_TENSOR_DIMS)
    ]
    data_b64: Annotated[str, Meta(max_length=_MAX_BASE64_LENGTH)]


class _Event(msgspec.Struct, forbid_unknown_fields=True):
    event_id: _Id
    model_id: _Name
    input: msgspec.Raw
    model_version: Annotated[str, Meta(max_length=MAX_NAME_LENGTH)] | None = None
    ts: str | None = None
    request_id: Annotated[str, Meta(max_length=MAX_ID_LENGTH)] | None = None
    source: Annotated[str, Meta(max_length=MAX_ID_LENGTH)] | None = None
    output: msgspec.Raw = _NULL


_EVENTS = msgspec.json.Decoder(_Event)
_TENSORS = msgspec.json.Decoder(_Tensor)
_TIMESTAMP: TypeAdapter[Any] = TypeAdapter(AwareTimestamp)


def fast_event(raw: bytes) -> tuple[InferenceEvent, bytes | None] | None:
    """The event ``raw`` holds, and its tensor's bytes (``None`` for a nested list); or
    ``None`` when the fast path does not accept it (see the module's docstring).

    >>> event, data = fast_event(b'{"event_id": "e1", "model_id": "m", '
    ...     b'"input": {"dtype": "uint8", "shape": [2], "data_b64": "AQI="}}')
    >>> event.input.shape, data
    ([2], b'\\x01\\x02')
    >>> fast_event(b'{"event_id": "e1", "input": [1]}') is None  # decode_event says why
    True
    """
    try:
        return _decoded(raw)
    except MemoryError:
        raise
    except Exception:
        return None


def _decoded(raw: bytes) -> tuple[InferenceEvent, bytes | None] | None:
    envelope = _EVENTS.decode(raw)
    value = bytes(envelope.input)
    data: bytes | None = None
    model_input: Any
    if value.startswith(b"["):
        model_input = _check_nesting(orjson.loads(value))
    elif value.startswith(b"{"):
        tensor = _TENSORS.decode(value)
        tensor_elements(tensor.shape)
        data = tensor_data(tensor.data_b64, tensor.dtype, tensor.shape)
        model_input = TensorPayload.model_construct(
            dtype=tensor.dtype, shape=tensor.shape, data_b64=tensor.data_b64
        )
    else:
        return None
    output = _output(bytes(envelope.output))
    if output is False:
        return None
    event = InferenceEvent.model_construct(
        event_id=envelope.event_id,
        model_id=envelope.model_id,
        model_version=envelope.model_version,
        ts=_TIMESTAMP.validate_python(envelope.ts) if envelope.ts is not None else None,
        request_id=envelope.request_id,
        source=envelope.source,
        input=model_input,
        output=output,
    )
    return event, data


def _output(value: bytes) -> list[float] | Literal[False] | None:
    """``output`` as pydantic reads it when it is null or a list of JSON numbers; ``False``
    for anything else (left to pydantic)."""
    if value == b"null":
        return None
    numbers = orjson.loads(value)
    if (
        not isinstance(numbers, list)
        or len(numbers) > MAX_OUTPUT_VALUES
        or not all(type(n) is float or type(n) is int for n in numbers)
    ):
        return False
    return [float(n) for n in numbers]
