"""What each record read decodes to, as the worker would decode and check it."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any, Literal

import numpy as np

from monitor.decoding import (
    check_topic,
    checked_input,
    input_array,
    joined_events,
    monitored,
    oip_half,
    record_events,
)
from monitor.errors import InvalidRecordError
from monitor.formats import OipMessage
from monitor.inspect._options import Decoding, ExpectedInput
from schemas import InferenceEvent, TensorPayload

__all__ = [
    "EventSummary",
    "InputSummary",
    "KafkaRecord",
    "MessageReport",
    "OipHalfSummary",
    "Problem",
    "TensorSummary",
    "coordinates_json",
    "inspect_record",
    "inspect_records",
    "key_text",
]


@dataclass(frozen=True)
class KafkaRecord:
    """One record read from a topic: where it is, and what it holds."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: datetime | None = None
    """The Kafka timestamp, timezone-aware."""


@dataclass(frozen=True)
class Problem:
    """Why a record or an input would be refused: the reason code and the message, as the
    worker would write them to the dead-letter topic."""

    reason: str
    message: str

    @classmethod
    def of(cls, error: InvalidRecordError) -> Problem:
        """The problem a refusal of :mod:`monitor.decoding` describes."""
        return cls(str(error.reason), error.message)

    def to_json(self) -> dict[str, str]:
        """``{"reason", "message"}``."""
        return {"reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class InputSummary:
    """An event's input: a tensor payload (with its dtype) or a nested list, and its shape
    (``None`` when a nested list is ragged or not numbers)."""

    kind: Literal["tensor", "nested_list"]
    dtype: str | None
    shape: list[int] | None

    def __str__(self) -> str:
        shape = "?" if self.shape is None else str(self.shape)
        return f"{self.dtype} {shape}" if self.kind == "tensor" else f"list {shape}"


@dataclass(frozen=True)
class EventSummary:
    """One decoded event, and whether its input would be accepted."""

    event_id: str
    model_id: str
    model_version: str | None
    request_id: str | None
    source: str | None
    ts: datetime | None
    input: InputSummary
    output_length: int | None
    input_problem: Problem | None
    """Why the worker would refuse the input (shape, dtype, range, …); ``None``: accepted."""
    checked: bool
    """Whether the input was checked against its model's detector (not only decoded)."""
    event: InferenceEvent | None = field(default=None, repr=False, compare=False)
    """The decoded event itself, for ``--export``."""

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "event_id": self.event_id,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "request_id": self.request_id,
            "source": self.source,
            "ts": self.ts.isoformat() if self.ts else None,
            "input": {
                "kind": self.input.kind,
                "dtype": self.input.dtype,
                "shape": self.input.shape,
            },
            "output_length": self.output_length,
            "checked_against_detector": self.checked,
            "input_problem": self.input_problem.to_json() if self.input_problem else None,
        }


@dataclass(frozen=True)
class TensorSummary:
    """One tensor of an OIP v2 request or response: name, numpy dtype, shape (batch first)."""

    name: str
    dtype: str
    shape: list[int]

    def __str__(self) -> str:
        return f"{self.name} {self.dtype} {self.shape}"


@dataclass(frozen=True)
class OipHalfSummary:
    """One OIP v2 request or response, and where its other half is among the records read."""

    kind: Literal["request", "response"]
    id: str
    """The CloudEvent id: the same on a request and its response."""
    tensors: list[TensorSummary]
    partner: tuple[int, int] | None = None
    """``(partition, offset)`` of the other half, when it was read."""
    duplicate_of: tuple[int, int] | None = None
    """``(partition, offset)`` of an earlier half of the same kind and id (the worker joins
    the first and ignores this one)."""

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "kind": self.kind,
            "id": self.id,
            "tensors": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in self.tensors],
            "partner": coordinates_json(self.partner),
            "duplicate_of": coordinates_json(self.duplicate_of),
        }


@dataclass(frozen=True)
class MessageReport:
    """What one record decodes to: its events, or why it cannot be decoded.

    For OIP v2, ``oip`` describes the half; a request's events are those of the request
    joined with its response when the response was read, else of the request alone (as
    the worker scores it after the join timeout). A response has no events of its own.
    """

    partition: int
    offset: int
    key: bytes | None
    timestamp: datetime | None
    events: list[EventSummary] = field(default_factory=list)
    error: Problem | None = None
    """Why the record (or, for an OIP v2 request, its join) makes no events."""
    oip: OipHalfSummary | None = None

    @property
    def coordinates(self) -> tuple[int, int]:
        """``(partition, offset)``."""
        return self.partition, self.offset

    def to_json(self, topic: str) -> dict[str, Any]:
        """The report as one JSON object (``--json`` prints one per line)."""
        data: dict[str, Any] = {
            "topic": topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": key_text(self.key),
            "key_b64": base64.b64encode(self.key).decode() if self.key is not None else None,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "decoded": self.error is None,
            "error": self.error.to_json() if self.error else None,
            "events": [event.to_json() for event in self.events],
        }
        if self.oip is not None:
            data["oip_v2"] = self.oip.to_json()
        return data


def inspect_record(record: KafkaRecord, decoding: Decoding) -> MessageReport:
    """Decode one record as the worker would, and check each event's input.

    Never raises for a record that does not decode: the report says why.

    Examples
    --------
    >>> record = KafkaRecord(0, 7, b"k", b'{"event_id": "e1", "model_id": "m", "input": [[1, 2]]}')
    >>> report = inspect_record(record, Decoding("native"))
    >>> report.error, report.events[0].event_id, str(report.events[0].input)
    (None, 'e1', 'list [1, 2]')
    >>> inspect_record(KafkaRecord(0, 8, None, b"{"), Decoding("sagemaker")).error.reason
    'invalid_json'
    """
    report, _half = _decode(record, decoding)
    return report


