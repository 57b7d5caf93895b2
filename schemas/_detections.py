"""A flagged event, as published on the detections topic."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, FiniteFloat, NonNegativeInt

from schemas._types import AwareTimestamp, NonEmptyStr, WireModel

__all__ = ["Detection", "DetectionKind"]


class DetectionKind(StrEnum):
    """What a detection found."""

    ADVERSARIAL = "adversarial"
    DRIFT = "drift"
    QUARANTINE = "quarantine"
    QUERY_ATTACK = "query_attack"


class Detection(WireModel):
    """An event a detector flagged; published on the detections topic, keyed by model.

    A drift detection names the event at which the drift detector signalled; its
    ``score`` is the size of the shift of the signal's mean (recent against before),
    ``threshold`` is 0 and ``details`` holds the window statistics.

    A query-attack detection names the query at which a source's queries crossed the
    threshold: ``score`` is how many of its held queries are linked to it by matches,
    ``threshold`` the model's ``min_linked``, ``related_event_ids`` a few of the queries
    it matched, ``expires_at`` when the source's decision lapses, and ``details`` the
    direct matches, queries held and the span of the linked queries in seconds.
    """

    event_id: NonEmptyStr = Field(description="Id of the flagged event.")
    model_id: NonEmptyStr = Field(description="Model that served the event; the message key.")
    model_version: str | None = Field(default=None, description="Version of the model.")
    request_id: str | None = Field(default=None, description="Serving's request id.")
    source: str | None = Field(default=None, description="Caller identity.")
    kind: DetectionKind = Field(description="What was detected.")
    score: FiniteFloat = Field(description="The detector's score for the event.")
    threshold: FiniteFloat = Field(description="The threshold the score was compared with.")
    prediction: int | None = Field(
        default=None, description="The model's predicted class, when it is a classifier."
    )
    detector_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None,
        description="SHA-256 (lowercase hex) of the detector file that scored the event.",
    )
    expires_at: AwareTimestamp | None = Field(
        default=None, description="For a quarantine: when the source's quarantine lapses."
    )
    event_ts: AwareTimestamp | None = Field(
        default=None, description="When serving answered, from the event."
    )
    detected_at: AwareTimestamp = Field(description="When the monitor flagged the event.")
    topic: str | None = Field(default=None, description="Kafka topic the event was read from.")
    partition: NonNegativeInt | None = Field(
        default=None, description="Kafka partition the event was read from."
    )
    offset: NonNegativeInt | None = Field(default=None, description="Kafka offset of the event.")
    signal: str | None = Field(
        default=None,
        description="For drift: the signal stream that changed (e.g. top1, predicted_class:3).",
    )
    detector: str | None = Field(
        default=None, description="For drift: the drift detector that signalled (e.g. adwin)."
    )
    related_event_ids: list[NonEmptyStr] = Field(
        default_factory=list,
        max_length=16,
        description="For a query attack: earlier queries of the source it matched, newest first.",
    )
    details: dict[str, FiniteFloat] = Field(
        default_factory=dict,
        description=(
            "Named contributions to the score, such as the distance per squeezer, or a "
            "drift's window statistics."
        ),
    )

    @property
    def key(self) -> str:
        """The Kafka message key: the model id."""
        return self.model_id
