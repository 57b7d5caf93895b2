"""The offline score line written by ``advmon score``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    FiniteFloat,
    NonNegativeInt,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from schemas._types import WireModel

__all__ = ["QueryOutcome", "ScoreRecord"]

QueryOutcome = Literal["new", "retry", "repeat", "low_information"]
"""What a query did to its source's history (``detectors.queries.QueryObservation``)."""


class ScoreRecord(WireModel):
    """One line of the output of advmon score: the verdict on one input event.

    The ``query_*`` fields are present on the events that name a ``source`` while
    query-attack detection runs (docs/query-attacks.md), absent otherwise: a record
    without them is written with the three verdict fields alone.
    """

    event_id: str = Field(description="Id of the scored event.")
    score: FiniteFloat = Field(description="Squeeze score: larger is more suspicious.")
    flagged: bool = Field(description="Whether the score exceeds the detector's threshold.")
    query_outcome: QueryOutcome | None = Field(
        default=None,
        description="What the query did to its source's history: new (held and matched "
        "against the earlier queries), retry (the request id of a held query), repeat (the "
        "input bytes of a held query) or low_information (too few distinct windows to "
        "match anything); only new queries count towards a query attack.",
    )
    query_matches: NonNegativeInt | None = Field(
        default=None,
        description="Held queries of the same source and model this query matches (0 unless new).",
    )
    query_linked: NonNegativeInt | None = Field(
        default=None,
        description="Held queries joined to this one by a chain of matches: what a source "
        "is flagged on (0 unless new).",
    )
    query_attack: bool | None = Field(
        default=None,
        description="Whether this query is linked to at least min_linked held queries of "
        "its source: the source is flagged for a query attack.",
    )
    query_matched_event_ids: list[str] | None = Field(
        default=None,
        description="Event ids of the most recent held queries it matches, newest first "
        "(at most 5).",
    )

    @model_serializer(mode="wrap")
    def _without_absent_query_fields(
        self, handler: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or not k.startswith("query_")}
