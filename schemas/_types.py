"""Field types and the base model shared by every wire contract."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = ["AwareTimestamp", "NonEmptyStr", "WireModel"]


def _require_timezone(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise PydanticCustomError(
            "timezone_required",
            "timestamp has no timezone offset; RFC 3339 requires one, "
            "e.g. '2024-05-01T12:00:00Z' or '2024-05-01T14:00:00+02:00'",
        )
    return value


AwareTimestamp = Annotated[datetime, AfterValidator(_require_timezone)]
"""An RFC 3339 timestamp that carries its timezone offset; naive ones are rejected."""

NonEmptyStr = Annotated[str, Field(min_length=1)]
"""A string of at least one character."""


class WireModel(BaseModel):
    """Base of the wire contracts: immutable, and tolerant of fields added by newer producers."""

    model_config = ConfigDict(frozen=True, extra="ignore")
