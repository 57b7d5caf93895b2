"""The query-fingerprints record (:class:`schemas.QueryPrints`), fed mutated messages.

The record travels on an internal topic, but a worker reads whatever that topic holds:
parsing any message may only give a record or a pydantic ``ValidationError``, and a
record's bit maps (:meth:`~schemas.QueryPrints.bitmap_bytes`) may only give their bytes
or a ``ValueError``, within the time and memory bounds of :mod:`tests.fuzz.bounds`. Every
query of a record that is read goes into a query history as the query stage feeds it, and
the history is stored within a record's limit and read back.
"""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import numpy as np
import orjson
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from detectors.queries import BITMAP_WORDS, QueryHistory
from schemas import FINGERPRINT_BYTES, QueryPrints, query_key
from tests.fuzz.bounds import examples, outcome
from tests.fuzz.mutations import b64, dumps, hostile_values, mutated_bytes, mutated_json

_UINT64 = 2**64 - 1
_HISTORY = 8
_MAX_AGE = 86_400.0
_MATCH_BITS = 25
_STORED_BYTES = 4096
"""Room for a stored history: less than a few queries with long event ids take."""


def _record(n: int, seed: int = 0) -> dict[str, Any]:
    """A valid record of ``n`` queries, as the scoring stage writes it."""
    rng = np.random.default_rng(seed)
    return {
        "model_id": "digits",
        "model_version": "3",
        "source": "alice",
        "enforce": True,
        "event_ids": [f"e{i}" for i in range(n)],
        "times": [1_700_000_000.0 + i for i in range(n)],
        "request_digests": [0, *(int(v) for v in rng.integers(1, 2**63, max(0, n - 1)))][:n],
        "digests": [int(v) for v in rng.integers(0, 2**63, n)],
        "windows": [50] * n,
        "bitmaps": [b64(rng.bytes(FINGERPRINT_BYTES)) for _ in range(n)],
        "topics": ["inference-events"] * n,
        "partitions": [0] * n,
        "offsets": list(range(n)),
    }


SEEDS = [_record(1), _record(3, seed=1)]


def _parsed(raw: bytes) -> QueryPrints | ValidationError:
    try:
        return QueryPrints.model_validate_json(raw)
    except ValidationError as error:
        return error


def _bitmaps(record: QueryPrints) -> bytes | ValueError:
    try:
        return record.bitmap_bytes()
    except ValidationError:
        raise  # not a refusal this method may give
    except ValueError as error:
        return error


def _check(raw: bytes) -> None:
    """Parse ``raw`` and read its bit maps within the bounds; any exception other than
    the two refusals fails the example."""
    parsed = outcome(lambda: _parsed(raw), len(raw))
    if isinstance(parsed, ValidationError):
        assert parsed.errors(), "a validation error without errors"
        event("record refused")
        return
    assert isinstance(parsed, QueryPrints)
    n = len(parsed.event_ids)
    columns = (
        parsed.times,
        parsed.request_digests,
        parsed.digests,
        parsed.windows,
        parsed.bitmaps,
        parsed.topics,
        parsed.partitions,
        parsed.offsets,
    )
    assert all(len(column) == n for column in columns)
    assert all(0 <= v <= _UINT64 for v in (*parsed.digests, *parsed.request_digests))
    assert parsed.key == query_key(parsed.model_id, parsed.source)
    maps = outcome(lambda: _bitmaps(parsed), len(raw))
    if isinstance(maps, ValueError):
        assert str(maps)
        event("bit maps refused")
        return
    event("bit maps read")
    assert isinstance(maps, bytes)
    assert len(maps) == FINGERPRINT_BYTES * n
    # Each map is what its text says, as the query stage reads them.
    words = np.frombuffer(maps, dtype="<u8").reshape(n, FINGERPRINT_BYTES // 8)
    for text, row in zip(parsed.bitmaps, words, strict=True):
        assert base64.b64decode(text) == row.tobytes()
    _observed(parsed, maps)


def _observed(record: QueryPrints, maps: bytes) -> None:
    """Feed every query of ``record`` to a history as the query stage does
    (:meth:`monitor.worker.stages.queries.QueryStage._apply`), then store the history
    within :data:`_STORED_BYTES` and read it back: whatever values the record holds."""
    history = QueryHistory(_HISTORY, _MAX_AGE, _MATCH_BITS)
    bitmaps = np.frombuffer(maps, dtype="<u8").reshape(-1, BITMAP_WORDS)
    for row in range(len(record.event_ids)):
        seen = history.observe(
            bitmaps[row],
            record.windows[row],
            record.digests[row],
            record.times[row],
            record.event_ids[row],
            record.request_digests[row],
        )
        assert seen.held == len(history) <= _HISTORY
    stored = history.dumps(_STORED_BYTES)
    assert len(stored) <= _STORED_BYTES
    again = QueryHistory.loads(stored, _HISTORY, _MAX_AGE, _MATCH_BITS)
    assert again.dumps() == stored
    assert again.newest == history.newest
    event(f"history of {len(history)}, {len(again)} stored")


def test_the_seeds_are_valid_records() -> None:
    for seed in SEEDS:
        record = QueryPrints.model_validate_json(orjson.dumps(seed))
        assert len(record.bitmap_bytes()) == FINGERPRINT_BYTES * len(seed["event_ids"])


@settings(max_examples=examples(600))
@given(st.sampled_from(SEEDS).flatmap(mutated_json).map(dumps))
def test_mutated_query_records_parse_or_are_refused(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=examples(300))
@given(st.sampled_from(SEEDS).map(orjson.dumps).flatmap(mutated_bytes))
def test_query_records_with_damaged_bytes_parse_or_are_refused(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=examples(300))
@given(
    field=st.sampled_from(sorted(_record(1))),
    value=hostile_values,
)
def test_any_value_of_any_field_parses_or_is_refused(field: str, value: Any) -> None:
    _check(dumps({**_record(1), field: value}))


_BITMAP_TEXTS = st.one_of(
    # base64 of about the right number of bytes
    st.integers(FINGERPRINT_BYTES - 3, FINGERPRINT_BYTES + 3)
    .flatmap(lambda size: st.binary(min_size=size, max_size=size))
    .map(b64),
    st.binary(max_size=300).map(b64),
    # a valid map, then damaged: padding cut or added, characters outside the alphabet,
    # whitespace, URL-safe characters, non-ASCII text
    st.tuples(
        st.binary(min_size=FINGERPRINT_BYTES, max_size=FINGERPRINT_BYTES).map(b64),
        st.integers(0, 175),
        st.sampled_from(["", "=", "==", "===", "-", "_", "!", " ", "\n", "é", "\x00", "\ud800"]),
        st.booleans(),
    ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :] if t[3] else t[0][: t[1]] + t[2]),
    st.text(max_size=200),
)


