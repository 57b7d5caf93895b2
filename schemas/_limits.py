"""Hard limits of the wire contracts: how large one event may be.

advmon reads traffic that clients shape. Every decoder checks a message against these
limits before it allocates anything sized by the message (an array from a declared
shape, the bytes of a base64 payload or an ``.npy`` header), so one message can neither
exhaust the worker's memory nor make numpy raise on an impossible shape. An event over a
limit is refused with the dead-letter reason ``too_large`` (docs/formats.md, "Limits").

The numbers are far above what a model input needs (a 1024 x 1024 RGB image has
3,145,728 elements) and far below what breaks numpy (64 dimensions, sizes that overflow
int64) or a worker's memory.
"""

from __future__ import annotations

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_OUTPUT_VALUES",
    "MAX_RECORD_ROWS",
    "MAX_TENSOR_BYTES",
    "MAX_TENSOR_DIMS",
    "MAX_TENSOR_ELEMENTS",
    "TOO_LARGE",
]

MAX_TENSOR_DIMS = 32
"""Dimensions of one input without its batch axis (a tensor's ``shape``, a nested list's
depth); numpy refuses more than 64."""

MAX_TENSOR_ELEMENTS = 2**24
"""Elements of one input (16,777,216), and of one message's whole batch; also the largest
size of any one dimension, so no product of sizes overflows."""

MAX_TENSOR_BYTES = 2**26
"""Raw bytes of one tensor payload (64 MiB), checked from the length of its base64 text
before it is decoded."""

MAX_RECORD_ROWS = 4096
"""Rows (events) one record may hold: the batch axis of an OIP v2 tensor, the lines of a
SageMaker capture. A shape such as ``[1000000, 0]`` holds no data but would make a
million events."""

MAX_OUTPUT_VALUES = 2**20
"""Values of one event's ``output`` (scores or logits)."""

MAX_ID_LENGTH = 500
"""Characters of ``event_id``, ``request_id``, ``source`` and a CloudEvent id: the
incident history's columns hold 500."""

MAX_NAME_LENGTH = 200
"""Characters of ``model_id`` and ``model_version``: the incident history's columns hold
200."""

TOO_LARGE = "too_large"
"""The dead-letter reason of a message over any of these limits."""
