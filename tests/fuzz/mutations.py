"""Hostile messages for the fuzz suite: real fixtures, mutated as an attacker would.

Three kinds of mutation, mixed by hypothesis:

- **values**: parse a real message, walk to one of its members and put a hostile value
  there (impossible shapes, huge or negative integers, deep or ragged lists, long strings,
  wrong types);
- **bytes**: flip, cut, repeat or splice JSON tokens into the raw bytes;
- **npy bodies**: headers that claim any dtype and shape, followed by any number of bytes.

Every strategy keeps each message small (well under 1 MiB), so the memory bound of the
suite is about what a decoder allocates, not what the message weighs.
"""

from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "HOSTILE_SHAPES",
    "b64",
    "capture",
    "dumps",
    "hostile_values",
    "mutated_bytes",
    "mutated_json",
    "nested",
    "npy_bodies",
]

HOSTILE_SHAPES: list[list[int]] = [
    [1] * 70,  # numpy refuses more than 64 dimensions
    [1] * 33,
    [0, 2**63],  # overflows int64
    [0, 2**63 - 1],
    [2**64],
    [100_000, 100_000],  # 37 GiB as float32
    [2**24 + 1],
    [1_000_000, 0],  # no data, a million rows
    [0],
    [],
    [-1],
    [3, -1],
]

_TOKENS = [
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b",",
    b":",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"99999999999999999999999",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b'"\\u0000"',
    b'"\\ud800"',
    b"\xff\xfe",
    b"NaN",
    b"Infinity",
]


def nested(depth: int, leaf: Any = 1.0) -> Any:
    """``leaf`` inside ``depth`` one-element lists."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _long_text(size: int) -> str:
    return "x" * size


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 3.4e38, 3.5e38, 65504.0, 65520.0]),
    st.text(max_size=20),
    st.sampled_from([0, 1, 199, 200, 201, 499, 500, 501, 5_000, 100_000]).map(_long_text),
)
"""JSON scalars an attacker would try: extremes of every integer and float type, long
strings."""

hostile_values: st.SearchStrategy[Any] = st.one_of(
    scalars,
    st.sampled_from(HOSTILE_SHAPES),
    st.one_of(st.integers(0, 40), st.sampled_from([63, 64, 65, 70, 254, 255, 256, 600])).map(
        nested
    ),
    st.lists(st.one_of(st.integers(-300, 300), st.floats(-1e6, 1e6)), max_size=50),
    st.lists(st.lists(st.integers(0, 3), max_size=4), max_size=4),  # ragged
    st.lists(scalars, max_size=8),
    st.sampled_from([4095, 4096, 4097, 5_000]).map(lambda n: [0.5] * n),
    st.dictionaries(st.text(max_size=8), scalars, max_size=4),
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=10),
)
"""Any JSON value a member may be replaced with."""


def _members(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a member of ``value`` (dict keys and list indices), root first."""
    paths = [path]
    if isinstance(value, dict):
        for key, member in value.items():
            paths.extend(_members(member, (*path, key)))
    elif isinstance(value, list):
        # The first few elements stand for the rest.
        for index, member in enumerate(value[:3]):
            paths.extend(_members(member, (*path, index)))
    return paths


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replaced(value[head], rest, new)
    return copy


@st.composite
def mutated_json(draw: st.DrawFn, document: Any, max_mutations: int = 3) -> Any:
    """``document`` with up to ``max_mutations`` members replaced by hostile values, or
    removed."""
    for _ in range(draw(st.integers(min_value=1, max_value=max_mutations))):
        path = draw(st.sampled_from(_members(document)))
        if path and isinstance(document, dict) and draw(st.integers(0, 9)) == 0:
            # Remove the member instead.
            parent = _members_at(document, path[:-1])
            if isinstance(parent, dict):
                document = _replaced(
                    document, path[:-1], {k: v for k, v in parent.items() if k != path[-1]}
                )
                continue
        document = _replaced(document, path, draw(hostile_values))
    return document


