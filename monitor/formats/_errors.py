"""The one exception every decoder of :mod:`monitor.formats` raises, and its reason codes."""

from __future__ import annotations

from enum import StrEnum

from monitor.errors import InvalidRecordError

__all__ = ["FormatError", "FormatErrorReason"]


class FormatErrorReason(StrEnum):
    """Why a message could not be decoded: a short code for metrics and dead letters.

    The codes are plain strings (``FormatErrorReason.INVALID_JSON == "invalid_json"``), so
    they can be used as metric labels and written to dead-letter records as they are.
    """

    INVALID_JSON = "invalid_json"
    """The message value (or an embedded payload) is not JSON, or not UTF-8."""
    INVALID_CLOUDEVENT = "invalid_cloudevent"
    """A required CloudEvent attribute is missing or malformed (id, source, type, time…)."""
    INVALID_OIP_V2 = "invalid_oip_v2"
    """The body is not an Open Inference Protocol v2 request or response."""
    UNSUPPORTED_DATATYPE = "unsupported_datatype"
    """A tensor's element type cannot be scored (BYTES, BF16, or unknown)."""
    SHAPE_MISMATCH = "shape_mismatch"
    """Data disagrees with its declared shape, or outputs with the inputs' batch size."""
    AMBIGUOUS_TENSOR = "ambiguous_tensor"
    """Several input (or output) tensors and no name saying which one to use."""
    UNKNOWN_TENSOR = "unknown_tensor"
    """The configured input (or output) name is not among the message's tensors."""
    JOIN_MISMATCH = "join_mismatch"
    """A request and a response that do not belong together (ids or kinds differ)."""
    INVALID_SAGEMAKER = "invalid_sagemaker"
    """Not a SageMaker Data Capture record, or its captured payload does not parse."""
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    """A captured input whose content type advmon cannot read as numbers."""
    MAPPING_NO_MATCH = "mapping_no_match"
    """A field path of the model's mapping matched nothing where a value is required."""
    MAPPING_MANY_MATCHES = "mapping_many_matches"
    """A field path of the model's mapping matched several values where one is expected."""
    INVALID_EVENT = "invalid_event"
    """The decoded values do not make a valid native inference event."""
    TOO_LARGE = "too_large"
    """The message exceeds a hard limit (``schemas.MAX_*``: dimensions, elements, bytes,
    rows, characters); checked before anything it declares is allocated."""


class FormatError(InvalidRecordError):
    """A message that cannot be decoded into advmon's inference events.

    Parameters
    ----------
    reason
        A short snake_case code (a :class:`FormatErrorReason`) for metrics and dead letters.
    message
        What was wrong, naming the header or field, in words; also ``str(error)``.

    Examples
    --------
    >>> error = FormatError(FormatErrorReason.INVALID_JSON, "message value is not valid JSON")
    >>> error.reason == "invalid_json", str(error)
    (True, 'message value is not valid JSON')
    """

    reason: FormatErrorReason
    message: str

    def __init__(self, reason: FormatErrorReason, message: str) -> None:
        super().__init__(FormatErrorReason(reason), message)

    def __reduce__(self) -> tuple[type[FormatError], tuple[FormatErrorReason, str]]:
        # Exceptions pickle through ``args`` (the message only); keep the reason across a
        # process boundary too.
        return (type(self), (self.reason, self.message))
