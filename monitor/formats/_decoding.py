"""Steps every decoder shares: parsing JSON, validating a wire model, building the event."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from monitor.errors import validation_problem
from monitor.formats._errors import FormatError, FormatErrorReason
from schemas import InferenceEvent, InvalidEventError, validate_event

__all__ = ["build_event", "load_json", "row_event_id", "validate_wire"]

_Model = TypeVar("_Model", bound=BaseModel)
_LIMIT_ERROR_TYPES = frozenset({"too_long", "string_too_long"})


def load_json(raw: bytes | str, what: str) -> Any:
    """Parse ``raw`` as JSON; ``what`` names it in the error (``"message value"``)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FormatError(
            FormatErrorReason.INVALID_JSON, f"{what} is not valid JSON: {exc}"
        ) from None


def validate_wire(model: type[_Model], data: Any, reason: FormatErrorReason, what: str) -> _Model:
    """Validate parsed JSON against a wire model; the first problem names its field.

    A value longer than its field's ``max_length`` (a limit) is refused as ``too_large``,
    anything else with ``reason``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        if exc.errors()[0]["type"] in _LIMIT_ERROR_TYPES:
            reason = FormatErrorReason.TOO_LARGE
        raise FormatError(reason, f"{what}: {validation_problem(exc)}") from None


def row_event_id(base: str, row: int, rows: int) -> str:
    """``base`` for a batch of one, ``f"{base}#{row}"`` for each row of a larger batch."""
    return base if rows == 1 else f"{base}#{row}"


def build_event(fields: dict[str, Any], what: str) -> InferenceEvent:
    """Validate the native event fields a decoder assembled; ``what`` names the message."""
    try:
        return validate_event(fields)
    except InvalidEventError as exc:
        raise FormatError(
            FormatErrorReason.TOO_LARGE if exc.too_large else FormatErrorReason.INVALID_EVENT,
            f"{what} does not make a valid inference event: field {exc.field!r}: {exc.reason}",
        ) from None
