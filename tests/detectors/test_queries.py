"""Query fingerprints and per-source query histories (:mod:`detectors.queries`).

Fingerprints are checked on real inputs: scikit-learn's digits upscaled to 28×28 (as the
evaluation's CNN sees them) and the breast-cancer table. Histories are checked rule by
rule on hand-made bit maps, and as a whole against a plain Python reading of the rules
(:class:`ReferenceHistory`) over generated query sequences. Stored histories are fed
hostile bytes: the only outcome allowed besides a history is :class:`QueryStateError`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tracemalloc
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from detectors import DetectorConfig, DetectorFileError, calibrate_detector
from detectors.queries import (
    BITMAP_BITS,
    BITMAP_WORDS,
    DEFAULT_MIN_LINKED,
    MAX_EVENT_ID_CHARS,
    Fingerprints,
    FingerprintSpec,
    QueryCalibrator,
    QueryHistory,
    QueryObservation,
    QuerySettings,
    QueryStateError,
    fingerprints,
    request_digest,
)
from monitor.demo.model import load_digits_data
from schemas import MAX_ID_LENGTH
from tests.detectors.models import random_cnn, random_mlp_tabular

# As the fuzz suite's profile (tests/fuzz/conftest.py): the same examples on every run,
# no example database written into the checkout.
PROPERTY = settings(
    database=None,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

IMAGE = FingerprintSpec.for_image((0.0, 1.0))
SIDE = 28
ELEMENTS = SIDE * SIDE
MATCH_BITS = IMAGE.match_bits(ELEMENTS)
"""25 shared bits of 50 for a 28×28 image: half of ``top_k``, as Blacklight."""

MEMORY_BOUND_BYTES = 16 * 2**20
MEMORY_PER_BYTE = 64


# -- data ------------------------------------------------------------------------------


def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    """The ``[n_out, n_in]`` matrix of bilinear resampling (half-pixel centres, edges
    clamped: torch's ``interpolate(..., align_corners=False)``)."""
    matrix = np.zeros((n_out, n_in))
    for out in range(n_out):
        source = max((out + 0.5) * n_in / n_out - 0.5, 0.0)
        low = min(int(source), n_in - 1)
        high = min(low + 1, n_in - 1)
        weight = source - low
        matrix[out, low] += 1 - weight
        matrix[out, high] += weight
    return matrix


@functools.cache
def digits28() -> tuple[np.ndarray, np.ndarray]:
    """The digits' test split as ``[450, 1, 28, 28]`` images in [0, 1], and their labels:
    each 8×8 digit resampled to 24×24 in a 2-pixel black border (the 28×28 upscale of
    ``tests/evaluate/models.py``)."""
    data = load_digits_data(seed=0)
    resample = _bilinear(8, 24)
    big = np.einsum("oi,ncij,pj->ncop", resample, data.test_x.astype(np.float64), resample)
    framed = np.pad(big, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return np.clip(framed, 0.0, 1.0).astype(np.float32), data.test_y


@functools.cache
def cancer_rows() -> tuple[np.ndarray, FingerprintSpec]:
    """The breast-cancer table (569 rows, 30 features, float32) and its tabular spec."""
    from sklearn.datasets import load_breast_cancer

    x, _ = load_breast_cancer(return_X_y=True)
    rows = x.astype(np.float32)
    return rows, FingerprintSpec.for_tabular(rows.mean(axis=0), rows.std(axis=0))


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shared set bits of fingerprints ``a`` and ``b`` (broadcast over leading axes)."""
    counts: np.ndarray = np.bitwise_count(a & b).sum(axis=-1)
    return counts


def bitmap(bits: Iterable[int]) -> np.ndarray:
    """A fingerprint bit map with exactly ``bits`` set."""
    flags = np.zeros(BITMAP_BITS, dtype=bool)
    flags[list(bits)] = True
    return np.packbits(flags, bitorder="little").view("<u8").astype(np.uint64)


def block(start: int, size: int = 50) -> np.ndarray:
    """Bits ``start … start + size - 1``: two blocks match when they start at most
    ``size - MATCH_BITS`` (25) bits apart."""
    return bitmap(range(start, start + size))


# -- fingerprints of images ------------------------------------------------------------


def test_the_digits_are_fingerprinted_with_every_window_kept() -> None:
    images, _ = digits28()
    prints = fingerprints(IMAGE, images)
    assert MATCH_BITS == 25
    assert prints.bitmaps.shape == (len(images), BITMAP_WORDS)
    assert prints.bitmaps.dtype == np.uint64
    assert prints.windows.dtype == np.int32
    assert prints.digests.dtype == np.uint64
    assert np.all(prints.windows == IMAGE.top_k)
    # At most one bit per kept hash.
    bits = np.bitwise_count(prints.bitmaps).sum(axis=1)
    assert np.all(bits <= prints.windows)
    assert len(np.unique(prints.digests)) == len(images)


def test_kept_hashes_are_spread_over_the_whole_bit_map() -> None:
    # Each kept hash sets the bit of its bottom 10 bits. The kept hashes are the smallest
    # of an input's window hashes, so their top bits are all small: a map indexed by
    # them crowds into its bottom words (then 28×28 digits set ~43 bits per 50 hashes,
    # 3×32×32 images ~17, fewer than the 25 of a match).
    images, _ = digits28()
    prints = fingerprints(IMAGE, images)
    # 50 hashes on 1,024 bits share one by chance about 1.2 times: measured 48.9 set.
    set_bits = np.bitwise_count(prints.bitmaps).sum(axis=1)
    assert set_bits.mean() >= IMAGE.top_k - 3
    assert set_bits.min() >= IMAGE.top_k - 8  # measured 45
    shared = overlap(prints.bitmaps[:, None, :], prints.bitmaps[None, :, :])
    # Unrelated digits share their black border's windows: measured a median of 9.
    assert np.median(shared[np.triu_indices(len(images), k=1)]) < MATCH_BITS / 2
    colour = np.random.default_rng(0).random((20, 3, 32, 32), dtype=np.float32)
    colour_prints = fingerprints(IMAGE, colour)
    assert np.bitwise_count(colour_prints.bitmaps).sum(axis=1).mean() >= IMAGE.top_k - 3
    # Over many unrelated inputs, every 64-bit word of the map holds its share of the
    # bits (1/16 each, ±20 %; about ±5 % is chance here), the top half as the bottom.
    noise = np.random.default_rng(1).random((400, 1, SIDE, SIDE), dtype=np.float32)
    words = np.bitwise_count(fingerprints(IMAGE, noise).bitmaps).sum(axis=0)
    share = words / words.sum()
    assert share.min() > 0.8 / BITMAP_WORDS
    assert share.max() < 1.2 / BITMAP_WORDS
    assert abs(share[BITMAP_WORDS // 2 :].sum() - 0.5) < 0.03


def test_near_copies_of_colour_images_match() -> None:
    colour = np.random.default_rng(0).random((20, 3, 32, 32), dtype=np.float32)
    near = colour.copy().reshape(20, -1)
    near[:, :3] += np.float32(0.3 * IMAGE.step)
    a, b = fingerprints(IMAGE, colour), fingerprints(IMAGE, near.reshape(colour.shape))
    assert IMAGE.match_bits(3 * 32 * 32) == MATCH_BITS
    assert np.all(a.windows == IMAGE.top_k)
    assert overlap(a.bitmaps, b.bitmaps).min() >= MATCH_BITS  # measured at least 47 of 50
    assert np.all(a.digests != b.digests)
    # … and unrelated colour images do not: measured at most 6 shared bits.
    shared = overlap(a.bitmaps[:, None, :], a.bitmaps[None, :, :])
    assert shared[np.triu_indices(len(colour), k=1)].max() < MATCH_BITS // 2


@settings(PROPERTY, max_examples=60)
@given(
    index=st.integers(0, 449),
    changes=st.lists(
        st.tuples(st.integers(0, ELEMENTS - 1), st.floats(-0.99, 0.99)), min_size=1, max_size=4
    ),
)
def test_a_few_pixels_moved_by_less_than_a_step_keep_the_fingerprint_matching(
    index: int, changes: list[tuple[int, float]]
) -> None:
    images, _ = digits28()
    original = images[index]
    moved = original.copy().reshape(-1)
    for pixel, fraction in changes:
        moved[pixel] = np.clip(moved[pixel] + np.float32(fraction * IMAGE.step), 0.0, 1.0)
    prints = fingerprints(IMAGE, np.stack([original, moved.reshape(original.shape)]))
    assert overlap(prints.bitmaps[0], prints.bitmaps[1]) >= MATCH_BITS
    same_bytes = np.array_equal(original.reshape(-1), moved)
    assert (prints.digests[0] == prints.digests[1]) == same_bytes


def test_a_change_within_one_step_leaves_the_fingerprint_unchanged() -> None:
    images, _ = digits28()
    image = images[:1].copy()
    prints = fingerprints(IMAGE, image)
    # A value in the middle of its step, moved by a tenth of a step.
    flat = image.reshape(-1)
    pixel = int(np.argmin(np.abs(flat - 0.5 * IMAGE.step)))
    flat[pixel] += np.float32(0.1 * IMAGE.step)
    moved = fingerprints(IMAGE, image)
    np.testing.assert_array_equal(prints.bitmaps, moved.bitmaps)
    assert prints.digests[0] != moved.digests[0]


def test_unrelated_images_never_match() -> None:
    noise = np.random.default_rng(0).random((512, 1, SIDE, SIDE), dtype=np.float32)
    prints = fingerprints(IMAGE, noise)
    history = QueryHistory(256, math.inf, MATCH_BITS)
    seen = [
        history.observe(
            prints.bitmaps[i], int(prints.windows[i]), int(prints.digests[i]), float(i), f"e{i}", 0
        )
        for i in range(len(noise))
    ]
    assert {s.outcome for s in seen} == {"new"}
    assert max(s.matches for s in seen) == 0
    assert max(s.linked for s in seen) == 0
    # Far from the threshold: 50 bits of 1,024 share about 2.4 by chance (measured at
    # most 11 over all 130,816 pairs).
    shared = overlap(prints.bitmaps[:, None, :], prints.bitmaps[None, :, :])
    assert shared[np.triu_indices(len(noise), k=1)].max() < MATCH_BITS // 2


def test_different_digits_do_not_match() -> None:
    images, labels = digits28()
    prints = fingerprints(IMAGE, images)
    shared = overlap(prints.bitmaps[:, None, :], prints.bitmaps[None, :, :])
    pairs = np.triu(np.ones(shared.shape, dtype=bool), k=1)
    matching = (shared >= MATCH_BITS) & pairs
    # Measured: 3 pairs of 101,025 match, all of them two handwritten ones (25 or 26
    # shared bits); digits of different classes share at most 22.
    assert matching.sum() <= 3
    assert matching.sum() / pairs.sum() < 1e-4
    same_class = labels[:, None] == labels[None, :]
    assert not np.any(matching & ~same_class)


@pytest.mark.parametrize(("axis", "shift"), [(2, 1), (2, -1), (3, 1), (3, -1)])
def test_a_digit_shifted_by_one_pixel_still_matches(axis: int, shift: int) -> None:
    images, _ = digits28()
    # The border is black: rolling by one pixel moves the digit without wrapping it.
    shifted = np.roll(images, shift, axis=axis)
    for edge in (0, -1):
        assert np.all(images[:, :, :, edge] == 0)
        assert np.all(images[:, :, edge, :] == 0)
    a, b = fingerprints(IMAGE, images), fingerprints(IMAGE, shifted)
    shared = overlap(a.bitmaps, b.bitmaps)
    assert shared.min() >= MATCH_BITS  # measured at least 35 of 50
    assert np.all(a.digests != b.digests)


def test_a_blank_image_has_too_little_information_to_match() -> None:
    blank = np.zeros((2, 1, SIDE, SIDE), dtype=np.float32)
    blank[1] = 1.0
    prints = fingerprints(IMAGE, blank)
    np.testing.assert_array_equal(prints.windows, [1, 1])
    assert np.all(prints.windows < MATCH_BITS)


def test_inputs_with_fewer_values_than_a_window_have_no_fingerprint() -> None:
    prints = fingerprints(IMAGE, np.full((3, 4), 0.5, dtype=np.float32))
    assert IMAGE.windows_per_input(4) == 0
    assert IMAGE.match_bits(4) == 1
    np.testing.assert_array_equal(prints.windows, [0, 0, 0])
    assert not prints.bitmaps.any()


@pytest.mark.parametrize("shape", [(0, 1, SIDE, SIDE), (0, 30), (0,)])
def test_an_empty_batch_has_no_fingerprints(shape: tuple[int, ...]) -> None:
    _, tabular = cancer_rows()
    for spec in (IMAGE, tabular) if shape == (0, 30) else (IMAGE,):
        empty = fingerprints(spec, np.zeros(shape, dtype=np.float32))
        assert len(empty) == 0
        assert empty.bitmaps.shape == (0, BITMAP_WORDS)
        assert empty.bitmaps.dtype == np.uint64
        assert empty.windows.shape == empty.digests.shape == (0,)
        assert empty.windows.dtype == np.int32
        assert empty.digests.dtype == np.uint64
    # The calibrator and a history take an empty batch as nothing.
    calibrator = QueryCalibrator(IMAGE, ELEMENTS)
    calibrator.update(np.zeros((0, 1, SIDE, SIDE), dtype=np.float32))
    assert calibrator.result().benign_events == 0
    history = QueryHistory(4, math.inf, MATCH_BITS)
    assert history.observe_batch(empty, [], [], [], []) == []


# -- fingerprints of tabular rows ------------------------------------------------------


def test_jittered_table_rows_match_and_different_rows_do_not() -> None:
    rows, spec = cancer_rows()
    match_bits = spec.match_bits(rows.shape[1])
    assert spec.kind == "tabular"
    assert spec.window == 1
    assert match_bits == 15
    prints = fingerprints(spec, rows)
    np.testing.assert_array_equal(prints.windows, np.full(len(rows), rows.shape[1]))

    jitter = np.random.default_rng(0).normal(0.0, 0.01, rows.shape) * rows.std(axis=0)
    jittered = fingerprints(spec, (rows + jitter).astype(np.float32))
    assert overlap(prints.bitmaps, jittered.bitmaps).min() >= match_bits  # measured 23 of 30

    shared = overlap(prints.bitmaps[:, None, :], prints.bitmaps[None, :, :])
    pairs = np.triu(np.ones(shared.shape, dtype=bool), k=1)
    # Measured: 7 pairs of 161,596 at 15 to 17 shared bits.
    assert ((shared >= match_bits) & pairs).sum() <= 10
    assert np.median(shared[pairs]) < match_bits / 2


def test_tabular_windows_carry_their_position() -> None:
    rows, spec = cancer_rows()
    # The same standardised values in another order are another input.
    standardised = np.full((1, rows.shape[1]), 0.0)
    standardised[0, :10] = np.linspace(-2, 2, 10)
    assert spec.center is not None
    assert spec.scale is not None
    center, scale = np.asarray(spec.center), np.asarray(spec.scale)
    row = center + standardised * scale
    swapped = center + standardised[:, ::-1] * scale
    prints = fingerprints(spec, np.concatenate([row, swapped]).astype(np.float32))
    assert overlap(prints.bitmaps[0], prints.bitmaps[1]) < spec.match_bits(rows.shape[1])


def test_far_out_values_are_fingerprinted_without_overflow() -> None:
    rows, spec = cancer_rows()
    extreme = np.stack(
        [
            np.full(rows.shape[1], np.finfo(np.float32).max),
            np.full(rows.shape[1], -np.finfo(np.float32).max),
            np.full(rows.shape[1], np.finfo(np.float32).tiny),
        ]
    ).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prints = fingerprints(spec, extreme)
        image_prints = fingerprints(IMAGE, extreme)
    assert np.all(prints.windows >= 1)
    assert np.all(image_prints.windows >= 1)


# -- determinism -----------------------------------------------------------------------


def _assert_same_rows(a: Fingerprints, b: Fingerprints) -> None:
    np.testing.assert_array_equal(a.bitmaps, b.bitmaps)
    np.testing.assert_array_equal(a.windows, b.windows)
    np.testing.assert_array_equal(a.digests, b.digests)


def _rows(prints: Fingerprints, index: np.ndarray) -> Fingerprints:
    return Fingerprints(prints.bitmaps[index], prints.windows[index], prints.digests[index])


@settings(PROPERTY, max_examples=40)
@given(
    kind=st.sampled_from(["image", "tabular"]),
    index=st.lists(st.integers(0, 449), min_size=1, max_size=12),
)
def test_a_rows_fingerprint_does_not_depend_on_the_rest_of_its_batch(
    kind: str, index: list[int]
) -> None:
    if kind == "image":
        inputs, spec = digits28()[0], IMAGE
    else:
        inputs, spec = cancer_rows()
    whole = fingerprints(spec, inputs)
    picked = np.asarray(index)
    _assert_same_rows(fingerprints(spec, inputs[picked]), _rows(whole, picked))
    for i in index[:3]:
        _assert_same_rows(fingerprints(spec, inputs[i : i + 1]), _rows(whole, np.asarray([i])))


def test_fingerprints_are_the_same_across_calls_and_for_float64_inputs() -> None:
    images, _ = digits28()
    rows, spec = cancer_rows()
    for inputs, fingerprint in ((images, IMAGE), (rows, spec)):
        first = fingerprints(fingerprint, inputs)
        _assert_same_rows(first, fingerprints(fingerprint, inputs.copy()))
        _assert_same_rows(first, fingerprints(fingerprint, inputs.astype(np.float64)))
        # Fortran order, as a view: the values are what count, not the memory layout.
        _assert_same_rows(first, fingerprints(fingerprint, np.asfortranarray(inputs)))
    # float64 values are read as the float32 the model would receive.
    wide = images.astype(np.float64) + 1e-12
    _assert_same_rows(fingerprints(IMAGE, wide), fingerprints(IMAGE, wide.astype(np.float32)))


GOLDEN_FINGERPRINTS = "d78246be731e5fb66ef947b2aeb3b710df944c22ffda9d66b78ee75fd04433a7"
"""SHA-256 of the bit maps of the first 8 digits (28×28) and breast-cancer rows: each
kept hash's bit is its bottom 10 bits."""


def test_fingerprints_are_the_same_on_every_machine_and_version() -> None:
    # Histories are stored and matched across workers and restarts: a fixed input must
    # keep its fingerprint. A change here makes every stored history useless; a
    # deliberate one (a new hash or bit choice) updates GOLDEN_FINGERPRINTS with it.
    images, _ = digits28()
    rows, spec = cancer_rows()

    def digest(image_maps: np.ndarray, table_maps: np.ndarray) -> str:
        raw = image_maps.astype("<u8").tobytes() + table_maps.astype("<u8").tobytes()
        return hashlib.sha256(raw).hexdigest()

    image_prints = fingerprints(IMAGE, images[:8])
    table_prints = fingerprints(spec, rows[:8])
    assert digest(image_prints.bitmaps, table_prints.bitmaps) == GOLDEN_FINGERPRINTS
    # The same from other batches: larger, reversed, one row at a time.
    larger = digest(
        fingerprints(IMAGE, images[:40]).bitmaps[:8], fingerprints(spec, rows[:40]).bitmaps[:8]
    )
    reversed_ = digest(
        fingerprints(IMAGE, images[7::-1]).bitmaps[::-1],
        fingerprints(spec, rows[7::-1]).bitmaps[::-1],
    )
    one_by_one = digest(
        np.concatenate([fingerprints(IMAGE, images[i : i + 1]).bitmaps for i in range(8)]),
        np.concatenate([fingerprints(spec, rows[i : i + 1]).bitmaps for i in range(8)]),
    )
    assert larger == reversed_ == one_by_one == GOLDEN_FINGERPRINTS
    assert int(image_prints.digests[0]) == int.from_bytes(
        hashlib.blake2b(images[0].tobytes(), digest_size=8).digest(), "little"
    )


@settings(PROPERTY, max_examples=60)
@given(
    values=st.lists(
        st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=60
    ),
    kind=st.sampled_from(["image", "tabular"]),
)
def test_any_finite_values_are_fingerprinted(values: list[float], kind: str) -> None:
    row = np.asarray(values, dtype=np.float32)[None, :]
    spec = (
        IMAGE
        if kind == "image"
        else FingerprintSpec.for_tabular(np.zeros(row.shape[1]), np.ones(row.shape[1]))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prints = fingerprints(spec, row)
    kept = int(prints.windows[0])
    assert 0 <= kept <= min(spec.top_k, spec.windows_per_input(row.shape[1]))
    assert (kept == 0) == (spec.windows_per_input(row.shape[1]) == 0)
    assert int(np.bitwise_count(prints.bitmaps).sum()) <= kept


def test_request_digests() -> None:
    assert request_digest(None) == 0
    assert request_digest("") == 0
    assert request_digest("r-1") == request_digest("r-1") != request_digest("r-2")
    assert 0 < request_digest("\udcff") < 2**64


# -- history rules ---------------------------------------------------------------------


def observe(
    history: QueryHistory,
    bits: np.ndarray,
    digest: int,
    when: float = 0.0,
    event_id: str = "e",
    request: int = 0,
    windows: int = 50,
) -> QueryObservation:
    return history.observe(bits, windows, digest, when, event_id, request)


def test_a_new_query_counts_the_held_queries_it_matches() -> None:
    history = QueryHistory(16, math.inf, MATCH_BITS)
    first = observe(history, block(0), 1, event_id="a")
    assert first == QueryObservation("new", held=1)
    second = observe(history, block(10), 2, 1.0, "b")
    assert second == QueryObservation(
        "new", matches=1, linked=1, matched_event_ids=("a",), first_linked_time=0.0, held=2
    )
    # 25 bits apart shares 25, half of 50: a match; 26 apart shares 24: none.
    assert observe(history, block(35), 3, 2.0, "c").matched_event_ids == ("b",)
    assert observe(history, block(500), 4, 3.0, "d") == QueryObservation("new", held=4)
    assert observe(history, block(526), 5, 4.0, "e").matches == 0
    assert len(history) == 5


def test_retries_never_count_and_are_not_held() -> None:
    history = QueryHistory(16, math.inf, MATCH_BITS)
    observe(history, block(0), 1, event_id="a", request=77)
    # The same request id: a retry, whatever its bytes.
    for digest in (1, 2, 3):
        seen = observe(history, block(5), digest, 1.0, "retry", request=77)
        assert seen == QueryObservation("retry", held=1)
    assert len(history) == 1
    later = observe(history, block(5), 9, 2.0, "b", request=78)
    assert later.outcome == "new"
    assert later.matches == 1
    assert later.matched_event_ids == ("a",)
    # A request id of 0 is none: never a retry.
    assert observe(history, block(600), 10, 3.0, "c", request=0).outcome == "new"
    assert observe(history, block(700), 11, 4.0, "d", request=0).outcome == "new"


def test_repeats_never_count_are_not_held_again_and_are_refreshed() -> None:
    history = QueryHistory(3, 100.0, MATCH_BITS)
    observe(history, block(0), 1, 0.0, "a")
    observe(history, block(300), 2, 1.0, "b")
    for when in (2.0, 50.0, 90.0):  # byte for byte the first query, however late
        assert observe(history, block(0), 1, when, "a-again") == QueryObservation("repeat", held=2)
    assert len(history) == 2
    # Refreshed in time: at 150 the first query (last seen at 90) is still held, the
    # second (sent at 1) is gone.
    seen = observe(history, block(5), 3, 150.0, "c")
    assert seen.matched_event_ids == ("a",)
    assert seen.held == 2
    assert observe(history, block(300), 2, 151.0, "b-again").outcome == "new"
    # Refreshed in order: a repeat is the newest query, the last to be evicted.
    history = QueryHistory(2, math.inf, MATCH_BITS)
    observe(history, block(0), 1, 0.0, "a")
    observe(history, block(300), 2, 1.0, "b")
    observe(history, block(0), 1, 2.0, "a-again")
    observe(history, block(600), 3, 3.0, "c")  # evicts b, not a
    assert observe(history, block(0), 1, 4.0).outcome == "repeat"
    assert observe(history, block(300), 2, 5.0).outcome == "new"


def test_repeats_move_to_the_front_of_the_matched_event_ids() -> None:
    history = QueryHistory(8, math.inf, MATCH_BITS)
    observe(history, block(0), 1, 0.0, "a")
    observe(history, block(2), 2, 1.0, "b")
    observe(history, block(0), 1, 2.0, "a-again")
    assert observe(history, block(1), 3, 3.0, "c").matched_event_ids == ("a", "b")


def test_low_information_queries_are_not_held() -> None:
    history = QueryHistory(8, math.inf, MATCH_BITS)
    observe(history, block(0), 1, event_id="a")
    images = np.zeros((1, 1, SIDE, SIDE), dtype=np.float32)
    blank = fingerprints(IMAGE, images)
    for when in (1.0, 2.0):
        seen = history.observe(blank.bitmaps[0], int(blank.windows[0]), 5, when, "blank", 0)
        assert seen == QueryObservation("low_information", held=1)
    assert observe(history, block(0), 6, 3.0, windows=MATCH_BITS - 1).outcome == "low_information"
    assert observe(history, block(0), 7, 4.0, windows=MATCH_BITS).outcome == "new"
    assert len(history) == 2


def test_a_full_history_evicts_its_oldest_query() -> None:
    history = QueryHistory(3, math.inf, MATCH_BITS)
    for i in range(3):
        observe(history, block(100 * i), i + 1, float(i), f"q{i}")
    seen = observe(history, block(1), 10, 3.0, "new")  # matches q0, which it evicts
    assert seen == QueryObservation("new", held=3)
    assert len(history) == 3
    assert observe(history, block(0), 1, 4.0, "q0-again").outcome == "new"  # q0 is gone
    assert observe(history, block(300), 30, 5.0).outcome == "new"
    assert len(history) == 3


def test_queries_older_than_the_maximum_age_are_dropped() -> None:
    history = QueryHistory(8, 60.0, MATCH_BITS)
    observe(history, block(0), 1, 1000.0, "a")
    observe(history, block(5), 2, 1030.0, "b")
    seen = observe(history, block(3), 3, 1060.0, "c")  # a is exactly 60 s old: kept
    assert seen.matched_event_ids == ("b", "a")
    seen = observe(history, block(3), 4, 1061.0, "d")
    assert seen.matched_event_ids == ("c", "b")
    assert seen.held == 3
    # Ages count from the newest event time seen, not from each query's own.
    observe(history, block(900), 5, 2000.0, "late")
    assert len(history) == 1
    assert observe(history, block(3), 6, 1500.0, "old").matches == 0


def test_a_chain_of_matches_links_queries_that_do_not_match() -> None:
    history = QueryHistory(16, math.inf, MATCH_BITS)
    a, b, c = block(0), block(20), block(40)
    assert overlap(a, b) == 30
    assert overlap(b, c) == 30
    assert overlap(a, c) == 10
    observe(history, a, 1, 10.0, "a")
    observe(history, b, 2, 11.0, "b")
    seen = observe(history, c, 3, 12.0, "c")
    assert seen.matches == 1
    assert seen.matched_event_ids == ("b",)
    assert seen.linked == 2
    assert seen.first_linked_time == 10.0
    # A query that matches only the chain's last joins the whole chain.
    seen = observe(history, block(60), 4, 13.0, "d")
    assert (seen.matches, seen.linked, seen.first_linked_time) == (1, 3, 10.0)
    # Two separate groups, joined by a query that matches one of each.
    observe(history, block(400), 5, 14.0, "x")
    observe(history, block(420), 6, 15.0, "y")
    assert observe(history, block(200), 7, 16.0, "lone").linked == 0
    bridge = bitmap([*range(80, 110), *range(440, 470)])  # 30 bits of d and of y
    seen = history.observe(bridge, 60, 8, 17.0, "bridge", 0)
    assert seen.matched_event_ids == ("y", "d")
    assert seen.linked == 6
    assert seen.first_linked_time == 10.0


def test_matched_event_ids_are_the_newest_first_and_at_most_keep_ids() -> None:
    history = QueryHistory(16, math.inf, MATCH_BITS, keep_ids=3)
    for i in range(6):
        observe(history, block(i), i + 1, float(i), f"q{i}")
    seen = observe(history, block(3), 99, 10.0, "last")
    assert seen.matches == 6
    assert seen.linked == 6
    assert seen.matched_event_ids == ("q5", "q4", "q3")
    assert (
        QueryHistory(4, math.inf, MATCH_BITS, keep_ids=0)
        .observe(block(0), 50, 1, 0.0, "a", 0)
        .matched_event_ids
        == ()
    )


def test_long_event_ids_are_cut() -> None:
    history = QueryHistory(4, math.inf, MATCH_BITS)
    long_id = "x" * (MAX_EVENT_ID_CHARS - 1) + "yz" + "w" * 5000
    observe(history, block(0), 1, event_id=long_id)
    (kept,) = observe(history, block(1), 2, 1.0).matched_event_ids
    assert kept == long_id[:MAX_EVENT_ID_CHARS]
    assert MAX_EVENT_ID_CHARS == MAX_ID_LENGTH  # any event id the contract allows is whole
    assert len(kept) == MAX_EVENT_ID_CHARS
    assert history.nbytes < 4 * (BITMAP_WORDS * 8 + 40) + 2 * MAX_EVENT_ID_CHARS
    reloaded = QueryHistory.loads(history.dumps(), 4, math.inf, MATCH_BITS)
    assert observe(reloaded, block(2), 3, 2.0).matched_event_ids[1] == kept


def test_a_history_grows_with_its_queries() -> None:
    history = QueryHistory(4096, math.inf, MATCH_BITS)
    empty = history.nbytes
    observe(history, block(0), 1)
    assert history.nbytes - empty <= 8 * (BITMAP_WORDS * 8 + 40) + 8


def test_history_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        QueryHistory(0, 60.0, MATCH_BITS)
    with pytest.raises(ValueError, match="max_age_seconds"):
        QueryHistory(4, 0.0, MATCH_BITS)
    with pytest.raises(ValueError, match="max_age_seconds"):
        QueryHistory(4, math.nan, MATCH_BITS)


# -- the history against a plain reading of its rules -----------------------------------


@dataclass
class _Held:
    seq: int
    time: float
    digest: int
    request: int
    bits: frozenset[int]
    event_id: str
    group: int


class ReferenceHistory:
    """The module's rules for a history, in plain Python, one query at a time."""

    def __init__(self, capacity: int, max_age: float, match_bits: int, keep_ids: int) -> None:
        self.capacity, self.max_age = capacity, max_age
        self.match_bits, self.keep_ids = match_bits, keep_ids
        self.held: list[_Held] = []
        self.next_seq = 0
        self.newest = -math.inf

    def observe(
        self, bits: frozenset[int], windows: int, digest: int, when: float, eid: str, request: int
    ) -> QueryObservation:
        self.newest = max(self.newest, when)
        self.held = [q for q in self.held if not q.time < self.newest - self.max_age]
        if request and any(q.request == request for q in self.held):
            return QueryObservation("retry", held=len(self.held))
        same = [q for q in self.held if q.digest == digest]
        if same:
            same[0].seq, same[0].time = self.next_seq, max(same[0].time, when)
            self.next_seq += 1
            return QueryObservation("repeat", held=len(self.held))
        if windows < self.match_bits:
            return QueryObservation("low_information", held=len(self.held))
        matched = [q for q in self.held if len(q.bits & bits) >= self.match_bits]
        joined = {q.group for q in matched}
        group = self.next_seq
        for q in self.held:
            if q.group in joined:
                q.group = group
        if len(self.held) == self.capacity:
            oldest = min(self.held, key=lambda q: q.seq)
            self.held.remove(oldest)
            matched = [q for q in matched if q is not oldest]
        members = [q for q in self.held if q.group == group]
        self.held.append(
            _Held(self.next_seq, when, digest, request, bits, eid[:MAX_EVENT_ID_CHARS], group)
        )
        self.next_seq += 1
        newest_first = sorted(matched, key=lambda q: -q.seq)
        return QueryObservation(
            "new",
            matches=len(matched),
            linked=len(members),
            matched_event_ids=tuple(q.event_id for q in newest_first[: self.keep_ids]),
            first_linked_time=min((q.time for q in members), default=None),
            held=len(self.held),
        )


@dataclass(frozen=True)
class Query:
    start: int
    """Its bits: ``block(start)``."""
    windows: int
    digest: int
    when: float
    request: int

    def observe(self, history: QueryHistory, number: int) -> QueryObservation:
        return history.observe(
            block(self.start), self.windows, self.digest, self.when, f"e{number}", self.request
        )

    def observe_reference(self, reference: ReferenceHistory, number: int) -> QueryObservation:
        bits = frozenset(range(self.start, self.start + 50))
        return reference.observe(
            bits, self.windows, self.digest, self.when, f"e{number}", self.request
        )


def query_sequences(in_order: bool) -> st.SearchStrategy[list[Query]]:
    """Queries from a small pool of bit blocks (some chained), digests and request ids,
    so that matches, retries, repeats, evictions and expiry all happen; event times in
    order or not."""
    query = st.builds(
        Query,
        start=st.integers(0, 12).map(lambda i: 11 * i),
        windows=st.sampled_from([50, 50, 50, 50, 50, 50, 3]),
        digest=st.one_of(st.integers(1, 10), st.integers(11, 60)),  # some repeated, some not
        when=st.sampled_from([0.0, 0.0, 1.0, 7.0, 25.0]),
        request=st.sampled_from([0, 0, 0, 1, 2, 3]),
    )

    def timed(queries: list[Query]) -> list[Query]:
        if not in_order:
            return queries
        clock = 0.0
        out = []
        for q in queries:
            clock += q.when
            out.append(replace(q, when=clock))
        return out

    return st.lists(query, max_size=48).map(timed)


@settings(PROPERTY, max_examples=200)
@given(
    queries=query_sequences(in_order=False),
    capacity=st.one_of(st.integers(1, 6), st.integers(7, 24)),  # 8 slots, then 16, …
    max_age=st.sampled_from([math.inf, 10.0]),
    keep_ids=st.integers(0, 3),
)
def test_a_history_follows_its_rules(
    queries: list[Query], capacity: int, max_age: float, keep_ids: int
) -> None:
    history = QueryHistory(capacity, max_age, MATCH_BITS, keep_ids=keep_ids)
    reference = ReferenceHistory(capacity, max_age, MATCH_BITS, keep_ids)
    for number, query in enumerate(queries):
        seen = query.observe(history, number)
        assert seen == query.observe_reference(reference, number)
        event(seen.outcome)
        event(f"linked {min(seen.linked, 3)}+")
        assert len(history) == len(reference.held) <= capacity


@pytest.mark.parametrize(
    ("capacity", "max_age", "seed"),
    [(20, math.inf, 0), (20, 40.0, 1), (50, 25.0, 2), (100, 60.0, 3), (7, 15.0, 4)],
)
def test_a_long_history_follows_its_rules(capacity: int, max_age: float, seed: int) -> None:
    # Hundreds of queries: the arrays grow (8 slots, 16, 32 …), fill, evict, expire many
    # at once and reuse freed slots; groups form in nine separate clusters of blocks and
    # join; event times mostly in order, some late.
    rng = np.random.default_rng(seed)
    history = QueryHistory(capacity, max_age, MATCH_BITS, keep_ids=4)
    reference = ReferenceHistory(capacity, max_age, MATCH_BITS, 4)
    clock, most_held, expired = 0.0, 0, 0
    for number in range(600):
        clock += float(
            rng.choice([0.0, 0.1, 1.0, 1.0, 3.0, 90.0], p=[0.2, 0.3, 0.3, 0.1, 0.08, 0.02])
        )
        query = Query(
            start=int(rng.integers(0, 9)) * 100 + int(rng.integers(0, 4)) * 11,
            windows=50 if rng.random() > 0.05 else 3,
            digest=int(rng.integers(1, 400)),
            when=clock - float(rng.choice([0.0, 0.0, 0.0, 5.0, 50.0])),
            request=int(rng.integers(1, 30)) if rng.random() < 0.3 else 0,
        )
        before = len(history)
        seen = query.observe(history, number)
        assert seen == query.observe_reference(reference, number)
        assert len(history) == len(reference.held) <= capacity
        expired += len(history) < before
        most_held = max(most_held, len(history))
    reloaded = QueryHistory.loads(history.dumps(), capacity, max_age, MATCH_BITS, keep_ids=4)
    assert reloaded.dumps() == history.dumps()
    assert most_held == capacity if math.isinf(max_age) else most_held > min(8, capacity - 1)
    assert math.isinf(max_age) or expired > 0


# -- stored histories ------------------------------------------------------------------


@settings(PROPERTY, max_examples=150)
@given(
    queries=query_sequences(in_order=True),
    split=st.integers(0, 40),
    capacity=st.one_of(st.integers(1, 6), st.integers(7, 24)),  # 8 slots, then 16, …
    max_age=st.sampled_from([math.inf, 10.0]),
)
def test_a_reloaded_history_continues_as_the_original(
    queries: list[Query], split: int, capacity: int, max_age: float
) -> None:
    original = QueryHistory(capacity, max_age, MATCH_BITS)
    for number, query in enumerate(queries[:split]):
        query.observe(original, number)
    stored = original.dumps()
    reloaded = QueryHistory.loads(stored, capacity, max_age, MATCH_BITS)
    assert len(reloaded) == len(original)
    assert reloaded.nbytes <= original.nbytes
    assert reloaded.dumps() == stored
    for number, query in enumerate(queries[split:], start=split):
        assert query.observe(reloaded, number) == query.observe(original, number)
    assert reloaded.dumps() == original.dumps()


def test_a_reloaded_history_ages_queries_from_the_newest_event_time_seen() -> None:
    # The newest event time seen is stored, even when the event that brought it was not
    # held (a retry here, a low-information query or a query since evicted elsewhere).
    original = QueryHistory(8, 10.0, MATCH_BITS)
    observe(original, block(0), 1, 0.0, "q1", request=11)
    assert observe(original, block(0), 99, 9.0, "q1-retry", request=11).outcome == "retry"
    observe(original, block(1), 2, -5.0, "late")  # older than 9 - 10: dropped next time
    assert original.newest == 9.0
    reloaded = QueryHistory.loads(original.dumps(), 8, 10.0, MATCH_BITS)
    assert reloaded.newest == 9.0
    expected = observe(original, block(2), 3, 0.5, "q3")
    assert expected.matched_event_ids == ("q1",)
    assert observe(reloaded, block(2), 3, 0.5, "q3") == expected
    assert reloaded.dumps() == original.dumps()

    # A low-information query's time counts too, and so does that of a query since
    # evicted: a late query (15 s, 15 s older than the newest) is dropped by the next.
    for capacity, newest_kind in ((8, "low-information"), (1, "evicted")):
        original = QueryHistory(capacity, 10.0, MATCH_BITS)
        windows = 1 if newest_kind == "low-information" else 50
        observe(original, block(500), 1, 30.0, newest_kind, windows=windows)
        observe(original, block(0), 2, 15.0, "late")
        reloaded = QueryHistory.loads(original.dumps(), capacity, 10.0, MATCH_BITS)
        assert (reloaded.newest, len(reloaded)) == (30.0, 1)
        for history in (original, reloaded):
            assert observe(history, block(1), 3, 16.0, "near-late") == QueryObservation(
                "new", held=1
            )

    # An empty history that has seen nothing keeps -inf.
    empty = QueryHistory(4, 60.0, MATCH_BITS).dumps()
    assert QueryHistory.loads(empty, 4, 60.0, MATCH_BITS).newest == -math.inf


def test_loading_with_a_smaller_capacity_keeps_the_newest_queries() -> None:
    history = QueryHistory(16, math.inf, MATCH_BITS)
    for i in range(10):
        observe(history, block(60 * i), i + 1, float(i), f"q{i}")
    observe(history, block(0), 1, 10.0, "q0-again")  # q0 is now the newest
    stored = history.dumps()
    newest = {1, 10, 9, 8}
    for digest in range(1, 11):
        reloaded = QueryHistory.loads(stored, 4, math.inf, MATCH_BITS)
        assert len(reloaded) == 4
        expected = "repeat" if digest in newest else "new"
        assert observe(reloaded, block(900), digest, 11.0).outcome == expected
    reloaded = QueryHistory.loads(stored, 4, math.inf, MATCH_BITS)
    seen = observe(reloaded, block(2), 50, 11.0, "near-q0")
    assert seen.matched_event_ids == ("q0",)
    assert seen.held == 4
    # A larger capacity keeps them all, and grows.
    reloaded = QueryHistory.loads(stored, 64, math.inf, MATCH_BITS)
    assert len(reloaded) == 10
    for i in range(20):
        observe(reloaded, block(900), 100 + i, 12.0 + i)
    assert len(reloaded) == 30


def test_dumps_within_max_bytes_keeps_the_newest_queries_that_fit() -> None:
    # Event ids of every length up to the longest, some of them in multi-byte UTF-8 (the
    # bytes count, not the characters); repeats refresh older queries, so that the
    # newest are not the last sent.
    history = QueryHistory(64, math.inf, MATCH_BITS)
    arrival: list[str] = []  # event ids, oldest first, as the history orders them
    lengths = [0, 1, 36, 120, MAX_EVENT_ID_CHARS, 7]
    for i in range(48):
        event_id = (f"{i}-" + "é😀x"[i % 3] * lengths[i % len(lengths)])[:MAX_EVENT_ID_CHARS]
        assert observe(history, block(13 * i), i + 1, float(i), event_id).outcome == "new"
        arrival.append(event_id)
        if i % 5 == 4:  # a repeat of an earlier query makes it the newest
            earlier = i // 2
            assert observe(history, block(13 * earlier), earlier + 1, i + 0.5).outcome == "repeat"
            arrival.append(
                arrival.pop(arrival.index(next(e for e in arrival if e.startswith(f"{earlier}-"))))
            )
    full = history.dumps()
    assert history.dumps(None) == full
    assert _stored_fields(full)[9] == arrival
    entry = {e: 5 * 8 + BITMAP_WORDS * 8 + 5 + len(e.encode()) for e in arrival}
    entry["e" * MAX_EVENT_ID_CHARS] = 5 * 8 + BITMAP_WORDS * 8 + 5 + MAX_EVENT_ID_CHARS
    kept_before = 0
    for max_bytes in [300, 400, 1_000, 4_096, 10_000, 20_000, len(full), len(full) + 500]:
        data = history.dumps(max_bytes)
        assert len(data) <= max_bytes
        fields = _stored_fields(data)
        kept = len(fields[9])
        assert kept >= kept_before  # more room never keeps fewer
        kept_before = kept
        # The newest queries, oldest first, as a history of them would store them.
        assert fields[9] == arrival[len(arrival) - kept :]
        seqs = np.frombuffer(fields[3], dtype="<i8")
        assert list(seqs) == sorted(seqs)
        assert fields[1] == history.next_seq
        assert fields[2] == history.newest == 47.0
        if kept < len(arrival):
            # The next older query would not have fit (with the room dumps keeps for the
            # framing: 256 bytes, and 5 per query).
            older = arrival[len(arrival) - kept - 1]
            assert max_bytes - len(data) < 256 + 5 * kept + entry[older]
        reloaded = QueryHistory.loads(data, 64, math.inf, MATCH_BITS)
        assert len(reloaded) == kept
        assert reloaded.newest == history.newest
        assert reloaded.dumps() == data
    assert kept_before == len(arrival)
    assert history.dumps(len(full) + 256 + 5 * len(arrival)) == full
    # A history of the default size with the longest event ids (170 KiB) within 64 KiB:
    # its newest queries.
    big = QueryHistory(256, math.inf, MATCH_BITS)
    for i in range(256):
        observe(big, block(i % 900), i + 1, float(i), f"{i:03d}" + "e" * (MAX_EVENT_ID_CHARS - 3))
    data = big.dumps(2**16)
    assert len(big.dumps()) > 2**16 >= len(data)
    ids = _stored_fields(data)[9]
    assert 0 < len(ids) < 256
    assert 2**16 - len(data) < 256 + 5 * len(ids) + entry["e" * MAX_EVENT_ID_CHARS]
    assert ids[-1].startswith("255")
    assert ids[0].startswith(f"{256 - len(ids):03d}")


def test_an_empty_history_round_trips() -> None:
    stored = QueryHistory(4, 60.0, MATCH_BITS).dumps()
    reloaded = QueryHistory.loads(stored, 4, 60.0, MATCH_BITS)
    assert len(reloaded) == 0
    assert observe(reloaded, block(0), 1, 5.0).outcome == "new"


@pytest.mark.parametrize("next_seq", [0, 1, 10**6, 2**62 - 3])
def test_a_loaded_history_holds_and_matches_new_queries(next_seq: int) -> None:
    stored = _stored_fields(_EMPTY)
    stored[1] = next_seq
    history = QueryHistory.loads(_MAGIC + msgspec.msgpack.encode(stored), 4, math.inf, MATCH_BITS)
    assert history.next_seq == next_seq
    assert observe(history, block(0), 1, 0.0, "a").held == 1
    assert observe(history, block(1), 2, 1.0, "b").matched_event_ids == ("a",)
    assert history.next_seq == next_seq + 2
    reloaded = QueryHistory.loads(history.dumps(), 4, math.inf, MATCH_BITS)
    assert len(reloaded) == 2
    assert observe(reloaded, block(2), 3, 2.0, "c").matched_event_ids == ("b", "a")


@pytest.mark.parametrize("next_seq", [-1, -5, -(2**63), 2**62, 2**62 + 1, 2**63 - 1, 2**64 - 1])
def test_a_stored_sequence_number_outside_its_range_is_refused(next_seq: int) -> None:
    # Beyond 2**62 the sequence numbers would soon overflow int64 (observe() then raised
    # OverflowError); below 0 every new query would be numbered as a free slot.
    for data in (_EMPTY, _VALID[2]):
        stored = _stored_fields(data)
        stored[1] = next_seq
        with pytest.raises(QueryStateError, match="impossible sequence number"):
            QueryHistory.loads(_MAGIC + msgspec.msgpack.encode(stored), 4, math.inf, MATCH_BITS)


@pytest.mark.parametrize(
    ("newest", "refused"),
    [
        (-math.inf, False),  # an empty history that has seen nothing
        (-1e300, False),
        (0.0, False),
        (1e12, False),
        (math.inf, True),
        (math.nan, True),
    ],
)
def test_a_stored_newest_time_is_checked(newest: float, refused: bool) -> None:
    stored = _stored_fields(_EMPTY)
    stored[2] = newest
    data = _MAGIC + msgspec.msgpack.encode(stored)
    if refused:
        with pytest.raises(QueryStateError, match="impossible"):
            QueryHistory.loads(data, 4, 60.0, MATCH_BITS)
        return
    history = QueryHistory.loads(data, 4, 60.0, MATCH_BITS)
    assert history.newest == newest
    # Ages count from the stored time: a query 61 s older is dropped at once.
    if abs(newest) < 1e15:
        observe(history, block(0), 1, newest - 61.0, "old")
        assert observe(history, block(1), 2, newest - 61.0, "old-2").matches == 0
        assert observe(history, block(2), 3, newest, "now").matches == 0
        assert observe(history, block(3), 4, newest, "now-2").matched_event_ids == ("now",)


def _history(size: int, capacity: int = 8) -> bytes:
    history = QueryHistory(capacity, math.inf, MATCH_BITS)
    for i in range(size):
        observe(history, block(7 * i), i + 1, float(i), f"event-{i}", request=100 + i)
    return history.dumps()


_EMPTY = _history(0)
_VALID = [_EMPTY, _history(1), _history(5), _history(12, capacity=8)]
_MAGIC = _VALID[0][: _VALID[0].index(b"\n") + 1]
_FIELDS = 10
"""format, next_seq, newest, seqs, times, digests, requests, bitmaps, groups, event_ids"""


def _stored_fields(data: bytes) -> list[Any]:
    fields: list[Any] = msgspec.msgpack.decode(data[len(_MAGIC) :])
    assert isinstance(fields, list)
    assert len(fields) == _FIELDS
    return fields


_INT64 = st.integers(-(2**63), 2**63 - 1)
_HOSTILE_INTS = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
)
_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
)


@st.composite
def _packed(draw: st.DrawFn, n: int, width: int) -> bytes:
    """What a packed column of a history of ``n`` queries might be made to hold."""
    count = draw(st.sampled_from([n, n, n - 1, n + 1, 0, 2 * n + 3]))
    count = max(0, count) * width
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(min_size=count * 8, max_size=count * 8))
    if kind == 1:
        values = draw(st.lists(_INT64, min_size=count, max_size=count))
        return np.asarray(values, dtype="<i8").tobytes()
    if kind == 2:
        floats = draw(st.lists(_FLOATS, min_size=count, max_size=count))
        return np.asarray(floats, dtype="<f8").tobytes()
    return draw(st.binary(max_size=count * 8 + 9))


