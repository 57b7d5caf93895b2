"""What the worker's stages read and write: input messages and output records.

Every record a stage publishes is built here: :meth:`OutputRecord.of` encodes a wire
contract, :func:`dead_letter` keeps a refused record with its coordinates and reason.
A stage publishes through a :data:`Publish` callable, which returns once the broker has
acknowledged every record (see :meth:`monitor.worker.app.AdvmonApp.publish`).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel

from monitor.errors import InvalidRecordError
from schemas import DeadLetter, OipHalf

__all__ = ["InputMessage", "OutputRecord", "Publish", "b64", "dead_letter"]


@dataclass(frozen=True)
class InputMessage:
    """One message read from an inference topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float | None = None
    """Kafka timestamp, seconds since the epoch."""
    headers: tuple[tuple[str, bytes], ...] = ()
    """Kafka headers, in order."""


@dataclass(frozen=True)
class OutputRecord:
    """A record to publish: topic, key and JSON value."""

    topic: str
    key: bytes
    value: bytes

    @classmethod
    def of(cls, topic: str, key: str | bytes, value: BaseModel) -> OutputRecord:
        """``value`` as JSON on ``topic`` under ``key``.

        >>> OutputRecord.of("t", "k", DeadLetter.model_construct(reason="x")).key  # any contract
        b'k'
        """
        return cls(
            topic,
            key.encode() if isinstance(key, str) else key,
            value.model_dump_json().encode(),
        )


Publish = Callable[[Sequence[OutputRecord]], Awaitable[None]]
"""Publishes records and returns once the broker has acknowledged every one of them."""


def b64(value: bytes | None) -> str | None:
    """``value`` as base64 text (``None`` stays ``None``)."""
    return base64.b64encode(value).decode() if value is not None else None


def dead_letter(
    topic: str,
    original: InputMessage | OipHalf,
    error: InvalidRecordError,
    *,
    key: bytes | None = None,
    event_id: str | None = None,
    model_id: str | None = None,
) -> OutputRecord:
    """The dead letter of a refused record: its bytes, its coordinates and the reason.

    ``original`` is the message as read, or the OIP v2 half that carries it; the letter
    is keyed by ``key``, else the message's key, else ``topic/partition``. ``event_id``
    and ``model_id`` default to the error's.
    """
    if isinstance(original, OipHalf):
        key_b64, value_b64 = original.key_b64, original.value_b64
    else:
        key_b64, value_b64 = b64(original.key), base64.b64encode(original.value).decode()
    letter = DeadLetter(
        reason=error.reason,
        error=error.message,
        topic=original.topic,
        partition=original.partition,
        offset=original.offset,
        key_b64=key_b64,
        value_b64=value_b64,
        event_id=event_id if event_id is not None else error.event_id,
        model_id=model_id if model_id is not None else error.model_id,
        failed_at=datetime.now(UTC),
    )
    if key is None:
        key = original.key if isinstance(original, InputMessage) else None
    if key is None:
        key = f"{original.topic}/{original.partition}".encode()
    return OutputRecord.of(topic, key, letter)
