"""``advmon inspect``: how the messages on a topic decode, before the worker reads them.

A user points advmon at a topic serving already writes and asks: in this format, with
this mapping, do the messages make events, and do their inputs fit the detector? This
module answers with a report per Kafka record, built by pure functions over the record's
value, headers, key and coordinates (:func:`inspect_record`, :func:`inspect_records`),
so everything but :func:`read_records` is testable without a broker.

Each record is decoded exactly as the worker decodes it (:mod:`monitor.formats`,
:func:`schemas.decode_event`), and each event's input is checked as the worker checks it
(``monitor.worker.stages.scoring_pipeline``): against the detector of its model when a
worker config is given, else only that it decodes to finite numbers. OIP v2 requests and responses
found among the records read are joined by CloudEvent id, as the worker's join stage would.

Exceptions::

    InspectError          a problem the user must fix (config, mapping, topic, broker)
     └── InspectUsageError   options that contradict each other or are missing
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from detectors import (
    DetectorConfig,
    DetectorError,
    InvalidInputError,
    input_from_bytes,
    input_from_nested_list,
    validate_input,
)
from monitor.config import ConfigError, EventFormat, ModelConfig, MonitorConfig, load_config
from monitor.formats import (
    FieldMapping,
    FormatError,
    OipMessage,
    decode_oip_v2,
    mapped_event,
    oip_v2_events,
    sagemaker_events,
)
from monitor.kafka.metadata import topic_partitions
from monitor.settings import KafkaSettings
from schemas import InferenceEvent, InvalidEventError, TensorPayload, decode_event

__all__ = [
    "DEFAULT_MODEL_ID",
    "Decoding",
    "EventSummary",
    "ExpectedInput",
    "InputSummary",
    "InspectError",
    "InspectUsageError",
    "KafkaRecord",
    "MessageReport",
    "OipHalfSummary",
    "Problem",
    "TensorSummary",
    "TopicRead",
    "export_events",
    "inspect_record",
    "inspect_records",
    "parse_mapping",
    "read_records",
    "report_tables",
    "resolve_decoding",
    "summary_line",
]

DEFAULT_MODEL_ID = "inspected"
"""The model id given to decoded events when no model is named."""

_POLL_MS = 200
_EPOCH = datetime.fromtimestamp(0, UTC)


class InspectError(Exception):
    """Something the user must fix before a topic can be inspected; the message says what."""


class InspectUsageError(InspectError):
    """Command-line options that are missing or contradict each other."""


# --- what to decode with ----------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedInput:
    """What a model's detector accepts: the input shape (``None``: any size on that axis)
    and, for images, the calibrated value range."""

    shape: tuple[int | None, ...]
    value_range: tuple[float, float] | None

    @classmethod
    def of(cls, detector: DetectorConfig) -> ExpectedInput:
        """The input a detector accepts; tabular inputs have no range (as in the worker)."""
        return cls(tuple(detector.input_shape), detector.accepted_range)


@dataclass(frozen=True)
class Decoding:
    """How to read a topic's records: the format and the options the worker would use.

    Parameters
    ----------
    format
        ``native``, ``oip-v2``, ``sagemaker`` or ``mapped``.
    model_id
        Given to the events of formats other than native (native events name their model).
    mapping
        The field mapping of format ``mapped`` (required there, refused elsewhere).
    input_name, output_name
        Which OIP v2 tensors to use when a request (a response) has several.
    expected
        The models events may belong to, by id, each with the input its detector accepts
        (``None`` when its detector file could not be read). ``None``: any model, and
        inputs are only checked to be finite numbers.

    Examples
    --------
    >>> Decoding("mapped")
    Traceback (most recent call last):
    ...
    ValueError: format mapped needs a field mapping
    """

    format: EventFormat
    model_id: str = DEFAULT_MODEL_ID
    mapping: FieldMapping | None = None
    input_name: str | None = None
    output_name: str | None = None
    expected: Mapping[str, ExpectedInput | None] | None = None

    def __post_init__(self) -> None:
        if self.format == "mapped" and self.mapping is None:
            raise ValueError("format mapped needs a field mapping")
        if self.format != "mapped" and self.mapping is not None:
            raise ValueError(f"a field mapping is only read with format mapped, not {self.format}")


def parse_mapping(text: str) -> FieldMapping:
    """A field mapping from a JSON object, or from a YAML or JSON file at that path.

    Raises :class:`InspectError` naming the file or the field that is wrong.

    Examples
    --------
    >>> parse_mapping('{"event_id": "$.id", "input": "$.x"}').input
    '$.x'
    >>> parse_mapping('{"event_id": "$.id", "input": "$.x["}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    monitor.inspect.InspectError: --mapping: field 'input': malformed JSONPath '$.x[': ...
    """
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InspectError(f"--mapping is not a valid JSON object: {exc}") from None
        where = "--mapping"
    else:
        path = Path(text)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InspectError(
                f"--mapping: no file {text!r} (give a JSON object or a YAML/JSON file)"
            ) from None
        except (OSError, yaml.YAMLError) as exc:
            raise InspectError(f"--mapping: cannot read {path}: {exc}") from None
        where = f"--mapping {path}"
    if not isinstance(data, dict):
        raise InspectError(
            f"{where} must be an object of field paths, e.g. "
            '{"event_id": "$.meta.id", "input": "$.payload.features"}'
        )
    try:
        return FieldMapping.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "<root>"
        raise InspectError(f"{where}: field {name!r}: {_lower(error['msg'])}") from None


def resolve_decoding(
    topic: str,
    event_format: EventFormat | None,
    *,
    config_path: Path | None = None,
    model_id: str | None = None,
    mapping: str | None = None,
) -> tuple[Decoding, list[str]]:
    """The decoding the command line asks for, and notes for the user.

    With a worker config the model (``model_id``, else the model(s) listing ``topic``)
    gives the format, mapping and OIP v2 options, and its detector the expected input;
    ``event_format``, if given, must agree. ``mapping`` (a JSON object or a file path)
    replaces the model's mapping. Without a config ``event_format`` is required.

    Raises
    ------
    InspectUsageError
        Missing or contradicting options.
    InspectError
        An unreadable config or mapping, or an unknown model.
    """
    field_mapping = parse_mapping(mapping) if mapping is not None else None
    if config_path is None:
        if event_format is None:
            raise InspectUsageError("give the topic's --format, or a worker --config")
        _check_mapping(event_format, field_mapping)
        named: dict[str, ExpectedInput | None] | None = (
            {model_id: None} if event_format == "native" and model_id else None
        )
        decoding = Decoding(
            event_format,
            model_id=model_id or DEFAULT_MODEL_ID,
            mapping=field_mapping,
            expected=named,
        )
        return decoding, []
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise InspectError(str(exc)) from None
    notes: list[str] = []
    models = _models_for(config, topic, model_id, config_path, notes)
    chosen = models[0]
    if event_format is not None and event_format != chosen.format:
        raise InspectUsageError(
            f"--format {event_format} disagrees with {config_path}: model {chosen.id!r} "
            f"has format {chosen.format}"
        )
    _check_mapping(chosen.format, field_mapping or chosen.mapping)
    expected = {model.id: _expected_input(model, notes) for model in models}
    decoding = Decoding(
        chosen.format,
        model_id=chosen.id,
        mapping=field_mapping or chosen.mapping,
        input_name=chosen.oip_v2.input_name,
        output_name=chosen.oip_v2.output_name,
        expected=expected,
    )
    return decoding, notes


def _check_mapping(event_format: EventFormat, mapping: FieldMapping | None) -> None:
    if event_format == "mapped" and mapping is None:
        raise InspectUsageError(
            "format mapped needs --mapping: a JSON object of field paths or a YAML/JSON "
            "file holding one (event_id and input at least)"
        )
    if event_format != "mapped" and mapping is not None:
        raise InspectUsageError(f"--mapping is only read with format mapped, not {event_format}")


def _models_for(
    config: MonitorConfig, topic: str, model_id: str | None, path: Path, notes: list[str]
) -> list[ModelConfig]:
    """The config's models whose events the topic holds: the named one, else the listing."""
    known = ", ".join(m.id for m in config.models)
    if model_id is not None:
        model = next((m for m in config.models if m.id == model_id), None)
        if model is None:
            raise InspectError(f"{path} has no model {model_id!r} (its models: {known})")
        if topic not in model.topics:
            notes.append(f"model {model.id!r} does not list topic {topic!r} in {path}")
        return [model]
    listing = [m for m in config.models if topic in m.topics]
    if not listing:
        raise InspectUsageError(
            f"{path} lists no model for topic {topic!r}; name one with --model (its models: "
            f"{known})"
        )
    return listing


def _expected_input(model: ModelConfig, notes: list[str]) -> ExpectedInput | None:
    try:
        return ExpectedInput.of(DetectorConfig.load(model.detector))
    except DetectorError as exc:
        notes.append(f"model {model.id!r}: inputs are not checked against its detector: {exc}")
        return None


# --- reports ------------------------------------------------------------------------------


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
    def of(cls, error: FormatError | InvalidEventError | InvalidInputError) -> Problem:
        """The problem an exception of the decoders or the input checks describes."""
        if isinstance(error, FormatError):
            return cls(error.reason.value, error.message)
        if isinstance(error, InvalidEventError):
            return cls("invalid_event", str(error))
        return cls(error.reason, str(error))

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
            "partner": _coordinates(self.partner),
            "duplicate_of": _coordinates(self.duplicate_of),
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
            "key": _key_text(self.key),
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
            joined,
            partial(
                oip_v2_events,
                request,
                response,
                model_id=decoding.model_id,
                input_name=decoding.input_name,
                output_name=decoding.output_name,
            ),
            decoding,
        )
        reports[other] = replace(
            response_report,
            oip=replace(response_report.oip, partner=request_report.coordinates),
        )
    return reports


def _decode(record: KafkaRecord, decoding: Decoding) -> tuple[MessageReport, OipMessage | None]:
    report = MessageReport(record.partition, record.offset, record.key, record.timestamp)
    if decoding.format != "oip-v2":
        return _with_events(report, lambda: _events(record.value, decoding), decoding), None
    try:
        half = decode_oip_v2(record.value, record.headers)
    except FormatError as exc:
        return replace(report, error=Problem.of(exc)), None
    tensors = [
        TensorSummary(name, array.dtype.name, list(array.shape))
        for name, array in half.tensors.items()
    ]
    report = replace(report, oip=OipHalfSummary(half.kind, half.id, tensors))
    if half.kind == "request":
        report = _with_events(
            report,
            partial(
                oip_v2_events,
                half,
                None,
                model_id=decoding.model_id,
                input_name=decoding.input_name,
                output_name=decoding.output_name,
            ),
            decoding,
        )
    return report, half


def _events(value: bytes, decoding: Decoding) -> list[InferenceEvent]:
    if decoding.format == "native":
        return [decode_event(value)]
    if decoding.format == "sagemaker":
        return sagemaker_events(value, model_id=decoding.model_id)
    assert decoding.mapping is not None  # Decoding guarantees one for format mapped
    return [mapped_event(value, decoding.mapping, model_id=decoding.model_id)]


def _with_events(
    report: MessageReport, events_of: Callable[[], list[InferenceEvent]], decoding: Decoding
) -> MessageReport:
    try:
        events = events_of()
    except (FormatError, InvalidEventError) as exc:
        return replace(report, error=Problem.of(exc))
    return replace(report, events=[_summarize(event, decoding) for event in events])


def _summarize(event: InferenceEvent, decoding: Decoding) -> EventSummary:
    value = event.input
    summary: InputSummary
    problem: Problem | None = None
    checked = False
    try:
        if isinstance(value, TensorPayload):
            summary = InputSummary("tensor", value.dtype.value, list(value.shape))
            array = input_from_bytes(value.to_bytes(), value.dtype.value, value.shape)
        else:
            summary = InputSummary("nested_list", None, None)
            array = input_from_nested_list(value)
            summary = InputSummary("nested_list", None, list(array.shape))
        problem, checked = _check_input(array, event.model_id, decoding.expected)
    except InvalidInputError as exc:
        problem = Problem.of(exc)
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


def _check_input(
    array: np.ndarray, model_id: str, expected: Mapping[str, ExpectedInput | None] | None
) -> tuple[Problem | None, bool]:
    """The pipeline's input check: the model must be known, the input fit its detector."""
    if expected is not None and model_id not in expected:
        known = ", ".join(repr(m) for m in expected)
        return Problem("unknown_model", f"model_id {model_id!r} is not {known}"), False
    wanted = expected.get(model_id) if expected is not None else None
    try:
        if wanted is None:
            validate_input(array, [None] * array.ndim)
        else:
            validate_input(array, wanted.shape, wanted.value_range)
    except InvalidInputError as exc:
        return Problem.of(exc), wanted is not None
    return None, wanted is not None


# --- reading a topic ------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicRead:
    """The records read from a topic, in (partition, offset) order."""

    records: list[KafkaRecord]
    partitions: list[int]
    """The partitions read."""
    complete: bool
    """False when the timeout passed before every record asked for arrived."""


def read_records(
    kafka: KafkaSettings,
    topic: str,
    count: int,
    *,
    latest: bool = True,
    partition: int | None = None,
    timeout_s: float = 10.0,
) -> TopicRead:
    """Read up to ``count`` records of ``topic`` with a plain consumer: no group, no commits.

    ``latest``: the last ``count`` records (by Kafka timestamp) among the last ``count``
    of each partition; otherwise the first. Raises :class:`InspectError` when the topic or
    partition does not exist or the broker fails.
    """
    try:
        return asyncio.run(_read(kafka, topic, count, latest, partition, timeout_s))
    except (KafkaError, OSError, TimeoutError) as exc:
        raise InspectError(
            f"reading topic {topic!r} from the Kafka cluster at {kafka.bootstrap} failed: "
            f"{exc!r}; check ADVMON_KAFKA__BOOTSTRAP and the ADVMON_KAFKA__ security settings"
        ) from None


async def _read(
    kafka: KafkaSettings,
    topic: str,
    count: int,
    latest: bool,
    partition: int | None,
    timeout_s: float,
) -> TopicRead:
    consumer = AIOKafkaConsumer(
        **kafka.client_options(),
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000),
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        known = await topic_partitions(
            topic, **kafka.client_options(), request_timeout_ms=int(timeout_s * 1000)
        )
        if known is None:
            raise InspectError(
                f"topic {topic!r} does not exist on the Kafka cluster at {kafka.bootstrap}"
            )
        found = sorted(known)
        if partition is not None:
            if partition not in found:
                raise InspectError(
                    f"topic {topic!r} has no partition {partition} (its partitions: "
                    f"{', '.join(map(str, found))})"
                )
            found = [partition]
        assigned = [TopicPartition(topic, p) for p in found]
        consumer.assign(assigned)
        begins = await consumer.beginning_offsets(assigned)
        ends = await consumer.end_offsets(assigned)
        pending: set[Any] = set()
        stops: dict[Any, int] = {}
        for tp in assigned:
            start = max(begins[tp], ends[tp] - count) if latest else begins[tp]
            stops[tp] = min(ends[tp], start + count)
            consumer.seek(tp, start)
            if stops[tp] > start:
                pending.add(tp)
            else:
                consumer.pause(tp)
        records: list[KafkaRecord] = []
        while pending and loop.time() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=_POLL_MS)
            for tp, messages in batches.items():
                records.extend(
                    _record(message) for message in messages if message.offset < stops[tp]
                )
            for tp in list(pending):
                if await consumer.position(tp) >= stops[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    ordered = sorted(records, key=lambda r: (r.timestamp or _EPOCH, r.partition, r.offset))
    chosen = ordered[-count:] if latest else ordered[:count]
    return TopicRead(
        sorted(chosen, key=lambda r: (r.partition, r.offset)), found, complete=not pending
    )


def _record(message: Any) -> KafkaRecord:
    timestamp = (
        datetime.fromtimestamp(message.timestamp / 1000, UTC)
        if message.timestamp is not None and message.timestamp >= 0
        else None
    )
    return KafkaRecord(
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value or b"",
        headers=tuple((name, bytes(value or b"")) for name, value in message.headers or ()),
        timestamp=timestamp,
    )


# --- showing reports ----------------------------------------------------------------------


def report_tables(reports: Sequence[MessageReport], decoding: Decoding) -> list[Table]:
    """Rich tables of the reports: one row per record, one per event, and for OIP v2 the
    halves without a partner. Text from the records is never read as markup.

    A record is named ``partition/offset`` in the event and halves tables.
    """
    oip = decoding.format == "oip-v2"
    messages = _table("messages")
    messages.add_column("partition", justify="right", no_wrap=True)
    messages.add_column("offset", justify="right", no_wrap=True)
    messages.add_column("key", overflow="fold", max_width=24)
    messages.add_column("decoded", overflow="fold", ratio=1)
    for report in reports:
        messages.add_row(
            str(report.partition), str(report.offset), _key_cell(report.key), _outcome(report)
        )
    tables = [messages]
    events = _table("events of the requests read, joined with their responses" if oip else "events")
    events.add_column("message", no_wrap=True)
    events.add_column("event", overflow="fold")
    events.add_column("data", overflow="fold")
    if oip:
        events.add_column("response", overflow="fold")
    events.add_column("input check", overflow="fold")
    for report in reports:
        for event in report.events:
            cells = [Text(_at(report.coordinates)), _event_cell(event), _data_cell(event)]
            if oip and report.oip is not None:
                cells.append(Text(_at(report.oip.partner) if report.oip.partner else "none read"))
            events.add_row(*cells, _input_check(event))
    if events.row_count:
        tables.append(events)
    alone = [(r, r.oip) for r in reports if r.oip is not None and r.oip.partner is None]
    if alone:
        halves = _table("halves without a partner among the messages read")
        halves.add_column("message", no_wrap=True)
        halves.add_column("kind", no_wrap=True)
        halves.add_column("CloudEvent id", overflow="fold")
        halves.add_column("what the worker does", min_width=24)
        for report, half in alone:
            halves.add_row(_at(report.coordinates), half.kind, Text(half.id), _alone_fate(half))
        tables.append(halves)
    return tables


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left")


def export_events(reports: Sequence[MessageReport], path: Path) -> int:
    """Write the events the worker would accept as native JSON lines; return how many.

    The file is what ``advmon calibrate --events`` reads, so benign traffic logged in any
    format can calibrate a detector.
    """
    written = 0
    with path.open("wb") as out:
        for report in reports:
            for summary in report.events:
                if summary.event is not None and summary.input_problem is None:
                    out.write(summary.event.model_dump_json(exclude_none=True).encode() + b"\n")
                    written += 1
    return written


def summary_line(
    topic: str, read: TopicRead, reports: Sequence[MessageReport], *, latest: bool, count: int
) -> str:
    """One line saying what was read and how much of it decoded."""
    if not read.records:
        return f"topic {topic!r} holds no messages ({_partitions(read.partitions)})"
    which = "last" if latest else "first"
    failed = sum(1 for r in reports if r.error is not None)
    events = sum(len(r.events) for r in reports)
    refused = sum(1 for r in reports for e in r.events if e.input_problem is not None)
    line = (
        f"{len(read.records)} message(s) read from topic {topic!r} (the {which} {count} "
        f"asked for, from {_partitions(read.partitions)}): {len(reports) - failed} decoded, "
        f"{failed} not; "
        f"{events} event(s), {refused} with an input the worker would refuse"
    )
    if any(r.oip is not None for r in reports):
        joined = sum(1 for r in reports if r.oip and r.oip.kind == "request" and r.oip.partner)
        alone = sum(1 for r in reports if r.oip and r.oip.partner is None)
        line += f"; {joined} request(s) joined with their response, {alone} half(s) alone"
        if alone:
            line += " (the other half may be among messages not read: raise --count)"
    if not read.complete:
        line += "; the timeout passed before every message asked for arrived"
    return line


def _outcome(report: MessageReport) -> Text:
    text = Text()
    if report.oip is not None:
        half = report.oip
        text.append(f"{half.kind} ", style="bold")
        text.append(half.id)
        text.append(f" ({'; '.join(map(str, half.tensors))})")
        if half.duplicate_of is not None:
            text.append(f", duplicate of {_at(half.duplicate_of)}", style="yellow")
        elif half.partner is not None:
            text.append(f", joined with {_at(half.partner)}", style="green")
        if report.error is None and half.kind == "request":
            text.append(f": {len(report.events)} event(s)")
    elif report.error is None:
        text.append(f"{len(report.events)} event(s)", style="green")
    if report.error is not None:
        if text:
            text.append(": ")
        text.append(report.error.reason, style="bold red")
        text.append(f": {report.error.message}")
    return text


def _labelled(lines: Sequence[tuple[str, str | None]]) -> Text:
    text = Text()
    for index, (label, value) in enumerate(lines):
        if index:
            text.append("\n")
        if label:
            text.append(f"{label} ", style="dim")
        text.append(value if value is not None else "—")
    return text


def _event_cell(event: EventSummary) -> Text:
    return _labelled(
        [
            ("", event.event_id),
            ("request_id", event.request_id),
            ("source", event.source),
            ("ts", event.ts.isoformat() if event.ts else None),
        ]
    )


def _data_cell(event: EventSummary) -> Text:
    output = f"{event.output_length} values" if event.output_length is not None else None
    return _labelled([("input", str(event.input)), ("output", output)])


def _input_check(event: EventSummary) -> Text:
    if event.input_problem is not None:
        text = Text(event.input_problem.reason, style="bold red")
        text.append(f": {event.input_problem.message}")
        return text
    if event.checked:
        return Text("fits the detector", style="green")
    return Text("decodes (no detector)")


def _partitions(partitions: Sequence[int]) -> str:
    listed = ", ".join(map(str, partitions))
    return f"partition {listed}" if len(partitions) == 1 else f"partitions {listed}"


def _alone_fate(half: OipHalfSummary) -> str:
    if half.duplicate_of is not None:
        return f"ignores it: a duplicate of {_at(half.duplicate_of)}"
    if half.kind == "request":
        return "scores it without output after join_timeout_seconds unless the response comes"
    return "drops it after join_timeout_seconds unless the request comes"


def _at(coordinates: tuple[int, int] | None) -> str:
    return "—" if coordinates is None else f"{coordinates[0]}/{coordinates[1]}"


def _coordinates(coordinates: tuple[int, int] | None) -> dict[str, int] | None:
    if coordinates is None:
        return None
    return {"partition": coordinates[0], "offset": coordinates[1]}


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _key_cell(key: bytes | None) -> Text:
    if key is None:
        return Text("—")
    text = _key_text(key)
    return Text(text if text is not None else f"base64:{base64.b64encode(key).decode()}")


def _lower(message: str) -> str:
    # pydantic capitalises its messages ("Field required"); ours continue a sentence.
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        return message[0].lower() + message[1:]
    return message
