"""Read a CloudEvent from a Kafka record, in binary or structured content mode.

Follows the CloudEvents Kafka protocol binding (cloudevents/spec,
``cloudevents/bindings/kafka-protocol-binding.md``) and JSON event format:

- **structured** mode when the ``content-type`` header starts with
  ``application/cloudevents`` (case-insensitive): the value is one JSON object holding
  every attribute, with the payload in ``data`` (a JSON value) or ``data_base64``. Only
  the JSON event format (``application/cloudevents+json``) is understood. A record with
  no CloudEvents header at all is read this way too, since some producers leave the
  header out in structured mode.
- **binary** mode otherwise: each attribute is a header named ``ce_<attribute>`` (the
  Kafka binding's prefix); ``ce-<attribute>`` (the HTTP binding's, which bridges copy
  across) is accepted too, header names case-insensitively. ``content-type`` is the
  ``datacontenttype`` attribute, and the value is the payload as is.

The payload is always parsed as JSON, whatever ``datacontenttype`` says: KServe's logger
copies the HTTP request's ``Content-Type`` onto both events, and ``curl -d`` sends
``application/x-www-form-urlencoded`` for what is a JSON body.

Why not the ``cloudevents`` SDK: its Kafka binding (moved from ``cloudevents.kafka`` in
1.x to ``cloudevents.core.bindings.kafka`` in 2.x) takes headers as a dict (Kafka
allows repeated headers), knows only the ``ce_`` prefix, and, in 2.x, gives an event
with no ``ce_id`` header a fresh random id and one with no ``ce_time`` the current
time. A made-up id would silently break the request/response join, and a made-up time
would misdate events, where advmon must reject the record and say why. The mapping is a
dozen lines of the spec, so it is done here, with errors that name the header.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from monitor.formats._decoding import load_json
from monitor.formats._errors import FormatError, FormatErrorReason

__all__ = ["KafkaCloudEvent", "read_kafka_cloudevent"]

_INVALID = FormatErrorReason.INVALID_CLOUDEVENT
_REQUIRED = ("id", "source", "specversion", "type")
_STRUCTURED_PREFIX = "application/cloudevents"
_JSON_FORMAT = "application/cloudevents+json"
_PREFIXES = ("ce_", "ce-")


@dataclass(frozen=True)
class KafkaCloudEvent:
    """A CloudEvent read from one Kafka record."""

    attributes: dict[str, str]
    """Every context attribute and extension by lower-case name, ``datacontenttype``
    included; non-string extension values of a structured event as their JSON text."""
    time: datetime | None
    """The ``time`` attribute, timezone-aware; ``None`` when absent."""
    data: Any
    """The payload, parsed as JSON."""
    mode: Literal["binary", "structured"]


def read_kafka_cloudevent(value: bytes, headers: Sequence[tuple[str, bytes]]) -> KafkaCloudEvent:
    """Read the CloudEvent a Kafka record carries, in either content mode.

    Raises
    ------
    FormatError
        ``invalid_cloudevent`` when an attribute is missing or malformed, ``invalid_json``
        when the payload (or a structured envelope) is not JSON.
    """
    content_type: str | None = None
    has_ce_headers = False
    for name, raw in headers:
        lowered = name.lower()
        if lowered == "content-type":
            content_type = _header_text(name, raw)
        elif lowered.startswith(_PREFIXES):
            has_ce_headers = True
    if content_type is not None and content_type.lower().startswith(_STRUCTURED_PREFIX):
        return _structured(value, content_type)
    if not has_ce_headers:
        return _structured(value, content_type)
    return _binary(value, headers)


def _binary(value: bytes, headers: Sequence[tuple[str, bytes]]) -> KafkaCloudEvent:
    attributes: dict[str, str] = {}
    header_of: dict[str, str] = {}
    for name, raw in headers:
        lowered = name.lower()
        if lowered == "content-type":
            attribute = "datacontenttype"
        elif lowered.startswith(_PREFIXES) and len(lowered) > 3:
            attribute = lowered[3:]
        else:
            continue
        text = _header_text(name, raw)
        if attribute in attributes and attributes[attribute] != text:
            raise FormatError(
                _INVALID,
                f"headers {header_of[attribute]!r} and {name!r} give attribute {attribute!r} "
                f"two values ({attributes[attribute]!r} and {text!r})",
            )
        attributes[attribute] = text
        header_of[attribute] = name
    for required in _REQUIRED:
        if not attributes.get(required):
            raise FormatError(
                _INVALID,
                f"binary-mode CloudEvent has no {required!r} attribute "
                f"(header ce_{required} or ce-{required} missing or empty)",
            )
    _check_specversion(attributes["specversion"], "header ce_specversion")
    if not value:
        raise FormatError(
            _INVALID, "binary-mode CloudEvent has no data (the message value is empty)"
        )
    time = _parse_time(attributes.get("time"), "header ce_time")
    data = load_json(value, "CloudEvent data (the message value)")
    return KafkaCloudEvent(attributes, time, data, "binary")


def _structured(value: bytes, content_type: str | None) -> KafkaCloudEvent:
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type.startswith(_STRUCTURED_PREFIX) and media_type != _JSON_FORMAT:
            raise FormatError(
                _INVALID,
                f"structured CloudEvent in event format {media_type!r}; "
                f"only {_JSON_FORMAT!r} is understood",
            )
    envelope = load_json(value, "structured CloudEvent (the message value)")
    if not isinstance(envelope, dict) or "specversion" not in envelope:
        raise FormatError(
            _INVALID,
            "no CloudEvent found: the record has no ce_* headers (binary mode) and its value "
            "is not a structured CloudEvent (a JSON object with specversion, id, source, type)",
        )
    if "data" in envelope and "data_base64" in envelope:
        raise FormatError(_INVALID, "structured CloudEvent has both 'data' and 'data_base64'")
    attributes: dict[str, str] = {}
    for name, member in envelope.items():
        if name in ("data", "data_base64"):
            continue
        attributes[name.lower()] = member if isinstance(member, str) else _json_text(name, member)
    for required in _REQUIRED:
        if not isinstance(envelope.get(required), str) or not envelope[required]:
            raise FormatError(
                _INVALID,
                f"structured CloudEvent has no {required!r} attribute "
                f"(member {required!r} missing, empty or not a string)",
            )
    _check_specversion(attributes["specversion"], "member 'specversion'")
    time = _parse_time(attributes.get("time"), "member 'time'")
    return KafkaCloudEvent(attributes, time, _structured_data(envelope), "structured")


def _structured_data(envelope: dict[str, Any]) -> Any:
    if "data_base64" in envelope:
        encoded = envelope["data_base64"]
        if not isinstance(encoded, str):
            raise FormatError(_INVALID, "member 'data_base64' must be a base64 string")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError(
                _INVALID, f"member 'data_base64' is not valid base64: {exc}"
            ) from None
        return load_json(raw, "CloudEvent data (member 'data_base64', decoded)")
    if "data" not in envelope or envelope["data"] is None:
        raise FormatError(_INVALID, "structured CloudEvent has no 'data' or 'data_base64'")
    data = envelope["data"]
    # JSON text embedded as a string: what SDKs write for a payload whose datacontenttype
    # is not JSON, such as KServe's copied application/x-www-form-urlencoded.
    if isinstance(data, str):
        return load_json(data, "CloudEvent data (member 'data', a string)")
    return data


def _header_text(name: str, raw: bytes) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        raise FormatError(_INVALID, f"header {name!r} is not UTF-8 text") from None


def _check_specversion(version: str, where: str) -> None:
    if version != "1.0":
        raise FormatError(
            _INVALID, f"{where} is {version!r}; only CloudEvents specversion '1.0' is understood"
        )


def _parse_time(text: str | None, where: str) -> datetime | None:
    if text is None:
        return None
    try:
        time = datetime.fromisoformat(text)
    except ValueError:
        time = None
    if time is None or time.utcoffset() is None:
        raise FormatError(
            _INVALID,
            f"{where} is {text!r}, not an RFC 3339 timestamp with an offset "
            "(e.g. '2024-05-01T12:00:00.123456789Z')",
        )
    return time


def _json_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        # A CloudEvent attribute is a string, number or boolean; a nested value deeper
        # than orjson writes (255 levels) is no attribute at all.
        raise FormatError(
            _INVALID, f"structured CloudEvent member {name!r} cannot be an attribute: {exc}"
        ) from None
