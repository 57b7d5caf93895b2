"""What the worker's stages read and write: input messages and output records.

Every record a stage publishes is built here: :meth:`OutputRecord.of` encodes a wire
contract, :func:`dead_letter` keeps a refused record with its coordinates and reason.
A stage publishes through a :data:`Publish` callable, which returns once the broker has
acknowledged every record (see :meth:`monitor.worker.app.AdvmonApp.publish`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel

from monitor.errors import InvalidRecordError
from schemas import DeadLetter, OipHalf

__all__ = [
    "DEAD_LETTER_COPY_BYTES",
    "InputMessage",
    "OutputRecord",
    "Publish",
    "PublishInOrder",
    "b64",
    "dead_letter",
]

DEAD_LETTER_COPY_BYTES = 65_536
"""How much of a refused value a dead letter keeps by default (the worker config's
``dead_letters.copy_bytes``); its size and SHA-256 describe the whole of it."""


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

PublishInOrder = Callable[
    [Sequence[OutputRecord], "asyncio.Future[None] | None", "asyncio.Future[None]"],
    Awaitable[None],
]
""":data:`Publish` for concurrent callers that must stay in order: ``(records, after,
queued)`` hands the records to the producer only once ``after`` is done, and marks
``queued`` done once it has (see :meth:`monitor.worker.app.AdvmonApp.publish`)."""


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
    copy_bytes: int = DEAD_LETTER_COPY_BYTES,
) -> OutputRecord:
    """The dead letter of a refused record: its bytes, its coordinates and the reason.

    ``original`` is the message as read, or the OIP v2 half that carries it; the letter
    keeps at most ``copy_bytes`` of its value and, whatever its length, its size and
    SHA-256. It is keyed by ``key``, else the message's key, else ``topic/partition``.
    ``event_id`` and ``model_id`` default to the error's.

    >>> message = InputMessage("t", 0, 7, None, b"x" * 100)
    >>> letter = DeadLetter.model_validate_json(
    ...     dead_letter("dead", message, InvalidRecordError("r", "e"), copy_bytes=10).value)
    >>> letter.value_truncated, letter.value_size, base64.b64decode(letter.value_b64)
    (True, 100, b'xxxxxxxxxx')
    """
    if isinstance(original, OipHalf):
        key_b64 = original.key_b64
        value = base64.b64decode(original.value_b64)
    else:
        key_b64, value = b64(original.key), original.value
    if key_b64 is not None and len(key_b64) > copy_bytes:
        key_b64 = None  # keys are short; a huge one is part of the attack, not of the letter
    letter = DeadLetter(
        reason=error.reason,
        error=error.message[:4096],
        topic=original.topic,
        partition=original.partition,
        offset=original.offset,
        key_b64=key_b64,
        value_b64=base64.b64encode(value[:copy_bytes]).decode(),
        value_size=len(value),
        value_sha256=hashlib.sha256(value).hexdigest(),
        value_truncated=len(value) > copy_bytes,
        event_id=_bounded(event_id if event_id is not None else error.event_id),
        model_id=_bounded(model_id if model_id is not None else error.model_id),
        failed_at=datetime.now(UTC),
    )
    if key is None:
        key = original.key if isinstance(original, InputMessage) else None
    if key is None or len(key) > copy_bytes:
        key = f"{original.topic}/{original.partition}".encode()
    return OutputRecord.of(topic, key, letter)


def _bounded(text: str | None, most: int = 1024) -> str | None:
    return text[:most] if text is not None else None
