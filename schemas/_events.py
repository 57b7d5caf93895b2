"""The native inference event: one JSON object per Kafka message."""

from __future__ import annotations

import base64
import binascii
import math
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic import field_validator as _field_validator
from pydantic_core import PydanticCustomError

from schemas._errors import InvalidEventError
from schemas._limits import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_OUTPUT_VALUES,
    MAX_TENSOR_BYTES,
    MAX_TENSOR_DIMS,
    MAX_TENSOR_ELEMENTS,
)
from schemas._types import AwareTimestamp, WireModel

__all__ = [
    "InferenceEvent",
    "TensorDType",
    "TensorPayload",
    "decode_event",
    "validate_event",
]


class TensorDType(StrEnum):
    """Element type of a tensor payload, named as in numpy."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    BOOL = "bool"

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _ITEMSIZE[self]


_ITEMSIZE: dict[TensorDType, int] = {
    TensorDType.FLOAT16: 2,
    TensorDType.FLOAT32: 4,
    TensorDType.FLOAT64: 8,
    TensorDType.INT8: 1,
    TensorDType.INT16: 2,
    TensorDType.INT32: 4,
    TensorDType.INT64: 8,
    TensorDType.UINT8: 1,
    TensorDType.UINT16: 2,
    TensorDType.UINT32: 4,
    TensorDType.UINT64: 8,
    TensorDType.BOOL: 1,
}


_LIMIT_ERROR_TYPES = frozenset({"too_long", "string_too_long", "less_than_equal", "limit_exceeded"})
"""pydantic error types that mean a hard limit was exceeded (reason ``too_large``)."""

_MAX_BASE64_LENGTH = 4 * math.ceil(MAX_TENSOR_BYTES / 3)


def _limit_exceeded(message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError("limit_exceeded", message, context)


def _base64_size(text: str) -> int | None:
    """Bytes that base64 ``text`` decodes to, from its length; ``None`` if it cannot be
    valid (its length is not a multiple of 4)."""
    if len(text) % 4:
        return None
    return len(text) // 4 * 3 - text[-2:].count("=")


class TensorPayload(WireModel):
    """A model input as raw little-endian bytes, C order, standard base64 encoded.

    Limits (reason ``too_large``): at most ``MAX_TENSOR_DIMS`` dimensions, each and their
    product at most ``MAX_TENSOR_ELEMENTS``, at most ``MAX_TENSOR_BYTES`` of data. The
    size the base64 text decodes to is checked against the shape from its length, before
    anything is decoded.
    """

    dtype: TensorDType = Field(description="Element type, named as in numpy.")
    shape: list[Annotated[StrictInt, Field(ge=0, le=MAX_TENSOR_ELEMENTS)]] = Field(
        max_length=MAX_TENSOR_DIMS,
        description="Dimensions without the batch axis; [] for a scalar. At most "
        f"{MAX_TENSOR_DIMS} dimensions and {MAX_TENSOR_ELEMENTS} elements.",
    )
    data_b64: str = Field(
        max_length=_MAX_BASE64_LENGTH,
        description="Standard base64 (RFC 4648, with padding) of prod(shape) * itemsize "
        f"raw little-endian bytes in C order; at most {MAX_TENSOR_BYTES} bytes.",
    )

    @_field_validator("shape")
    @classmethod
    def _check_elements(cls, shape: list[int]) -> list[int]:
        tensor_elements(shape)
        return shape

    @_field_validator("data_b64")
    @classmethod
    def _check_data(cls, value: str, info: ValidationInfo) -> str:
        # dtype and shape are validated first (field order); skip the size check when either
        # failed, since its own error already says what is wrong.
        tensor_data(value, info.data.get("dtype"), info.data.get("shape"))
        return value

    def to_bytes(self) -> bytes:
        """Decode ``data_b64`` into the raw little-endian bytes, C order."""
        return base64.b64decode(self.data_b64, validate=True)


def tensor_elements(shape: list[int]) -> int:
    """The elements of ``shape``; raises pydantic's error when they are over the limit."""
    elements = math.prod(shape)
    if elements > MAX_TENSOR_ELEMENTS:
        raise _limit_exceeded(
            "shape {shape} holds {elements} elements; at most {limit} are accepted",
            shape=shape,
            elements=elements,
            limit=MAX_TENSOR_ELEMENTS,
        )
    return elements


