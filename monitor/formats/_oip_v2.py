"""Open Inference Protocol v2 messages logged by KServe's payload logger (format ``oip-v2``).

What KServe writes
------------------
KServe's logger (kserve/kserve ``pkg/logger/handler.go`` and ``worker.go``) wraps each
inference body in a CloudEvent, specversion 1.0:

- ``type``: ``org.kubeflow.serving.inference.request`` for the request body,
  ``org.kubeflow.serving.inference.response`` for the response body: **two separate
  events** (the response only for HTTP 200).
- ``id``: the request's ``Ce-Id`` header, or a fresh UUID; the same on both events, so it
  is the key that joins a response to its request.
- ``source``: the logger's source URI; ``time``: when the logger sent the event.
- extensions ``inferenceservicename``, ``namespace``, ``component``, ``endpoint``,
  ``metadata`` (JSON of the request headers configured for logging) and ``annotations``.

It sends them over HTTP; a Knative ``KafkaSink`` or Kafka ``Broker`` puts them on a topic,
in binary mode (attributes as ``ce_*`` headers) or structured mode (one JSON object); see
:mod:`monitor.formats._cloudevents` for how both are read.

The body is an inference request or response of the Open Inference Protocol v2 REST API
(kserve/open-inference-protocol, ``specification/protocol/inference_rest.md``)::

    request:  {"id"?, "parameters"?, "inputs": [tensor, ...], "outputs"?: [...]}
    response: {"model_name", "model_version"?, "id"?, "parameters"?, "outputs": [tensor, ...]}
    tensor:   {"name", "shape": [int, ...], "datatype", "parameters"?, "data": [...]}

The first axis of every tensor is the batch axis: one advmon event per row.

Choices
-------
- ``input``: the request row as a :class:`~schemas.TensorPayload` in the tensor's own
  dtype (FP16 stays float16, INT8 stays int8): no conversion here, the detector converts.
- ``output``: the response row, flattened, as floats (BOOL as 0.0/1.0).
- ``ts``: the response's CloudEvent ``time`` (when serving answered, as the native event
  means it), else the request's.
- ``model_version``: the response body's ``model_version``; a v2 request body has none
  (the version is in the URL path, which the logger does not record).
- ``source``: the request's CloudEvent attribute named by ``source_attribute`` (set by
  the logger or the gateway after authentication), else the first of the request body's
  ``parameters`` named in ``source_parameters`` (a string or integer), else ``None``.
  Both are off by default: the client writes the body, and a client that may name a
  source can get another one quarantined, so reading it is an explicit opt-in.
- ``request_id``: the CloudEvent id.

Limits (reason ``too_large``): a CloudEvent id of at most ``MAX_ID_LENGTH`` characters
(it keys the join's table), at most :data:`MAX_TENSORS` tensors, tensor names and
datatypes of at most ``MAX_NAME_LENGTH`` characters, and each tensor's declared shape
within the limits of :func:`~monitor.formats._tensors.check_tensor_shape`, checked before
its data is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from monitor.formats._cloudevents import read_kafka_cloudevent
from monitor.formats._decoding import build_event, row_event_id, validate_wire
from monitor.formats._errors import FormatError, FormatErrorReason
from monitor.formats._tensors import decode_tensor, tensor_payload
from schemas import MAX_ID_LENGTH, MAX_NAME_LENGTH, InferenceEvent

__all__ = [
    "CE_TYPE_REQUEST",
    "CE_TYPE_RESPONSE",
    "OipKind",
    "OipMessage",
    "decode_oip_v2",
    "oip_v2_events",
]

CE_TYPE_REQUEST = "org.kubeflow.serving.inference.request"
"""CloudEvent type of a logged inference request."""
CE_TYPE_RESPONSE = "org.kubeflow.serving.inference.response"
"""CloudEvent type of a logged inference response."""

OipKind = Literal["request", "response"]

_KINDS: dict[str, OipKind] = {CE_TYPE_REQUEST: "request", CE_TYPE_RESPONSE: "response"}
_INVALID = FormatErrorReason.INVALID_OIP_V2

MAX_TENSORS = 64
"""Tensors of one request (``inputs``) or response (``outputs``); pydantic stops reading
a longer list at the limit instead of validating (and reporting) every member."""


@dataclass(frozen=True, eq=False)
class OipMessage:
    """One decoded KServe log event: a v2 request or response and its CloudEvent context."""

    id: str
    """The CloudEvent id: the same on a request and its response (the join key)."""
    kind: OipKind
    tensors: dict[str, np.ndarray]
    """The request's ``inputs`` or the response's ``outputs`` by name, in message order,
    each shaped as declared (batch axis first) in its datatype's numpy type."""
    model_name: str | None
    """The body's ``model_name`` (responses carry it; v2 requests do not)."""
    model_version: str | None
    time: datetime | None
    """The CloudEvent ``time``, timezone-aware."""
    source: str
    """The CloudEvent ``source`` (the logger's URI), not the caller."""
    attributes: dict[str, str]
    """Every CloudEvent attribute and extension (``inferenceservicename``, ``namespace``,
    ``component``, ``endpoint``, ``metadata``, …) by lower-case name."""
    body_id: str | None = None
    """The v2 body's own ``id``, if it has one."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """The v2 body's ``parameters``; empty when absent."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())