@st.composite
def hostile_records(draw: st.DrawFn) -> bytes:
    """A stored history, msgpack-decoded, with fields replaced by values of the right or
    wrong type, length, sign and size; fields added or removed; encoded again."""
    fields = _stored_fields(draw(st.sampled_from(_VALID)))
    n = len(fields[9])
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, _FIELDS - 1))
        if index in (0, 1, 2):
            fields[index] = draw(st.one_of(_HOSTILE_INTS, _FLOATS, st.text(max_size=4)))
        elif index == 9:
            fields[index] = draw(
                st.one_of(
                    st.lists(st.text(max_size=8), min_size=n, max_size=n),
                    st.lists(st.text(max_size=8), max_size=n + 3),
                    st.lists(
                        st.integers(MAX_EVENT_ID_CHARS, MAX_EVENT_ID_CHARS + 2).map("e".__mul__),
                        min_size=n,
                        max_size=n,
                    ),
                    st.lists(st.one_of(st.integers(), st.binary(max_size=3)), max_size=n),
                    st.just(n * 10_000 + 1_000).map(lambda size: ["x"] * size),
                    st.binary(max_size=8),
                )
            )
        else:
            width = BITMAP_WORDS if index == 7 else 1
            kind = draw(st.integers(0, 4))
            if kind == 3:
                fields[index] = draw(_HOSTILE_INTS)
            elif kind == 4:
                fields[index] = draw(st.text(max_size=4))
            else:
                fields[index] = draw(_packed(n, width))
    cut = draw(st.integers(0, 19))
    if cut == 0:
        fields = fields[: draw(st.integers(0, _FIELDS - 1))]
    elif cut == 1:
        fields = [*fields, draw(_HOSTILE_INTS)]
    elif cut == 2:
        return _MAGIC + msgspec.msgpack.encode(dict(enumerate(fields)))
    return _MAGIC + msgspec.msgpack.encode(fields)


