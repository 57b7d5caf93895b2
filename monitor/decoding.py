"""Decode and validate records: the one path every command takes.

The worker's scoring stage and OIP v2 join, ``advmon inspect``, ``advmon score`` and
``advmon calibrate`` all read records through these functions, so a record is refused
for the same reason, in the same words, wherever it is met::

    record value (+ headers) ──► record_events ──► InferenceEvent(s)
                                 (native, sagemaker, mapped; OIP v2 halves through
                                  oip_half and joined_events)
    InferenceEvent ──► monitored ──► the detector of its model (unknown_model)
                   ├─► check_topic: its model reads the topic it came from (unknown_model)
                   └─► event_input ──► float32 array of the detector's input shape
                       (input_array, then checked_input)

Every refusal is an :class:`~monitor.errors.InvalidRecordError` whose ``reason`` is the
dead-letter reason and metric label. A message over a hard limit of the wire contract
(``schemas.MAX_*``) is refused as ``too_large`` before anything its declared sizes ask
for is allocated.

These functions raise nothing else for any record, however it is made: as a last line of
defence, an unexpected exception while decoding or checking one record (a bug, or a case
the decoders did not foresee) is logged with its traceback and becomes a refusal with
reason ``decode_error`` (:func:`unexpected_refusal`), so one record can never stop a
command or the worker. ``MemoryError`` is the exception: it says the process is short of
memory, not that the record is bad (the limits keep any one record small), so dead-lettering
the record would lose a good event; it propagates.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np

from detectors import InvalidInputError, input_from_bytes, input_from_nested_list, validate_input
from monitor.config import EventFormat, ModelConfig
from monitor.errors import InvalidRecordError
from monitor.formats import (
    FieldMapping,
    OipMessage,
    decode_oip_v2,
    mapped_event,
    oip_v2_events,
    sagemaker_events,
)
from schemas import (
    TOO_LARGE,
    InferenceEvent,
    InvalidEventError,
    TensorPayload,
    decode_event,
    fast_event,
)

__all__ = [
    "DECODE_ERROR",
    "RecordFormat",
    "as_refusal",
    "check_topic",
    "checked_input",
    "event_input",
    "input_array",
    "joined_events",
    "monitored",
    "native_fast",
    "oip_half",
    "record_events",
    "unexpected_refusal",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

DECODE_ERROR = "decode_error"
"""The reason of a record whose decoding failed in a way no decoder foresaw."""

_MAX_DETAIL = 200


def unexpected_refusal(
    error: Exception, *, event: InferenceEvent | None = None
) -> InvalidRecordError:
    """The refusal (reason ``decode_error``) of a record whose decoding raised ``error``,
    an exception that is no refusal; logs ``error`` with its traceback.

    >>> unexpected_refusal(ValueError("too many dimensions")).message
    'decoding failed unexpectedly (ValueError: too many dimensions)'
    """
    logger.error(
        "decoding a record failed unexpectedly; it is refused as %s", DECODE_ERROR, exc_info=error
    )
    detail = str(error)
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "…"
    return InvalidRecordError(
        DECODE_ERROR,
        f"decoding failed unexpectedly ({type(error).__name__}: {detail})",
        event_id=event.event_id if event is not None else None,
        model_id=event.model_id if event is not None else None,
    )


def as_refusal(error: Exception, *, event: InferenceEvent | None = None) -> InvalidRecordError:
    """``error``, raised while decoding or checking one record, as that record's refusal:
    a refusal as it is, any other exception as :func:`unexpected_refusal`; a
    ``MemoryError`` is raised again.

    >>> as_refusal(KeyError("x")).reason
    'decode_error'
    """
    if isinstance(error, InvalidRecordError):
        return error
    if isinstance(error, MemoryError):
        raise error
    return unexpected_refusal(error, event=event)


def _refusing_unexpected(function: Callable[P, T]) -> Callable[P, T]:
    """``function``, raising :class:`InvalidRecordError` (or ``MemoryError``) only."""

    @functools.wraps(function)
    def refusing(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except InvalidRecordError:
            raise
        except Exception as exc:
            event = next((a for a in args if isinstance(a, InferenceEvent)), None)
            raise as_refusal(exc, event=event) from exc

    return refusing


@dataclass(frozen=True)
class RecordFormat:
    """How a topic's records read: the format and the options of its model.

    Parameters
    ----------
    format
        ``native``, ``oip-v2``, ``sagemaker`` or ``mapped``.
    model_id
        Given to the events of formats other than native (native events name their model).
    mapping
        The field mapping of format ``mapped``.
    input_name, output_name
        Which OIP v2 tensors to use when a request (a response) has several.
    source_attribute, source_parameters
        Where an OIP v2 event's source comes from (see :class:`monitor.config.OipV2Config`);
        by default it has none.
    """

    format: EventFormat = "native"
    model_id: str = ""
    mapping: FieldMapping | None = None
    input_name: str | None = None
    output_name: str | None = None
    source_attribute: str | None = None
    source_parameters: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: ModelConfig | None) -> RecordFormat:
        """How the topics of ``model`` read (native events when there is no model)."""
        if model is None:
            return cls()
        return cls(
            model.format,
            model.id,
            model.mapping,
            model.oip_v2.input_name,
            model.oip_v2.output_name,
            model.oip_v2.source_attribute,
            tuple(model.oip_v2.source_parameters),
        )


@_refusing_unexpected
def record_events(value: bytes, record_format: RecordFormat) -> list[InferenceEvent]:
    """The events one record holds (formats native, sagemaker and mapped).

    Raises :class:`InvalidRecordError` with the reason the worker dead-letters it for.

    Examples
    --------
    >>> [e.event_id for e in record_events(b'{"event_id": "e1", "model_id": "m", '
    ...     b'"input": [1, 2]}', RecordFormat())]
    ['e1']
    >>> try:
    ...     record_events(b'{"event_id": "e1"}', RecordFormat())
    ... except InvalidRecordError as error:
    ...     print(error.reason)
    invalid_event
    """
    try:
        if record_format.format == "sagemaker":
            return sagemaker_events(value, model_id=record_format.model_id)
        if record_format.format == "mapped":
            if record_format.mapping is None:
                raise InvalidRecordError(
                    "invalid_config", f"model {record_format.model_id!r} has no mapping"
                )
            return [mapped_event(value, record_format.mapping, model_id=record_format.model_id)]
        if record_format.format == "oip-v2":
            raise InvalidRecordError(
                "invalid_config", "OIP v2 records hold halves of events: use joined_events"
            )
        return [decode_event(value)]
    except InvalidEventError as exc:
        raise InvalidRecordError(
            TOO_LARGE if exc.too_large else "invalid_event", str(exc)
        ) from None


def native_fast(value: bytes) -> tuple[InferenceEvent, np.ndarray] | None:
    """A native record's event and its :func:`input_array`, on the fast path; ``None``
    when the fast path does not take it (see :func:`schemas.fast_event`).

    The worker's scoring stage tries this first and takes :func:`record_events` and
    :func:`event_input` for a record it returns ``None`` for, which accept or refuse the
    record, and word the refusal, as for any other record: the fast path only decides
    sooner, never differently (``tests/fuzz`` holds it to that).

    >>> event, array = native_fast(b'{"event_id": "e1", "model_id": "m", "input": [[1, 2]]}')
    >>> event.event_id, array.shape, array.dtype
    ('e1', (1, 2), dtype('float32'))
    >>> native_fast(b'{"event_id": "e1", "model_id": "m", "input": [[1], [2, 3]]}') is None
    True
    """
    fast = fast_event(value)
    if fast is None:
        return None
    event, data = fast
    try:
        model_input = event.input
        if isinstance(model_input, TensorPayload):
            assert data is not None
            return event, input_from_bytes(data, model_input.dtype.value, model_input.shape)
        return event, input_from_nested_list(model_input)
    except MemoryError:
        raise
    except Exception:
        return None


@_refusing_unexpected
def oip_half(value: bytes, headers: Sequence[tuple[str, bytes]]) -> OipMessage:
    """One OIP v2 record: a request or a response, to be joined by its CloudEvent id
    (:func:`monitor.formats.decode_oip_v2`)."""
    return decode_oip_v2(value, headers)


@_refusing_unexpected
def joined_events(
    request: OipMessage, response: OipMessage | None, record_format: RecordFormat
) -> list[InferenceEvent]:
    """The events of an OIP v2 request, joined with its response when there is one."""
    return oip_v2_events(
        request,
        response,
        model_id=record_format.model_id,
        input_name=record_format.input_name,
        output_name=record_format.output_name,
        source_attribute=record_format.source_attribute,
        source_parameters=record_format.source_parameters,
    )


def monitored(event: InferenceEvent, models: Mapping[str, T]) -> T:
    """What ``models`` holds for the event's model; ``unknown_model`` when it is not
    among them.

    >>> monitored(decode_event(b'{"event_id": "e", "model_id": "x", "input": [1]}'), {"m": 1})
    Traceback (most recent call last):
    ...
    monitor.errors.InvalidRecordError: model_id 'x' is not monitored (configured: m)
    """
    try:
        return models[event.model_id]
    except KeyError:
        known = ", ".join(sorted(models)) or "none"
        raise InvalidRecordError(
            "unknown_model",
            f"model_id {event.model_id!r} is not monitored (configured: {known})",
            event_id=event.event_id,
            model_id=event.model_id,
        ) from None


def check_topic(event: InferenceEvent, topic: str, topics: Collection[str]) -> None:
    """Refuse (``unknown_model``) an event read from ``topic`` when its model reads only
    ``topics``.

    >>> check_topic(decode_event(b'{"event_id": "e", "model_id": "m", "input": [1]}'),
    ...     "staging", ["events"])
    Traceback (most recent call last):
    ...
    monitor.errors.InvalidRecordError: model 'm' is not configured for topic 'staging'
    """
    if topic not in topics:
        raise InvalidRecordError(
            "unknown_model",
            f"model {event.model_id!r} is not configured for topic {topic!r}",
            event_id=event.event_id,
            model_id=event.model_id,
        )


@_refusing_unexpected
def input_array(event: InferenceEvent) -> np.ndarray:
    """The event's input as a float32 array, not yet checked against any model."""
    value = event.input
    try:
        if isinstance(value, TensorPayload):
            return input_from_bytes(value.to_bytes(), value.dtype.value, value.shape)
        return input_from_nested_list(value)
    except InvalidInputError as exc:
        raise _refused(exc, event) from None


def event_input(
    event: InferenceEvent,
    shape: Sequence[int | None],
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """The event's input as a float32 array checked against a model's input shape and,
    for images, its calibrated value range."""
    return checked_input(event, input_array(event), shape, value_range)


@_refusing_unexpected
def checked_input(
    event: InferenceEvent,
    array: np.ndarray,
    shape: Sequence[int | None],
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """``array``, the event's :func:`input_array`, checked as :func:`event_input` checks it.

    For callers that look at the decoded input before it is checked (``advmon inspect``
    shows the shape of an input it refuses).

    >>> event = decode_event(b'{"event_id": "e", "model_id": "m", "input": [1, 2, 3]}')
    >>> checked_input(event, input_array(event), [2])
    Traceback (most recent call last):
    ...
    monitor.errors.InvalidRecordError: input shape [3] does not match the model's [2]
    """
    try:
        return validate_input(array, shape, value_range)
    except InvalidInputError as exc:
        raise _refused(exc, event) from None


def _refused(error: InvalidInputError, event: InferenceEvent) -> InvalidRecordError:
    return InvalidRecordError(
        error.reason, str(error), event_id=event.event_id, model_id=event.model_id
    )