@settings(max_examples=examples(400))
@given(st.lists(_BITMAP_TEXTS, min_size=1, max_size=4))
def test_bit_maps_of_any_text_are_read_or_refused(texts: list[str]) -> None:
    n = len(texts)
    record = {**_record(n), "bitmaps": texts}
    _check(dumps(record))


def _column(
    data: st.DataObject, n: int, calm: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]
) -> list[Any]:
    """``n`` values, drawn from ``calm`` (mostly held, distinct queries) or ``wild``."""
    values: list[Any] = data.draw(
        st.lists(
            st.one_of(calm, wild) if data.draw(st.booleans()) else calm, min_size=n, max_size=n
        )
    )
    return values


_LONG_ID = st.tuples(st.characters(codec="utf-8"), st.integers(400, 700)).map(lambda t: t[0] * t[1])
"""An event id longer than a history keeps, built cheaply (a few bytes of hypothesis's
buffer, where a drawn text would take hundreds)."""


@settings(max_examples=examples(100))
@given(n=st.one_of(st.integers(1, 4), st.integers(9, 40)), data=st.data())
def test_records_of_many_queries_go_into_a_history_that_fits_its_room(
    n: int, data: st.DataObject
) -> None:
    # Valid records with any values, each column either calm (distinct queries, held:
    # the history fills and its long event ids outgrow the room) or wild: event ids of
    # any script, times out of order or extreme, repeated digests and request digests,
    # windows below the match threshold.
    uint64 = st.integers(0, _UINT64)
    record = {
        **_record(n),
        "event_ids": _column(data, n, _LONG_ID, st.text(min_size=1, max_size=8)),
        "times": _column(
            data,
            n,
            st.floats(0.0, 1_000.0),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        "request_digests": _column(
            data, n, st.just(0) | st.integers(2**32, _UINT64), st.integers(0, 3)
        ),
        "digests": _column(data, n, st.integers(2**32, _UINT64), st.integers(0, 3) | uint64),
        "windows": _column(data, n, st.sampled_from([25, 50, 2**40]), st.integers(0, 24)),
        "bitmaps": _column(
            data,
            n,
            st.integers(0, 2**32).map(
                lambda seed: b64(np.random.default_rng(seed).bytes(FINGERPRINT_BYTES))
            ),
            st.sampled_from([b"\xff" * FINGERPRINT_BYTES, bytes(FINGERPRINT_BYTES)]).map(b64),
        ),
    }
    parsed = QueryPrints.model_validate_json(orjson.dumps(record))
    _observed(parsed, parsed.bitmap_bytes())


def test_a_record_of_the_longest_event_list_is_bounded() -> None:
    # Lists longer than 65,536 queries are refused; a record of that many is read within
    # the bounds.
    for n, refused in ((65_536, False), (65_537, True)):
        record = {
            **_record(0),
            "event_ids": ["e"] * n,
            "times": [0.0] * n,
            "request_digests": [0] * n,
            "digests": [0] * n,
            "windows": [0] * n,
            "bitmaps": ["A"] * n,
            "topics": ["t"] * n,
            "partitions": [0] * n,
            "offsets": [0] * n,
        }
        raw = orjson.dumps(record)
        parsed = outcome(partial(_parsed, raw), len(raw))
        assert isinstance(parsed, ValidationError) == refused
