"""Query fingerprints of one source, on advmon's internal query-fingerprints topic."""

from __future__ import annotations

import base64
import binascii

import orjson
from pydantic import Field, FiniteFloat, NonNegativeInt, field_validator, model_validator

from schemas._types import NonEmptyStr, WireModel

__all__ = ["FINGERPRINT_BYTES", "QueryPrints", "query_key"]

FINGERPRINT_BYTES = 128
"""Bytes of one fingerprint's bit map (1,024 bits; :mod:`detectors.queries`)."""
_MAX_EVENTS = 65_536
_UINT64 = (1 << 64) - 1


def query_key(model_id: str, source: str) -> str:
    """The message key (and table key) of a source's queries to a model: both, unambiguous
    whatever characters either holds.

    >>> query_key("digits", "alice")
    '["digits","alice"]'
    """
    return orjson.dumps([model_id, source]).decode()


class QueryPrints(WireModel):
    """Fingerprints of one source's queries to one model, from one scored batch.

    Columns are parallel lists, entry ``i`` of each for the batch's ``i``-th query of the
    source, in the order they were read. Keyed by :func:`query_key`, so that each source's
    history lives on one worker.
    """

    model_id: NonEmptyStr = Field(description="Model the queries went to.")
    model_version: str | None = Field(default=None, description="Version of the model.")
    source: NonEmptyStr = Field(description="Caller identity that sent them.")
    enforce: bool = Field(description="Whether the model's policy enforces quarantines.")
    event_ids: list[NonEmptyStr] = Field(max_length=_MAX_EVENTS)
    times: list[FiniteFloat] = Field(description="Event times, seconds since the epoch.")
    request_digests: list[int] = Field(
        description="64-bit digests of the request ids (0: none); retries share one."
    )
    digests: list[int] = Field(description="64-bit digests of the input bytes.")
    windows: list[NonNegativeInt] = Field(description="Window hashes kept per fingerprint.")
    bitmaps: list[str] = Field(description="Each fingerprint's bit map, base64.")
    topics: list[NonEmptyStr]
    partitions: list[NonNegativeInt]
    offsets: list[NonNegativeInt]

    @field_validator("request_digests", "digests")
    @classmethod
    def _uint64(cls, values: list[int]) -> list[int]:
        if any(v < 0 or v > _UINT64 for v in values):
            raise ValueError("digests are unsigned 64-bit integers")
        return values

    @model_validator(mode="after")
    def _same_lengths(self) -> QueryPrints:
        n = len(self.event_ids)
        lengths = {
            name: len(getattr(self, name))
            for name in (
                "times",
                "request_digests",
                "digests",
                "windows",
                "bitmaps",
                "topics",
                "partitions",
                "offsets",
            )
        }
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"every list must have {n} entries (one per query); got {wrong}")
        return self

    def bitmap_bytes(self) -> bytes:
        """Every bit map, concatenated (``FINGERPRINT_BYTES`` each); ``ValueError`` when one
        is not base64 of that many bytes."""
        parts = []
        for text in self.bitmaps:
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("a fingerprint bit map is not base64") from None
            if len(raw) != FINGERPRINT_BYTES:
                raise ValueError(f"a fingerprint bit map must hold {FINGERPRINT_BYTES} bytes")
            parts.append(raw)
        return b"".join(parts)

    @property
    def key(self) -> str:
        """The Kafka message key: :func:`query_key` of the model and source."""
        return query_key(self.model_id, self.source)
