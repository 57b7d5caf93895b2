"""Per-event drift signals of one model, on advmon's internal signals topic."""

from __future__ import annotations

from pydantic import Field, FiniteFloat, NonNegativeInt, model_validator

from schemas._types import NonEmptyStr, WireModel

__all__ = ["SignalBatch"]


class SignalBatch(WireModel):
    """Signal values of a batch of scored events of one model, keyed by model id.

    Columns are parallel lists: entry ``i`` of every list describes the same event.
    The Kafka coordinates of each event let the drift stage apply every event once,
    even when a restarted worker scores some of them again.
    """

    model_id: NonEmptyStr = Field(description="Model that served the events; the message key.")
    event_ids: list[NonEmptyStr] = Field(description="The events, in the order scored.")
    times: list[FiniteFloat] = Field(
        description="Event times, seconds since the epoch (the event's ts, else Kafka's)."
    )
    topics: list[NonEmptyStr] = Field(description="Inference topic of each event.")
    partitions: list[NonNegativeInt] = Field(description="Partition of each event.")
    offsets: list[NonNegativeInt] = Field(description="Offset of each event.")
    rows: list[NonNegativeInt] | None = Field(
        default=None,
        description=(
            "Row of each event within its message, for formats that log a batch per "
            "message; none: every event is row 0."
        ),
    )
    columns: dict[str, list[FiniteFloat]] = Field(
        description="Signal values by column name (top1, entropy, score, prediction, …)."
    )

    @model_validator(mode="after")
    def _same_lengths(self) -> SignalBatch:
        n = len(self.event_ids)
        lengths = {
            "times": len(self.times),
            "topics": len(self.topics),
            "partitions": len(self.partitions),
            "offsets": len(self.offsets),
            **({"rows": len(self.rows)} if self.rows is not None else {}),
            **{f"columns.{k}": len(v) for k, v in self.columns.items()},
        }
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"every list must have {n} entries (one per event); got {wrong}")
        return self

    @property
    def key(self) -> str:
        """The Kafka message key: the model id."""
        return self.model_id
