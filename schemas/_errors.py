"""The exception tree of :mod:`schemas`."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["InvalidEventError", "SchemaError"]


class SchemaError(Exception):
    """Root of every error raised by :mod:`schemas`.

    The tree::

        SchemaError
         └── InvalidEventError   (also a ValueError) an inference event broke the contract
    """


class InvalidEventError(SchemaError, ValueError):
    """An inference event that does not meet the wire contract.

    Parameters
    ----------
    field
        Dotted path of the offending field, such as ``event_id`` or ``input.shape.1``;
        ``<json>`` when the message is not JSON, ``<root>`` when it is not a JSON object.
    reason
        What was wrong, in words.
    errors
        Every ``(field, reason)`` found, first one first; defaults to ``[(field, reason)]``.
    too_large
        Whether the first problem is a hard limit exceeded (too many dimensions, elements,
        bytes or characters; see :mod:`schemas._limits`) rather than a malformed field.

    Examples
    --------
    >>> error = InvalidEventError("event_id", "field required")
    >>> str(error)
    "invalid event: field 'event_id': field required"
    >>> error.errors
    [('event_id', 'field required')]
    """

    field: str
    reason: str
    errors: list[tuple[str, str]]
    too_large: bool

    def __init__(
        self,
        field: str,
        reason: str,
        errors: Iterable[tuple[str, str]] | None = None,
        too_large: bool = False,
    ) -> None:
        self.field = field
        self.reason = reason
        self.errors = list(errors) if errors is not None else [(field, reason)]
        self.too_large = too_large
        super().__init__(f"invalid event: field {field!r}: {reason}")

    def __reduce__(
        self,
    ) -> tuple[type[InvalidEventError], tuple[str, str, list[tuple[str, str]], bool]]:
        # Exceptions pickle through ``args``, which here holds only the message; pickle the
        # constructor arguments instead so the error survives a process boundary.
        return (type(self), (self.field, self.reason, self.errors, self.too_large))