def tensor_data(value: str, dtype: TensorDType | None, shape: list[int] | None) -> bytes:
    """The bytes a tensor payload's ``data_b64`` holds, checked as its validator checks it.

    The size is checked from the text's length (when ``dtype`` and ``shape`` are known),
    so a payload of the wrong size is never decoded. Raises pydantic's errors.
    """
    size = _base64_size(value)
    if dtype is not None and shape is not None and size is not None:
        expected = math.prod(shape) * dtype.itemsize
        if expected > MAX_TENSOR_BYTES:
            raise _limit_exceeded(
                "shape {shape} of {dtype} needs {expected} bytes; at most {limit} are accepted",
                shape=shape,
                dtype=str(dtype),
                expected=expected,
                limit=MAX_TENSOR_BYTES,
            )
        if size != expected:
            raise PydanticCustomError(
                "tensor_size_mismatch",
                "decoded {actual} bytes, but shape {shape} of {dtype} needs {expected}",
                {"actual": size, "shape": shape, "dtype": str(dtype), "expected": expected},
            )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PydanticCustomError(
            "base64_invalid", "not valid standard base64: {error}", {"error": str(exc)}
        ) from exc


_NESTED_LIST_TAG = "nested_list"
_TENSOR_TAG = "tensor"


def _input_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return _NESTED_LIST_TAG
    if isinstance(value, dict | TensorPayload):
        return _TENSOR_TAG
    return None


def _check_nesting(value: list[Any]) -> list[Any]:
    """Refuse a nested list deeper than ``MAX_TENSOR_DIMS`` or holding more than
    ``MAX_TENSOR_ELEMENTS`` numbers, judged along its first elements (a rectangular list's
    shape; a ragged one is refused downstream)."""
    depth, elements, level = 0, 1, value
    while isinstance(level, list):
        depth += 1
        elements *= len(level)
        if depth > MAX_TENSOR_DIMS:
            raise _limit_exceeded(
                "nested list is more than {limit} levels deep", limit=MAX_TENSOR_DIMS
            )
        if elements > MAX_TENSOR_ELEMENTS:
            raise _limit_exceeded(
                "nested list holds more than {limit} numbers", limit=MAX_TENSOR_ELEMENTS
            )
        if not level:
            break
        level = level[0]
    return value


# The nested list stays list[Any]: checking a 224x224x3 image element by element here would
# cost more than scoring it; the numeric and rectangular checks happen in numpy downstream,
# and only its depth and size are checked here, in time proportional to its depth.
# Its JSON Schema says a little more, for producers.
NestedNumbers = Annotated[
    list[Any],
    AfterValidator(_check_nesting),
    WithJsonSchema(
        {
            "description": "A rectangular nested list of numbers, at most "
            f"{MAX_TENSOR_DIMS} levels deep and {MAX_TENSOR_ELEMENTS} numbers.",
            "items": {"type": ["number", "array"]},
            "type": "array",
        }
    ),
]

EventId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]

ModelInput = Annotated[
    Annotated[NestedNumbers, Tag(_NESTED_LIST_TAG)] | Annotated[TensorPayload, Tag(_TENSOR_TAG)],
    Discriminator(
        _input_kind,
        custom_error_type="input_type",
        custom_error_message="input must be a nested list of numbers "
        "or an object {dtype, shape, data_b64}",
    ),
]


