"""What serving should do about a request or a source, as published on the decisions topic."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, FiniteFloat, model_validator
from pydantic_core import PydanticCustomError

from schemas._types import AwareTimestamp, NonEmptyStr, WireModel

__all__ = ["Action", "Decision", "Reason", "Scope"]


class Action(StrEnum):
    """What serving should do."""

    ALLOW = "allow"
    FLAG = "flag"
    QUARANTINE = "quarantine"


class Scope(StrEnum):
    """What a decision applies to: one request, or every request from a source."""

    REQUEST = "request"
    SOURCE = "source"


class Reason(WireModel):
    """One detector's verdict behind a decision."""

    detector: NonEmptyStr = Field(description="Name of the detector.")
    score: FiniteFloat = Field(description="The detector's score.")
    threshold: FiniteFloat = Field(description="The threshold the score was compared with.")


class Decision(WireModel):
    """A decision for serving; published on the decisions topic.

    A request-scoped decision is keyed by its request_id, or its event_id when serving
    sent none; a source-scoped one needs a source, its key.
    """

    event_id: NonEmptyStr = Field(description="Id of the event that led to the decision.")
    request_id: str | None = Field(default=None, description="Serving's request id.")
    source: str | None = Field(default=None, description="Caller identity.")
    model_id: NonEmptyStr = Field(description="Model that served the event.")
    model_version: str | None = Field(default=None, description="Version of the model.")
    action: Action = Field(description="What serving should do.")
    scope: Scope = Field(description="Whether the action covers the request or the source.")
    reasons: list[Reason] = Field(
        default_factory=list, description="The detector verdicts behind the decision."
    )
    expires_at: AwareTimestamp | None = Field(
        default=None, description="When the decision lapses; null for never."
    )
    decided_at: AwareTimestamp = Field(description="When the monitor decided.")

    @model_validator(mode="after")
    def _check_key(self) -> Self:
        if self.scope is Scope.SOURCE and self.source is None:
            raise PydanticCustomError(
                "decision_key_missing", "a source-scoped decision needs a source"
            )
        return self

    @property
    def key(self) -> str:
        """The Kafka message key: the request id (else event id) or the source, by scope."""
        if self.scope is Scope.REQUEST:
            return self.request_id or self.event_id
        assert self.source is not None  # guaranteed by _check_key
        return self.source
