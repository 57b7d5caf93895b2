"""OIP v2 requests and responses on advmon's internal join topic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt

from schemas._types import AwareTimestamp, NonEmptyStr, WireModel

__all__ = ["OipHalf"]


class OipHalf(WireModel):
    """One half of an OIP v2 inference (request or response), re-keyed by CloudEvent id.

    The original record is kept whole (value, key and headers, base64) with where it was
    read, so the join decodes it again and a failure points back to the original.
    """

    id: NonEmptyStr = Field(description="The CloudEvent id shared by request and response.")
    kind: Literal["request", "response"] = Field(description="Which half this is.")
    model_id: NonEmptyStr = Field(description="Model whose topic the record was read from.")
    topic: NonEmptyStr = Field(description="Topic the record was read from.")
    partition: NonNegativeInt = Field(description="Its partition.")
    offset: NonNegativeInt = Field(description="Its offset.")
    key_b64: str | None = Field(default=None, description="The record key, base64.")
    value_b64: str = Field(description="The record value, base64.")
    headers: list[tuple[str, str]] = Field(
        default_factory=list, description="The record headers: name and base64 value."
    )
    timestamp: float | None = Field(
        default=None, description="Kafka timestamp of the record, epoch seconds."
    )
    received_at: AwareTimestamp = Field(description="When advmon read the record.")

    @property
    def key(self) -> str:
        """The Kafka message key: the CloudEvent id."""
        return self.id