_SEQS = st.one_of(st.integers(-2, 12), _INT64)


@st.composite
def consistent_records(draw: st.DrawFn) -> bytes:
    """A stored history whose columns all hold ``n`` queries, with any values in them:
    negative, repeated or out-of-range numbers, non-finite times, any digests and bits,
    event ids of any length."""
    n = draw(st.integers(0, 10))
    uint64 = st.integers(0, 2**64 - 1)
    if draw(st.booleans()):  # numbers that pass the checks, in any order
        seqs = draw(st.lists(st.integers(0, 20), min_size=n, max_size=n, unique=True))
        next_seq = max(seqs, default=0) + draw(st.integers(1, 3))
        groups = draw(st.lists(st.integers(0, next_seq - 1), min_size=n, max_size=n))
        times = draw(st.lists(st.floats(-1e12, 1e12), min_size=n, max_size=n))
        # The newest time seen: at or after every held query's, now and then before.
        newest = max(times, default=-math.inf) + draw(
            st.sampled_from([0.0, 0.0, 1.0, 1e6, -1.0, math.inf, math.nan])
        )
        digests = st.one_of(st.integers(0, 3), uint64)
    else:
        seqs = draw(st.lists(_SEQS, min_size=n, max_size=n))
        next_seq = draw(st.one_of(st.integers(-2, 14), _HOSTILE_INTS))
        groups = draw(st.lists(_SEQS, min_size=n, max_size=n))
        times = draw(st.lists(_FLOATS, min_size=n, max_size=n))
        newest = draw(_FLOATS)
        digests = uint64
    fields = [
        1,
        next_seq,
        newest,
        np.asarray(seqs, dtype="<i8").tobytes(),
        np.asarray(times, dtype="<f8").tobytes(),
        np.asarray(draw(st.lists(digests, min_size=n, max_size=n)), dtype="<u8").tobytes(),
        np.asarray(draw(st.lists(digests, min_size=n, max_size=n)), dtype="<u8").tobytes(),
        draw(st.binary(min_size=n * BITMAP_WORDS * 8, max_size=n * BITMAP_WORDS * 8)),
        np.asarray(groups, dtype="<i8").tobytes(),
        draw(
            st.lists(
                st.one_of(
                    st.text(max_size=4),
                    st.integers(MAX_EVENT_ID_CHARS - 2, MAX_EVENT_ID_CHARS + 2).map("e".__mul__),
                ),
                min_size=n,
                max_size=n,
            )
        ),
    ]
    return _MAGIC + msgspec.msgpack.encode(fields)


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytes:
    """A valid stored history cut short, with bits flipped, or with bytes spliced in."""
    data = bytearray(draw(st.sampled_from(_VALID)))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(len(_MAGIC) if kind != 3 else 0, len(data) - 1))
        if kind in (1, 3):
            data[at] ^= 1 << draw(st.integers(0, 7))
        else:
            data[at:at] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=6),
                    # msgpack headers that claim huge lengths: bin32, str32, array32, map32.
                    st.sampled_from([b"\xc6", b"\xdb", b"\xdd", b"\xdf"]).map(
                        lambda head: head + b"\x7f\xff\xff\xff"
                    ),
                )
            )
    return bytes(data)