class _Tensor(_Wire):
    name: str = Field(max_length=MAX_NAME_LENGTH)
    # The limit of the shape's length is checked by check_tensor_shape, with its reason.
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: str = Field(max_length=MAX_NAME_LENGTH)
    parameters: dict[str, Any] | None = None
    data: Any = None


class _Request(_Wire):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[_Tensor] = Field(max_length=MAX_TENSORS)


class _Response(_Wire):
    model_name: str | None = None
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_Tensor] = Field(max_length=MAX_TENSORS)


def decode_oip_v2(value: bytes, headers: Sequence[tuple[str, bytes]]) -> OipMessage:
    """Decode one Kafka record written from KServe's payload logger.

    Parameters
    ----------
    value
        The record's value: the v2 body (binary mode) or the whole CloudEvent as JSON
        (structured mode).
    headers
        The record's headers, as ``(name, value)`` pairs.

    Raises
    ------
    FormatError
        ``invalid_cloudevent``, ``invalid_json``, ``invalid_oip_v2``,
        ``unsupported_datatype``, ``shape_mismatch`` or ``too_large``; the message names
        the header or field.

    Examples
    --------
    >>> message = decode_oip_v2(
    ...     b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1]}]}',
    ...     [("ce_specversion", b"1.0"), ("ce_id", b"req-1"), ("ce_source", b"http://localhost:9081/"),
    ...      ("ce_type", b"org.kubeflow.serving.inference.request")],
    ... )
    >>> message.id, message.kind, message.tensors["x"].tolist()
    ('req-1', 'request', [[0.5, 1.0]])
    """
    event = read_kafka_cloudevent(value, headers)
    ce_type = event.attributes["type"]
    kind = _KINDS.get(ce_type)
    if kind is None:
        raise FormatError(
            FormatErrorReason.INVALID_CLOUDEVENT,
            f"CloudEvent type {ce_type!r} is not a KServe inference log event "
            f"({CE_TYPE_REQUEST!r} or {CE_TYPE_RESPONSE!r})",
        )
    ce_id = event.attributes["id"]
    if len(ce_id) > MAX_ID_LENGTH:
        raise FormatError(
            FormatErrorReason.TOO_LARGE,
            f"CloudEvent id of {len(ce_id)} characters; at most {MAX_ID_LENGTH} are accepted",
        )
    what = f"v2 inference {kind} (CloudEvent id {ce_id!r})"
    body = event.data
    member = "inputs" if kind == "request" else "outputs"
    if not isinstance(body, dict):
        raise FormatError(_INVALID, f"{what}: the body must be a JSON object")
    if member not in body:
        v1 = "instances" if kind == "request" else "predictions"
        hint = (
            f"; it has {v1!r}, so it is a KServe V1 protocol body: the oip-v2 format reads "
            "the Open Inference Protocol v2 only"
            if v1 in body
            else ""
        )
        raise FormatError(_INVALID, f"{what}: the body has no {member!r} member{hint}")
    wire: _Request | _Response
    if kind == "request":
        wire = validate_wire(_Request, body, _INVALID, what)
        tensors = wire.inputs
        model_name = model_version = None
    else:
        wire = validate_wire(_Response, body, _INVALID, what)
        tensors = wire.outputs
        model_name, model_version = wire.model_name, wire.model_version
    return OipMessage(
        id=ce_id,
        kind=kind,
        tensors=_decode_tensors(tensors, member[:-1], what),
        model_name=model_name,
        model_version=model_version,
        time=event.time,
        source=event.attributes["source"],
        attributes=event.attributes,
        body_id=wire.id,
        parameters=dict(wire.parameters or {}),
    )


