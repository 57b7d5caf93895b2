"""Waiting out an outage: retries with exponential back-off, on tenacity.

Every part of advmon that must not give up while a broker, the database or Alertmanager
is away (publishing a batch, storing detections, syncing alerts, the serving client's
reader) retries through :func:`retrying`, so the back-off is the same everywhere: the
first retry after ``first_s``, each later wait twice the one before, never more than
``most_s``, for as long as it takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
)

__all__ = ["retrying"]


def retrying(
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    *,
    first_s: float = 0.5,
    most_s: float = 30.0,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncRetrying:
    """Retry forever on ``retry_on``, with back-off from ``first_s`` up to ``most_s``.

    ``on_retry(error, delay)`` is called before each wait; ``sleep`` waits (an
    alternative may return early, e.g. when woken). Any other error is raised at once.

    Examples
    --------
    >>> attempts = []
    >>> async def flaky() -> str:
    ...     attempts.append(1)
    ...     if len(attempts) < 3:
    ...         raise ConnectionError("down")
    ...     return "up"
    >>> delays = []
    >>> retry = retrying(ConnectionError, first_s=0.01, on_retry=lambda e, d: delays.append(d))
    >>> asyncio.run(retry(flaky)), delays
    ('up', [0.01, 0.02])
    """

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(error, state.next_action.sleep)

    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait_exponential(multiplier=first_s, max=most_s),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
