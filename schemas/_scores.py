"""The offline score line written by ``advmon score``."""

from __future__ import annotations

from pydantic import Field, FiniteFloat

from schemas._types import WireModel

__all__ = ["ScoreRecord"]


class ScoreRecord(WireModel):
    """One line of the output of advmon score: the verdict on one input event."""

    event_id: str = Field(description="Id of the scored event.")
    score: FiniteFloat = Field(description="Squeeze score: larger is more suspicious.")
    flagged: bool = Field(description="Whether the score exceeds the detector's threshold.")