class InferenceEvent(WireModel):
    """One inference as serving reports it: the native event, one JSON object per message.

    Unknown fields are ignored. Ids, names and ``output`` have hard limits (``MAX_*`` of
    :mod:`schemas`), as has ``input`` (see :class:`TensorPayload`, ``NestedNumbers``).
    """

    event_id: EventId = Field(description="Unique id of this inference.")
    model_id: ModelName = Field(description="Which model served it; selects the detector.")
    model_version: str | None = Field(
        default=None, max_length=MAX_NAME_LENGTH, description="Version of the model."
    )
    ts: AwareTimestamp | None = Field(
        default=None, description="When serving answered (RFC 3339, with offset)."
    )
    request_id: str | None = Field(
        default=None,
        max_length=MAX_ID_LENGTH,
        description="Serving's request id; key of the per-request decision.",
    )
    source: str | None = Field(
        default=None,
        max_length=MAX_ID_LENGTH,
        description="Caller identity (API key id, user, IP hash); unit of quarantine.",
    )
    input: ModelInput = Field(
        description="The model input without batch axis: a nested list of numbers, "
        "or a tensor payload."
    )
    output: list[float] | None = Field(
        default=None,
        max_length=MAX_OUTPUT_VALUES,
        description="What the model returned (scores or logits).",
    )


_JSON_TYPE_NAMES: dict[type, str] = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    # Drop the union tag pydantic puts after "input", so a tensor error reads "input.shape".
    if len(loc) > 1 and loc[0] == "input" and loc[1] in (_NESTED_LIST_TAG, _TENSOR_TAG):
        loc = loc[:1] + loc[2:]
    return ".".join(str(part) for part in loc) or "<root>"


def _reason(message: str) -> str:
    # pydantic capitalises its messages ("Field required"); ours continue a sentence.
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        return message[0].lower() + message[1:]
    return message


def validate_event(data: Any) -> InferenceEvent:
    """Validate an already-parsed JSON value as an :class:`InferenceEvent`.

    Adapters for other payload formats build the native dict and call this, so their
    errors read the same as :func:`decode_event`'s.

    Raises
    ------
    InvalidEventError
        When ``data`` is not an object or breaks the contract; ``errors`` lists every
        problem, ``too_large`` says whether the first is a hard limit exceeded.

    Examples
    --------
    >>> validate_event({"event_id": "e1", "model_id": "m", "input": [0.5]}).input
    [0.5]
    >>> validate_event({"event_id": "e1", "input": [0.5]})
    Traceback (most recent call last):
    ...
    schemas.InvalidEventError: invalid event: field 'model_id': field required
    """
    if not isinstance(data, dict):
        kind = _JSON_TYPE_NAMES.get(type(data), type(data).__name__)
        raise InvalidEventError("<root>", f"an event must be a JSON object, got {kind}")
    try:
        return InferenceEvent.model_validate(data)
    except ValidationError as exc:
        details = exc.errors()
        errors = [(_field_path(error["loc"]), _reason(error["msg"])) for error in details]
        field, reason = errors[0]
        too_large = details[0]["type"] in _LIMIT_ERROR_TYPES
        raise InvalidEventError(field, reason, errors, too_large) from None


def decode_event(raw: bytes | str) -> InferenceEvent:
    """Parse one Kafka message value (JSON) into an :class:`InferenceEvent`.

    Raises
    ------
    InvalidEventError
        With field ``<json>`` when ``raw`` is not JSON, ``<root>`` when it is not an
        object, else the dotted path of the first offending field.

    Examples
    --------
    >>> event = decode_event(
    ...     b'{"event_id": "e1", "model_id": "digits", "ts": "2024-05-01T12:00:00Z",'
    ...     b' "input": {"dtype": "uint8", "shape": [2], "data_b64": "AQI="}, "extra": 1}'
    ... )
    >>> event.model_id, event.ts.isoformat(), event.input.shape
    ('digits', '2024-05-01T12:00:00+00:00', [2])
    >>> try:
    ...     decode_event(b'{"event_id": "e2", "model_id": "digits", "input": "pixels"}')
    ... except InvalidEventError as error:
    ...     print(error.field, "->", error.reason)
    input -> input must be a nested list of numbers or an object {dtype, shape, data_b64}
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError("<json>", f"not valid JSON: {exc}") from None
    return validate_event(data)
