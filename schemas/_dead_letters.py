"""Records on advmon's dead-letter topic and its internal source-flag topic."""

from __future__ import annotations

from pydantic import Field, FiniteFloat, NonNegativeInt

from schemas._types import AwareTimestamp, NonEmptyStr, WireModel

__all__ = ["DeadLetter", "SourceFlag"]


class DeadLetter(WireModel):
    """An input message advmon could not use, with where it came from and why.

    The original bytes are kept (base64) so that the message can be inspected and replayed,
    up to a bound: a longer value keeps its first bytes, and ``value_size`` and
    ``value_sha256`` describe the whole of it, so a dead letter never outgrows what the
    producer may send.
    """

    reason: NonEmptyStr = Field(
        description="Short machine-readable cause, e.g. invalid_event, unknown_model, shape."
    )
    error: str = Field(description="Human-readable explanation.")
    topic: NonEmptyStr = Field(description="Topic the message was read from.")
    partition: NonNegativeInt = Field(description="Its partition.")
    offset: NonNegativeInt = Field(description="Its offset.")
    key_b64: str | None = Field(default=None, description="The message key, base64.")
    value_b64: str = Field(
        description="The message value (its first bytes when truncated), base64."
    )
    value_size: NonNegativeInt | None = Field(
        default=None, description="Size of the whole message value, bytes."
    )
    value_sha256: str | None = Field(
        default=None, description="SHA-256 of the whole message value, hex."
    )
    value_truncated: bool = Field(
        default=False, description="Whether value_b64 holds only the first bytes of the value."
    )
    event_id: str | None = Field(default=None, description="The event id, when it could be read.")
    model_id: str | None = Field(default=None, description="The model id, when it could be read.")
    failed_at: AwareTimestamp = Field(description="When advmon gave up on the message.")


class SourceFlag(WireModel):
    """One flagged event of a source, re-keyed by source for per-source quarantine counts."""

    source: NonEmptyStr = Field(description="Caller identity; the message key.")
    event_id: NonEmptyStr = Field(description="The flagged event.")
    model_id: NonEmptyStr = Field(description="Model that served it.")
    model_version: str | None = Field(default=None, description="Version of the model.")
    score: FiniteFloat = Field(description="Its squeeze score.")
    threshold: FiniteFloat = Field(description="The detector's threshold.")
    enforce: bool = Field(description="Whether the model's policy enforces quarantines.")
    flagged_at: AwareTimestamp = Field(description="When the event was flagged.")
