"""Decode the inference logs serving stacks already write into advmon's inference events.

Pure functions over a Kafka record's value and headers: no Kafka, no Faust, no database.
Three formats besides the native event (:func:`schemas.decode_event`):

``oip-v2``
    Open Inference Protocol v2 bodies logged by KServe's payload logger as CloudEvents,
    binary or structured. A request and its response are separate records sharing the
    CloudEvent id: :func:`decode_oip_v2` reads one record into an :class:`OipMessage`
    (its ``id`` is the join key), and :func:`oip_v2_events` turns a request, with its
    response when there is one, into one event per batch row.
``sagemaker``
    SageMaker Data Capture records, one per message: :func:`sagemaker_events`.
``mapped``
    Any other JSON, through a per-model :class:`FieldMapping` of JSONPath expressions:
    :func:`mapped_event`.

Each module's docstring says what the format looks like, where that is documented, and
which choices advmon makes reading it.

Exceptions::

    FormatError   every decoder's one error; ``reason`` is a FormatErrorReason code
                  (invalid_json, invalid_cloudevent, invalid_oip_v2, unsupported_datatype,
                  shape_mismatch, ambiguous_tensor, unknown_tensor, join_mismatch,
                  invalid_sagemaker, unsupported_content_type, mapping_no_match,
                  mapping_many_matches, invalid_event, too_large) for metrics and
                  dead letters

Limits: every decoder checks a message against the hard limits of the wire contract
(``schemas.MAX_TENSOR_DIMS``, ``MAX_TENSOR_ELEMENTS``, ``MAX_TENSOR_BYTES``,
``MAX_RECORD_ROWS``, ``MAX_ID_LENGTH``) before it allocates anything the message's
declared shapes or headers ask for, and refuses it as ``too_large``; each decoder raises
nothing but :class:`FormatError`.

Examples
--------
>>> from monitor.formats import FormatError, sagemaker_events
>>> try:
...     sagemaker_events(b'{"captureData": {}}', model_id="m")
... except FormatError as error:
...     print(error.reason, "-", error)
invalid_sagemaker - SageMaker capture record: field 'eventMetadata': field required
"""

from __future__ import annotations

from monitor.formats._errors import FormatError, FormatErrorReason
from monitor.formats._mapped import FieldMapping, mapped_event
from monitor.formats._oip_v2 import (
    CE_TYPE_REQUEST,
    CE_TYPE_RESPONSE,
    OipKind,
    OipMessage,
    decode_oip_v2,
    oip_v2_events,
)
from monitor.formats._sagemaker import sagemaker_events

__all__ = [
    "CE_TYPE_REQUEST",
    "CE_TYPE_RESPONSE",
    "FieldMapping",
    "FormatError",
    "FormatErrorReason",
    "OipKind",
    "OipMessage",
    "decode_oip_v2",
    "mapped_event",
    "oip_v2_events",
    "sagemaker_events",
]

# Classes and functions report the package as their home (as in :mod:`schemas`), so reprs
# and tracebacks say ``monitor.formats.FormatError`` rather than a private module.
_HOMED = ("FieldMapping", "FormatError", "FormatErrorReason", "OipMessage")
for _name in (*_HOMED, "decode_oip_v2", "mapped_event", "oip_v2_events", "sagemaker_events"):
    globals()[_name].__module__ = __name__
del _name, _HOMED