def oip_v2_events(
    request: OipMessage,
    response: OipMessage | None,
    *,
    model_id: str,
    input_name: str | None = None,
    output_name: str | None = None,
    source_attribute: str | None = None,
    source_parameters: Sequence[str] = (),
) -> list[InferenceEvent]:
    """The native events of a logged request, joined with its response when there is one.

    One event per row of the input's batch axis: ``event_id`` is the CloudEvent id for a
    batch of one, ``f"{id}#{row}"`` for each row of a larger batch. See the module
    docstring for where every field comes from.

    Parameters
    ----------
    request, response
        Decoded messages sharing one CloudEvent id; ``response`` is ``None`` when serving
        logged none (logger mode ``request``, or a failed inference).
    model_id
        The monitored model these events are for.
    input_name, output_name
        Which tensor to use when the request has several inputs (the response several
        outputs); ``None`` when it has exactly one.
    source_attribute, source_parameters
        Where the caller is read from: a CloudEvent attribute (trusted), else request-body
        parameters (written by the client; opt-in). Neither: no source.

    Raises
    ------
    FormatError
        ``join_mismatch`` when the messages' kinds or ids do not pair up,
        ``ambiguous_tensor`` / ``unknown_tensor`` when the tensor to use is unclear or
        absent, ``shape_mismatch`` when the input has no batch axis or the output's batch
        size differs, ``invalid_event`` when the result breaks the native contract.
    """
    if request.kind != "request":
        raise FormatError(
            FormatErrorReason.JOIN_MISMATCH,
            f"expected a request, got the response of CloudEvent id {request.id!r}",
        )
    if response is not None:
        if response.kind != "response":
            raise FormatError(
                FormatErrorReason.JOIN_MISMATCH,
                f"expected a response, got the request of CloudEvent id {response.id!r}",
            )
        if response.id != request.id:
            raise FormatError(
                FormatErrorReason.JOIN_MISMATCH,
                f"request {request.id!r} and response {response.id!r} have different "
                "CloudEvent ids",
            )
    name, inputs = _select(request.tensors, input_name, "input", "input_name", request.id)
    if inputs.ndim == 0:
        raise FormatError(
            FormatErrorReason.SHAPE_MISMATCH,
            f"request {request.id!r}: input {name!r} has shape [] and so no batch axis",
        )
    rows = inputs.shape[0]
    outputs: np.ndarray | None = None
    if response is not None:
        out_name, outputs = _select(
            response.tensors, output_name, "output", "output_name", response.id
        )
        if outputs.ndim == 0 or outputs.shape[0] != rows:
            raise FormatError(
                FormatErrorReason.SHAPE_MISMATCH,
                f"response {response.id!r}: output {out_name!r} has shape "
                f"{list(outputs.shape)}, but the request's input {name!r} has a batch of {rows}",
            )
    ts = response.time if response is not None and response.time is not None else request.time
    fields: dict[str, Any] = {
        "model_id": model_id,
        "model_version": response.model_version if response is not None else None,
        "ts": ts,
        "request_id": request.id,
        "source": _caller(request, source_attribute, source_parameters),
    }
    return [
        build_event(
            {
                **fields,
                "event_id": row_event_id(request.id, row, rows),
                "input": tensor_payload(inputs[row]),
                "output": (
                    outputs[row].astype(np.float64).ravel().tolist()
                    if outputs is not None
                    else None
                ),
            },
            f"request {request.id!r}, row {row}",
        )
        for row in range(rows)
    ]


def _decode_tensors(tensors: list[_Tensor], role: str, what: str) -> dict[str, np.ndarray]:
    decoded: dict[str, np.ndarray] = {}
    for tensor in tensors:
        where = f"{what}: {role} {tensor.name!r}"
        if tensor.name in decoded:
            raise FormatError(_INVALID, f"{where} appears twice")
        if tensor.data is None:
            binary = tensor.parameters is not None and "binary_data_size" in tensor.parameters
            why = (
                " (it uses the binary tensor data extension, which advmon does not read)"
                if binary
                else ""
            )
            raise FormatError(_INVALID, f"{where} has no 'data'{why}")
        decoded[tensor.name] = decode_tensor(where, tensor.shape, tensor.datatype, tensor.data)
    return decoded


def _select(
    tensors: Mapping[str, np.ndarray], name: str | None, role: str, option: str, ce_id: str
) -> tuple[str, np.ndarray]:
    names = ", ".join(repr(n) for n in tensors) or "none"
    if name is not None:
        if name not in tensors:
            raise FormatError(
                FormatErrorReason.UNKNOWN_TENSOR,
                f"CloudEvent {ce_id!r} has no {role} {name!r} (its {role}s: {names})",
            )
        return name, tensors[name]
    if len(tensors) == 1:
        only = next(iter(tensors))
        return only, tensors[only]
    if not tensors:
        raise FormatError(_INVALID, f"CloudEvent {ce_id!r} has no {role}s")
    raise FormatError(
        FormatErrorReason.AMBIGUOUS_TENSOR,
        f"CloudEvent {ce_id!r} has {len(tensors)} {role}s ({names}); set {option} to the "
        "one advmon should use",
    )


def _caller(request: OipMessage, attribute: str | None, parameters: Sequence[str]) -> str | None:
    if attribute is not None:
        trusted = request.attributes.get(attribute.lower())
        if trusted:
            return trusted
    for key in parameters:
        value = request.parameters.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None