def inspect_records(records: Sequence[KafkaRecord], decoding: Decoding) -> list[MessageReport]:
    """Reports of ``records``, in order; OIP v2 halves with the same id are joined.

    A request and a response read with the same CloudEvent id are joined (the first of
    each kind; a later one is a duplicate the worker ignores): the request's events are
    then those of the pair, and each half's ``partner`` names the other.
    """
    decoded = [_decode(record, decoding) for record in records]
    reports = [report for report, _half in decoded]
    if decoding.format != "oip-v2":
        return reports
    first: dict[tuple[str, str], int] = {}
    for index, (report, half) in enumerate(decoded):
        if half is None or report.oip is None:
            continue
        seen = first.setdefault((half.id, half.kind), index)
        if seen != index:
            reports[index] = replace(
                report, oip=replace(report.oip, duplicate_of=reports[seen].coordinates)
            )
    for (ce_id, kind), index in first.items():
        other = first.get((ce_id, "response"))
        if kind != "request" or other is None:
            continue
        request, response = decoded[index][1], decoded[other][1]
        request_report, response_report = reports[index], reports[other]
        assert request is not None
        assert request_report.oip is not None
        assert response_report.oip is not None
        joined = replace(
            request_report,
            events=[],
            error=None,
            oip=replace(request_report.oip, partner=response_report.coordinates),
        )
        reports[index] = _with_events(
            joined, partial(joined_events, request, response, decoding), decoding
        )
        reports[other] = replace(
            response_report,
            oip=replace(response_report.oip, partner=request_report.coordinates),
        )
    return reports


def key_text(key: bytes | None) -> str | None:
    """A record key as text; ``None`` when there is none or it is not UTF-8."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def coordinates_json(coordinates: tuple[int, int] | None) -> dict[str, int] | None:
    """``(partition, offset)`` as ``{"partition", "offset"}``."""
    if coordinates is None:
        return None
    return {"partition": coordinates[0], "offset": coordinates[1]}


def _decode(record: KafkaRecord, decoding: Decoding) -> tuple[MessageReport, OipMessage | None]:
    report = MessageReport(record.partition, record.offset, record.key, record.timestamp)
    if decoding.format != "oip-v2":
        events_of = partial(record_events, record.value, decoding)
        return _with_events(report, events_of, decoding), None
    try:
        half = oip_half(record.value, record.headers)
    except InvalidRecordError as error:
        return replace(report, error=Problem.of(error)), None
    tensors = [
        TensorSummary(name, array.dtype.name, list(array.shape))
        for name, array in half.tensors.items()
    ]
    report = replace(report, oip=OipHalfSummary(half.kind, half.id, tensors))
    if half.kind == "request":
        report = _with_events(report, partial(joined_events, half, None, decoding), decoding)
    return report, half


def _with_events(
    report: MessageReport, events_of: Callable[[], list[InferenceEvent]], decoding: Decoding
) -> MessageReport:
    try:
        events = events_of()
    except InvalidRecordError as error:
        return replace(report, error=Problem.of(error))
    return replace(report, events=[_summarize(event, decoding) for event in events])


def _summarize(event: InferenceEvent, decoding: Decoding) -> EventSummary:
    value = event.input
    try:
        decoded: np.ndarray | InvalidRecordError = input_array(event)
    except InvalidRecordError as error:
        decoded = error
    # The shape of a refused input is shown too: it is often why it was refused.
    summary = (
        InputSummary("tensor", value.dtype.value, list(value.shape))
        if isinstance(value, TensorPayload)
        else InputSummary(
            "nested_list", None, list(decoded.shape) if isinstance(decoded, np.ndarray) else None
        )
    )
    problem, checked = _verdict(event, decoded, decoding)
    return EventSummary(
        event_id=event.event_id,
        model_id=event.model_id,
        model_version=event.model_version,
        request_id=event.request_id,
        source=event.source,
        ts=event.ts,
        input=summary,
        output_length=len(event.output) if event.output is not None else None,
        input_problem=problem,
        checked=checked,
        event=event,
    )


def _verdict(
    event: InferenceEvent, decoded: np.ndarray | InvalidRecordError, decoding: Decoding
) -> tuple[Problem | None, bool]:
    """Why the worker would refuse the event, checking in its order (the model, then the
    input), and whether the input was checked against a detector.

    ``decoded`` is the event's input array, or why it has none. Without a detector the
    input must only be finite numbers.
    """
    try:
        wanted = _detector_input(event, decoding)
    except InvalidRecordError as error:
        return Problem.of(error), False
    if isinstance(decoded, InvalidRecordError):
        return Problem.of(decoded), False
    try:
        if wanted is None:
            checked_input(event, decoded, (None,) * decoded.ndim)
        else:
            checked_input(event, decoded, wanted.shape, wanted.value_range)
    except InvalidRecordError as error:
        return Problem.of(error), wanted is not None
    return None, wanted is not None


def _detector_input(event: InferenceEvent, decoding: Decoding) -> ExpectedInput | None:
    """The input the event's detector accepts (``None``: none known); refuses the event as
    the worker would when its model is not monitored or does not read the topic."""
    if decoding.expected is None:
        return None
    if (
        decoding.model_topics is not None
        and decoding.topic is not None
        and event.model_id not in decoding.expected
    ):
        check_topic(event, decoding.topic, monitored(event, decoding.model_topics))
    return monitored(event, decoding.expected)