def _loaded(data: bytes, capacity: int) -> QueryHistory | QueryStateError:
    """``loads`` of ``data``, or the QueryStateError it raises, within the memory bound;
    anything else it raises propagates."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        try:
            result: QueryHistory | QueryStateError = QueryHistory.loads(
                data, capacity, 60.0, MATCH_BITS
            )
        except QueryStateError as error:
            result = error
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    bound = MEMORY_BOUND_BYTES + MEMORY_PER_BYTE * len(data)
    assert peak - before <= bound, f"loading allocated {peak - before} bytes (bound {bound})"
    return result


def _check_loaded(result: QueryHistory | QueryStateError, capacity: int) -> None:
    if isinstance(result, QueryStateError):
        assert str(result), "a refusal without a reason"
        event(f"refused: {str(result).split(':')[0][:40]}")
        return
    event(f"loaded, {len(result)} queries")
    assert len(result) <= capacity
    # What loads takes is what a history could hold (and observe() cannot overflow).
    assert 0 <= result.next_seq < 2**62
    assert not math.isnan(result.newest)
    assert result.newest < math.inf
    again = QueryHistory.loads(result.dumps(), capacity, 60.0, MATCH_BITS)
    assert again.dumps() == result.dumps()
    assert again.newest == result.newest
    # A loaded history takes new queries.
    for i, start in enumerate((0, 5, 0)):
        seen = observe(result, block(start), 2**64 - 1 - i, 1e9 + i, f"probe-{i}", request=i)
        assert seen.held <= capacity
    assert len(QueryHistory.loads(result.dumps(), capacity, 60.0, MATCH_BITS)) == len(result)


@settings(PROPERTY, max_examples=300)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda raw: _MAGIC + raw),
        damaged_bytes(),
        hostile_records(),
        consistent_records(),
    ),
    capacity=st.integers(1, 16),
)
def test_loading_hostile_bytes_raises_only_query_state_errors(data: bytes, capacity: int) -> None:
    _check_loaded(_loaded(data, capacity), capacity)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.__setitem__(0, 2), "format 2"),
        (lambda f: f.__setitem__(3, f[3][:-8]), "do not hold"),
        (lambda f: f.__setitem__(7, f[7] + b"\0" * 8), "do not hold"),
        (lambda f: f.__setitem__(9, f[9][:-1]), "do not hold"),
        (lambda f: f.__setitem__(3, np.array([-1] * 5, "<i8").tobytes()), "impossible"),
        (lambda f: f.__setitem__(3, np.array([4] * 5, "<i8").tobytes()), "impossible"),
        (lambda f: f.__setitem__(1, 3), "impossible"),
        (lambda f: f.__setitem__(1, -1), "impossible"),
        (lambda f: f.__setitem__(1, 2**62), "impossible"),
        (lambda f: f.__setitem__(2, 3.5), "impossible"),  # before the held queries' newest
        (lambda f: f.__setitem__(2, -math.inf), "impossible"),
        (lambda f: f.__setitem__(2, math.inf), "impossible"),
        (lambda f: f.__setitem__(2, math.nan), "impossible"),
        (lambda f: f.__setitem__(2, "4.0"), "unreadable"),
        (lambda f: f.__setitem__(8, np.array([99] * 5, "<i8").tobytes()), "impossible"),
        (lambda f: f.__setitem__(4, np.array([math.inf] * 5, "<f8").tobytes()), "impossible"),
        (lambda f: f.__setitem__(9, ["e" * (MAX_EVENT_ID_CHARS + 1)] * 5), "over-long"),
        (lambda f: f.__setitem__(9, [1, 2, 3, 4, 5]), "unreadable"),
        (lambda f: f.append(0), "unreadable"),
        (lambda f: f.pop(2), "unreadable"),  # the layout before the newest time was stored
    ],
)
def test_inconsistent_stored_histories_are_refused_with_a_reason(
    change: Callable[[list[Any]], None], message: str
) -> None:
    fields = _stored_fields(_VALID[2])
    assert fields[2] == 4.0  # the newest of its five queries, sent at 0 … 4
    assert fields[1:2] == [5]
    change(fields)
    with pytest.raises(QueryStateError, match=message):
        QueryHistory.loads(_MAGIC + msgspec.msgpack.encode(fields), 8, 60.0, MATCH_BITS)
    with pytest.raises(QueryStateError, match="not a query history"):
        QueryHistory.loads(b"", 8, 60.0, MATCH_BITS)


# -- settings --------------------------------------------------------------------------


def _tabular_spec() -> FingerprintSpec:
    return FingerprintSpec.for_tabular(np.array([1.0, -2.0, 3.5]), np.array([0.5, 0.0, 2.0]))


def test_fingerprint_specs_round_trip() -> None:
    for spec in (
        IMAGE,
        FingerprintSpec.for_image((-1.0, 1.0), levels=16),
        _tabular_spec(),
        FingerprintSpec("image", 0.1, 4, top_k=20, match_fraction=0.9, low=-0.5),
    ):
        content = json.loads(json.dumps(spec.to_dict()))
        assert FingerprintSpec.from_dict(content) == spec
    tabular = _tabular_spec()
    assert tabular.scale == (0.5, 1.0, 2.0)  # a feature that never varied gets a unit scale
    assert tabular.to_dict()["low"] == 0.0  # written for every kind
    assert FingerprintSpec("tabular", 0.5, 1, low=-2.0).to_dict()["low"] == -2.0
    assert IMAGE.to_dict()["bitmap_bits"] == BITMAP_BITS
    assert IMAGE.step == 0.125
    assert IMAGE.window == 10
    assert IMAGE.top_k == 50


def test_query_settings_round_trip() -> None:
    settings_ = QuerySettings(
        _tabular_spec(),
        min_linked=12,
        history_size=64,
        benign_events=500,
        benign_max_linked=10,
        benign_max_matches=4,
    )
    content = json.loads(json.dumps(settings_.to_dict()))
    assert QuerySettings.from_dict(content) == settings_
    assert QuerySettings.from_dict({"fingerprint": IMAGE.to_dict()}) == QuerySettings(IMAGE)
    assert QuerySettings.default_for("image", (0.0, 255.0)) == QuerySettings(
        FingerprintSpec.for_image((0.0, 255.0))
    )
    assert QuerySettings.default_for("tabular", (0.0, 1.0)) is None


_SPEC = IMAGE.to_dict()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2], "must be an object"),
        ({**_SPEC, "colour": 1}, "unknown fields: colour"),
        ({**_SPEC, "bitmap_bits": 2048}, "bitmap_bits must be 1024"),
        ({k: v for k, v in _SPEC.items() if k != "kind"}, "lacks the field 'kind'"),
        ({k: v for k, v in _SPEC.items() if k != "step"}, "lacks the field 'step'"),
        ({k: v for k, v in _SPEC.items() if k != "window"}, "lacks the field 'window'"),
        ({**_SPEC, "kind": "audio"}, "image or tabular"),
        ({**_SPEC, "kind": ["image"]}, "image or tabular"),
        ({**_SPEC, "step": 0}, "step must be a positive number"),
        ({**_SPEC, "step": -0.5}, "step must be a positive number"),
        ({**_SPEC, "step": "NaN"}, "step must be a positive number"),
        ({**_SPEC, "step": "wide"}, "could not convert"),
        ({**_SPEC, "step": [1]}, "malformed field"),
        ({**_SPEC, "step": None}, "malformed field"),
        ({**_SPEC, "window": 0}, "window must be 1 to 256"),
        ({**_SPEC, "window": 257}, "window must be 1 to 256"),
        ({**_SPEC, "window": 10.0}, "window must be an integer"),
        ({**_SPEC, "window": True}, "window must be an integer"),
        ({**_SPEC, "window": "10"}, "window must be an integer"),
        ({**_SPEC, "top_k": 0}, "top_k must be 1 to 256"),
        ({**_SPEC, "top_k": 10**6}, "top_k must be 1 to 256"),
        ({**_SPEC, "match_fraction": 0}, "match_fraction must be in"),
        ({**_SPEC, "match_fraction": 1.01}, "match_fraction must be in"),
        ({**_SPEC, "low": "inf"}, "low must be finite"),
        ({**_SPEC, "center": [0.0]}, "given together"),
        ({**_SPEC, "center": [0.0], "scale": [1.0, 1.0]}, "differ in length"),
        ({**_SPEC, "center": [0.0], "scale": [0.0]}, "scale positive"),
        ({**_SPEC, "center": ["nan"], "scale": [1.0]}, "center must be finite"),
        ({**_SPEC, "center": 5, "scale": 5}, "center must be a list of numbers"),
        ({**_SPEC, "center": "123", "scale": "111"}, "center must be a list of numbers"),
        ({**_SPEC, "center": [1.0], "scale": "1"}, "scale must be a list of numbers"),
        ({**_SPEC, "center": {"a": 1.0}, "scale": [1.0]}, "center must be a list of numbers"),
        ({**_SPEC, "center": [10**400], "scale": [1.0]}, "malformed field"),
        ({**_SPEC, "center": [[1.0]], "scale": [1.0]}, "malformed field"),
    ],
)
def test_malformed_fingerprint_specs_are_refused(content: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FingerprintSpec.from_dict(content)


def test_a_tabular_spec_without_center_keeps_its_origin() -> None:
    spec = FingerprintSpec("tabular", step=0.5, window=1, low=0.25)
    content = json.loads(json.dumps(spec.to_dict()))
    assert content["low"] == 0.25
    again = FingerprintSpec.from_dict(content)
    assert again == spec
    rows = np.linspace(-3, 3, 24, dtype=np.float32).reshape(4, 6)
    _assert_same_rows(fingerprints(again, rows), fingerprints(spec, rows))
    # The origin matters: another one fingerprints these rows differently.
    moved = fingerprints(replace(spec, low=0.0), rows)
    assert not np.array_equal(moved.bitmaps, fingerprints(spec, rows).bitmaps)


def test_a_center_given_as_a_string_is_refused() -> None:
    # Read character by character, "123" would be taken for [1, 2, 3].
    content = {**_tabular_spec().to_dict(), "center": "123", "scale": "111"}
    with pytest.raises(ValueError, match="center must be a list"):
        FingerprintSpec.from_dict(content)
    with pytest.raises(ValueError, match="center must be a list"):
        QuerySettings.from_dict({"fingerprint": content})


@pytest.mark.parametrize("field", ["step", "match_fraction", "low"])
def test_an_integer_too_large_for_a_float_is_refused(field: str) -> None:
    # float(10**400) raises OverflowError, not ValueError: it is turned into one.
    with pytest.raises(ValueError, match="malformed field: int too large"):
        FingerprintSpec.from_dict({**_SPEC, field: 10**400})
    with pytest.raises(ValueError, match="malformed field"):
        QuerySettings.from_dict({"fingerprint": {**_SPEC, field: -(10**400)}})


def test_a_detector_file_with_an_integer_too_large_for_a_float_is_refused(
    tmp_path: Path,
) -> None:
    data = load_digits_data(seed=0)
    model = tmp_path / "cnn.onnx"
    onnx.save(random_cnn(channels=1, side=8, classes=3), model)
    config = calibrate_detector(model, _batches(data.calibration_x[:100]), device="cpu")
    path = tmp_path / "detector.json"
    config.save(path)
    saved = json.loads(path.read_text())
    for field in ("step", "match_fraction", "low"):
        content = json.loads(json.dumps(saved))
        content["query_attacks"]["fingerprint"][field] = 10**400
        path.write_text(json.dumps(content))
        with pytest.raises(DetectorFileError, match="malformed field"):
            DetectorConfig.load(path)


_SETTINGS = QuerySettings(IMAGE).to_dict()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("min_linked: 3", "must be an object"),
        ({**_SETTINGS, "extra": 1}, "unknown fields: extra"),
        ({k: v for k, v in _SETTINGS.items() if k != "fingerprint"}, "lacks the field"),
        ({**_SETTINGS, "fingerprint": {"kind": "image"}}, "lacks the field 'step'"),
        ({**_SETTINGS, "fingerprint": []}, "fingerprint must be an object"),
        ({**_SETTINGS, "min_linked": 0}, "min_linked must be at least 1"),
        ({**_SETTINGS, "min_linked": 2.5}, "min_linked must be an integer"),
        ({**_SETTINGS, "history_size": 0}, "history_size must be at least 1"),
        ({**_SETTINGS, "history_size": "256"}, "history_size must be an integer"),
        ({**_SETTINGS, "benign": [1]}, "benign must be an object"),
        ({**_SETTINGS, "benign": {"events": None}}, "benign.events must be an integer"),
        ({**_SETTINGS, "benign": {"max_linked": 1.5}}, "benign.max_linked must be an integer"),
        ({**_SETTINGS, "benign": {"max_matches": "2"}}, "benign.max_matches must be an integer"),
    ],
)
def test_malformed_query_settings_are_refused(content: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuerySettings.from_dict(content)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(PROPERTY, max_examples=300)
@given(
    field=st.sampled_from([*_tabular_spec().to_dict(), "low", "fingerprint", "min_linked"]),
    value=_JSON,
    nested=st.booleans(),
)
def test_settings_with_any_field_replaced_parse_or_raise_value_errors(
    field: str, value: Any, nested: bool
) -> None:
    content: dict[str, Any] = QuerySettings(_tabular_spec()).to_dict()
    if nested or field in ("fingerprint", "min_linked"):
        content[field] = value
    else:
        content["fingerprint"] = {**content["fingerprint"], field: value}
    try:
        parsed = QuerySettings.from_dict(content)
    except ValueError as error:
        refusal = str(error)
    else:
        # Written and read again, the settings say the same and fingerprint alike.
        again = QuerySettings.from_dict(json.loads(json.dumps(parsed.to_dict())))
        assert again.to_dict() == parsed.to_dict()
        features = len(parsed.fingerprint.center or ()) or 3
        rows = np.random.default_rng(0).normal(0.0, 3.0, (4, features)).astype(np.float32)
        _assert_same_rows(
            fingerprints(again.fingerprint, rows), fingerprints(parsed.fingerprint, rows)
        )
        return
    assert refusal, "a refusal without a reason"


# -- calibration and the detector file -------------------------------------------------


def test_the_calibrator_sets_the_threshold_above_the_benign_groups() -> None:
    images, _ = digits28()
    distinct = images[:120]
    calibrator = QueryCalibrator(IMAGE, ELEMENTS)
    for start in range(0, len(distinct), 64):
        calibrator.update(distinct[start : start + 64])
    plain = calibrator.result()
    assert plain.benign_events == 120
    assert plain.benign_max_linked < DEFAULT_MIN_LINKED
    assert plain.min_linked == DEFAULT_MIN_LINKED
    assert plain.history_size == 256

    # Thirty near-copies of one digit among them (a client that sends one scene).
    rng = np.random.default_rng(0)
    copies = np.repeat(images[200:201], 30, axis=0).reshape(30, -1)
    for row in copies:
        pixels = rng.choice(ELEMENTS, 3, replace=False)
        row[pixels] = np.clip(row[pixels] + rng.uniform(0.05, 0.45, 3) * IMAGE.step, 0, 1)
    mixed = np.concatenate([distinct[:60], copies.reshape(30, 1, SIDE, SIDE), distinct[60:]])
    calibrator = QueryCalibrator(IMAGE, ELEMENTS)
    calibrator.update(mixed)
    crowded = calibrator.result()
    assert crowded.benign_events == 150
    assert crowded.benign_max_linked >= 29
    assert crowded.benign_max_matches >= 20
    assert crowded.min_linked == crowded.benign_max_linked + 2 > DEFAULT_MIN_LINKED
    # The same events in other batches give the same settings.
    again = QueryCalibrator(IMAGE, ELEMENTS)
    for start in range(0, len(mixed), 7):
        again.update(mixed[start : start + 7])
    assert again.result() == crowded


def _batches(x: np.ndarray, size: int = 64) -> Callable[[], Iterator[np.ndarray]]:
    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(x), size):
            yield x[start : start + size]

    return batches


def test_a_calibrated_detector_file_carries_its_query_settings(tmp_path: Path) -> None:
    data = load_digits_data(seed=0)
    image_model = tmp_path / "cnn.onnx"
    onnx.save(random_cnn(channels=1, side=8, classes=3), image_model)
    image = calibrate_detector(image_model, _batches(data.calibration_x[:160]), device="cpu")
    assert image.query_attacks is not None
    assert image.query_attacks.fingerprint == FingerprintSpec.for_image((0.0, 1.0))
    assert image.query_attacks.benign_events == 160
    assert image.query_settings == image.query_attacks

    rng = np.random.default_rng(0)
    benign = (rng.normal(0.0, 1.0, (150, 6)) * [1, 2, 3, 4, 5, 6] + 10).astype(np.float32)
    tabular_model = tmp_path / "mlp.onnx"
    onnx.save(random_mlp_tabular(features=6), tabular_model)
    tabular = calibrate_detector(tabular_model, _batches(benign), device="cpu")
    assert tabular.query_attacks is not None
    spec = tabular.query_attacks.fingerprint
    assert spec.kind == "tabular"
    assert spec.center is not None
    assert spec.scale is not None
    np.testing.assert_allclose(spec.center, benign.astype(np.float64).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(spec.scale, benign.astype(np.float64).std(axis=0), rtol=1e-3)

    # 8×8 images keep all 50 hashes (match at 25); 6 tabular windows match at 3.
    assert image.query_match_bits == 25
    assert tabular.query_match_bits == 3
    varying = dataclasses.replace(image, input_shape=(None, 1, None, 8))
    assert varying.query_match_bits is None
    assert dataclasses.replace(tabular, query_attacks=None).query_match_bits is None

    for config in (image, tabular):
        path = tmp_path / "detector.json"
        config.save(path)
        content = json.loads(path.read_text())
        assert config.query_attacks is not None
        assert content["query_attacks"] == config.query_attacks.to_dict()
        assert DetectorConfig.load(path).query_attacks == config.query_attacks

        # Files written before query settings existed: images get the defaults, tabular
        # models none.
        del content["query_attacks"]
        path.write_text(json.dumps(content))
        older = DetectorConfig.load(path)
        assert older.query_attacks is None
        expected = QuerySettings.default_for(config.input_kind, config.input_range)
        assert older.query_settings == expected
        assert (expected is None) == (config.input_kind == "tabular")

        content["query_attacks"] = {"fingerprint": {**spec.to_dict(), "window": 0}}
        path.write_text(json.dumps(content))
        with pytest.raises(DetectorFileError, match="window must be 1 to 256"):
            DetectorConfig.load(path)
