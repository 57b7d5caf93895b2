"""Wire contracts of advmon: what goes on each Kafka topic, as pydantic models.

Every model is frozen and ignores fields it does not know. Their JSON Schema files, for
producers in other languages, live in ``schemas/json/``; ``python -m schemas.export``
regenerates them.

Exceptions::

    SchemaError
     └── InvalidEventError   (also a ValueError) an inference event broke the contract;
                             ``too_large`` when it broke a hard limit

Hard limits (``MAX_*``, :mod:`schemas._limits`) bound how large one event may be; every
decoder checks them before it allocates anything a message's declared sizes ask for.

Examples
--------
>>> from schemas import decode_event
>>> decode_event(b'{"event_id": "e1", "model_id": "digits", "input": [[0, 1], [1, 0]]}').input
[[0, 1], [1, 0]]
>>> decode_event(b"[1, 2]")
Traceback (most recent call last):
...
schemas.InvalidEventError: invalid event: field '<root>': an event must be a JSON object, got array
"""

from __future__ import annotations

from schemas._dead_letters import DeadLetter, SourceFlag
from schemas._decisions import Action, Decision, Reason, Scope
from schemas._detections import Detection, DetectionKind
from schemas._errors import InvalidEventError, SchemaError
from schemas._events import (
    InferenceEvent,
    TensorDType,
    TensorPayload,
    decode_event,
    validate_event,
)
from schemas._fast import fast_event
from schemas._joins import OipHalf
from schemas._limits import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_OUTPUT_VALUES,
    MAX_RECORD_ROWS,
    MAX_TENSOR_BYTES,
    MAX_TENSOR_DIMS,
    MAX_TENSOR_ELEMENTS,
    TOO_LARGE,
)
from schemas._queries import FINGERPRINT_BYTES, QueryPrints, query_key
from schemas._scores import ScoreRecord
from schemas._signals import SignalBatch

__all__ = [
    "FINGERPRINT_BYTES",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_OUTPUT_VALUES",
    "MAX_RECORD_ROWS",
    "MAX_TENSOR_BYTES",
    "MAX_TENSOR_DIMS",
    "MAX_TENSOR_ELEMENTS",
    "TOO_LARGE",
    "Action",
    "DeadLetter",
    "Decision",
    "Detection",
    "DetectionKind",
    "InferenceEvent",
    "InvalidEventError",
    "OipHalf",
    "QueryPrints",
    "Reason",
    "SchemaError",
    "Scope",
    "ScoreRecord",
    "SignalBatch",
    "SourceFlag",
    "TensorDType",
    "TensorPayload",
    "decode_event",
    "fast_event",
    "query_key",
    "validate_event",
]

# Public names report the package as their home (as httpx does), so reprs and tracebacks
# say ``schemas.InvalidEventError`` rather than a private module.
for _name in __all__:
    if not _name.isupper():
        globals()[_name].__module__ = __name__
del _name
