"""What the fuzz suite allows a decoder to do with one message, and how it measures it.

- **Outcome**: events, or a refusal (an :class:`~monitor.errors.InvalidRecordError`, or for
  :func:`schemas.decode_event` an :class:`~schemas.InvalidEventError`) with a non-empty
  reason. ``decode_error``, the last line of defence of :mod:`monitor.decoding`, counts as
  a failure here: it means a decoder raised something it should have foreseen.
- **Time**: the hypothesis ``deadline`` of the profile (2 s per example, ``conftest.py``).
- **Memory**: the peak of what Python and numpy allocate while decoding one message,
  traced by :mod:`tracemalloc`, at most :data:`MEMORY_BOUND_BYTES` plus
  :data:`MEMORY_PER_MESSAGE_BYTE` times the message's size.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from monitor.decoding import DECODE_ERROR
from monitor.errors import InvalidRecordError
from schemas import InvalidEventError

__all__ = [
    "MEMORY_BOUND_BYTES",
    "MEMORY_PER_MESSAGE_BYTE",
    "Refused",
    "examples",
    "outcome",
]

T = TypeVar("T")

MEMORY_BOUND_BYTES = 16 * 2**20
"""What decoding one message may allocate at its peak, beyond its share per byte."""

MEMORY_PER_MESSAGE_BYTE = 64
"""What decoding may allocate per byte of the message (JSON parsing alone makes a Python
object of up to ~60 bytes of one or two bytes of text)."""

_SCALE = 20 if os.environ.get("FUZZ_PROFILE") == "long" else 1


def examples(count: int) -> int:
    """``count`` examples in CI, 20 times as many with ``FUZZ_PROFILE=long``."""
    return count * _SCALE


Refused = InvalidRecordError | InvalidEventError


@contextmanager
def _memory_traced() -> Iterator[None]:
    """Trace allocations (numpy's arrays included) while decoding one message only, so
    that generating the examples runs at full speed."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


def outcome(call: Callable[[], T], size: int) -> T | Refused:
    """What ``call`` returns, or the refusal it raises, checked against the bounds for a
    message of ``size`` bytes; any other exception propagates and fails the example."""
    result: T | Refused
    with _memory_traced():
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        try:
            result = call()
        except InvalidRecordError as error:
            result = error
        except InvalidEventError as error:
            result = error
        _, peak = tracemalloc.get_traced_memory()
    if isinstance(result, InvalidRecordError):
        assert result.reason, f"a refusal without a reason: {result!r}"
        assert result.reason != DECODE_ERROR, f"an unforeseen exception: {result}"
        assert str(result)
    elif isinstance(result, InvalidEventError):
        assert result.field, f"a refusal without a field: {result!r}"
        assert result.reason, f"a refusal without a reason: {result!r}"
    bound = MEMORY_BOUND_BYTES + MEMORY_PER_MESSAGE_BYTE * size
    assert peak - before <= bound, f"decoding allocated {peak - before} bytes (bound {bound})"
    return result