def _members_at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated_bytes(draw: st.DrawFn, raw: bytes, max_mutations: int = 4) -> bytes:
    """``raw`` with a few bytes flipped, cut, repeated, or JSON tokens spliced in."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(min_value=1, max_value=max_mutations))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        kind = draw(st.integers(min_value=0, max_value=4))
        if kind == 0 and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == 1:
            end = draw(st.integers(min_value=at, max_value=min(len(data), at + 64)))
            del data[at:end]
        elif kind == 2:
            end = draw(st.integers(min_value=at, max_value=min(len(data), at + 64)))
            data[at:at] = bytes(data[at:end]) * draw(st.integers(1, 50))
        elif kind == 3:
            data[at:at] = draw(st.sampled_from(_TOKENS))
        else:
            data[at:at] = draw(st.binary(max_size=8))
    return bytes(data)


_NPY_DESCRS = [
    "<f4",
    ">f4",
    "<f8",
    "<f2",
    "|u1",
    "|i1",
    "<i8",
    "<u8",
    "|b1",
    "<c8",
    "<U3",
    "|S2",
    "|O",
    "|V0",
    "<M8[s]",
    "[('a', '<f4')]",
    "'<f4'",  # a quoted descr
    "42",
]


@st.composite
def npy_bodies(draw: st.DrawFn) -> bytes:
    """An ``.npy`` file whose header claims any dtype and shape, followed by any number of
    bytes: sometimes exactly what the header asks for, mostly not."""
    if draw(st.booleans()):
        # A real array, then maybe damaged.
        dtype = draw(st.sampled_from(["<f4", ">f8", "|u1", "<i8", "|b1", "<f2"]))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(shape, dtype=dtype), allow_pickle=False)
        raw = buffer.getvalue()
        return raw if draw(st.booleans()) else draw(mutated_bytes(raw, 2))
    descr = draw(st.sampled_from(_NPY_DESCRS))
    shape = draw(
        st.one_of(
            st.sampled_from([tuple(s) for s in HOSTILE_SHAPES]),
            st.lists(st.integers(0, 5), max_size=6).map(tuple),
        )
    )
    fortran = draw(st.booleans())
    literal = descr if descr[0] in "['4" else repr(descr)
    header = f"{{'descr': {literal}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    if draw(st.integers(0, 9)) == 0:
        header = draw(st.sampled_from(["{}", "[1, 2]", "{'descr': '<f4'}", "x" * 100]))
    encoded = header.encode("latin1")
    padding = (-(10 + len(encoded) + 1)) % 64
    encoded += b" " * padding + b"\n"
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))
    length = (
        len(encoded).to_bytes(2, "little")
        if version == b"\x01\x00"
        else len(encoded).to_bytes(4, "little")
    )
    try:
        itemsize = np.dtype(descr).itemsize
    except TypeError:
        itemsize = 4
    wanted = math.prod(shape) * itemsize if all(d >= 0 for d in shape) else 0
    size = draw(
        st.one_of(
            st.integers(0, 64),
            st.just(wanted) if wanted <= 4096 else st.just(0),
        )
    )
    return b"\x93NUMPY" + version + length + encoded + bytes(size)


def b64(raw: bytes) -> str:
    """Standard base64 text of ``raw``."""
    return base64.b64encode(raw).decode()


def dumps(value: Any) -> bytes:
    """JSON of ``value``, integers of any size included (which orjson cannot write)."""
    return json.dumps(value, allow_nan=False).encode()


def capture(body: bytes, content_type: str, output: dict[str, Any] | None = None) -> bytes:
    """A SageMaker capture record of ``body``, base64 encoded, claiming ``content_type``."""
    data: dict[str, Any] = {
        "endpointInput": {
            "observedContentType": content_type,
            "mode": "INPUT",
            "data": b64(body),
            "encoding": "BASE64",
        }
    }
    if output is not None:
        data["endpointOutput"] = output
    return dumps({"captureData": data, "eventMetadata": {"eventId": "e1"}})
