"""Stateful detection of black-box query attacks: query fingerprints and per-source histories.

A black-box attacker (HopSkipJump, Boundary, Square, SimBA, ZOO …) learns about the
model only through its answers, so it sends hundreds to thousands of queries, nearly all
of them small variations of one input. Feature squeezing judges each input alone; a
stateful detector judges a source's *sequence* of queries (Chen, Carlini and Wagner,
"Stateful Detection of Black-Box Adversarial Attacks", 2019; Li et al., "Blacklight:
Scalable Defense for Neural Networks against Query-Based Black-Box Attacks", USENIX
Security 2022). This module is the computation, usable alone; the worker's query stage
(:mod:`monitor.worker.stages.queries`) and ``advmon score`` run it per source.

**Fingerprint** (:func:`fingerprints`, vectorised over a batch, as Blacklight):

1. quantise every input value: images on a grid of ``step`` input units from the bottom of
   the input range; tabular features standardised by their benign mean and standard
   deviation (each feature its own unit), then on a grid of ``step`` over ``asinh`` of
   that, fine near the benign values and relative far from them (where an attack's
   first queries land);
2. slide a window of ``window`` values over the flattened input and hash each window
   (64-bit multiply-add hash with a SplitMix64 finaliser). Image windows are hashed
   without their position, so a query moved by a few pixels keeps most of its windows;
   tabular windows include their position, features having no order to slide along;
3. keep the ``top_k`` smallest distinct hashes (a bottom-k sketch: the same consistent
   sample of windows is kept from two similar inputs) and set one bit per kept hash in a
   1,024-bit map, by its bottom 10 bits.

Two queries *match* when their maps share at least ``match_bits`` set bits, by default
half of ``top_k`` (25 of 50, as Blacklight). Kept hashes that share a bit by chance add
about ``top_k² / 1024`` bits, 2.4 for 50: far below the threshold. A popcount over
1,024 bits compares a query with a whole history at numpy speed (about 40 µs for 1,000
fingerprints on one core), where comparing the kept hashes themselves would cost twenty
times that.

**History** (:class:`QueryHistory`): the last ``capacity`` distinct queries of one source
and model within ``max_age_seconds``, each with its fingerprint, event time, the
BLAKE2b digest of its input bytes, a digest of its request id and its event id. For
each new query it counts the earlier queries it matches (:attr:`QueryObservation.matches`).
What never counts:

- a **retry**: the request id of a query already held;
- a **repeat**: an input identical, byte for byte, to one already held, whenever it was
  sent. The held query is refreshed instead. Against a deterministic model a repeated
  query tells the attacker nothing new, so ignoring repeats costs the detector nothing,
  and a client that resends, polls or retries never piles up matches;
- a **low-information** query, with fewer distinct windows than ``match_bits`` (a blank
  frame): it cannot match anything and is not held.

Matching queries are joined into groups (a chain of matches joins them, as in
single-linkage clustering), and a source is flagged when a new query's group holds at
least ``min_linked`` of its other held queries. An attack walks from its first queries
to its last in small steps, so its queries form one growing group even where the first
and the last no longer match; a user's queries stay apart, a camera's shifted frames of
one scene form a group of their own per scene.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "BITMAP_BITS",
    "BITMAP_WORDS",
    "DEFAULT_IMAGE_LEVELS",
    "DEFAULT_TABULAR_STEP",
    "FingerprintSpec",
    "Fingerprints",
    "QueryCalibrator",
    "QueryHistory",
    "QueryObservation",
    "QuerySettings",
    "QueryStateError",
    "fingerprints",
    "request_digest",
]

BITMAP_BITS = 1024
"""Bits of a fingerprint's map: one per kept window hash (by its bottom 10 bits)."""
BITMAP_WORDS = BITMAP_BITS // 64
_BIT_MASK = np.uint64(BITMAP_BITS - 1)
_MAX_SEQ = 1 << 62
"""Sequence numbers a stored history may hold (far beyond any history's lifetime)."""

DEFAULT_IMAGE_LEVELS = 8
"""Image quantisation: the input range split into this many steps."""
DEFAULT_IMAGE_WINDOW = 10
"""Image windows: this many consecutive values of the flattened input."""
DEFAULT_TABULAR_STEP = 0.125
"""Tabular quantisation: steps of this size on ``asinh`` of the standardised feature."""
DEFAULT_MATCH_FRACTION = 0.5
DEFAULT_TOP_K = 50
DEFAULT_MIN_LINKED = 8
"""A source is flagged when a query is linked to this many of its held queries."""
DEFAULT_HISTORY_SIZE = 256
DEFAULT_MAX_AGE_SECONDS = 86_400.0
MAX_TOP_K = 256
MAX_WINDOW = 256
MAX_EVENT_ID_CHARS = 500
"""Longest event id a history keeps (the event contract's limit; longer ones are cut):
what a source's history can weigh is bounded whatever its events carry."""
_ENTRY_BYTES = 5 * 8 + BITMAP_WORDS * 8 + 5
"""Stored bytes of one held query besides its event id (arrays, msgpack framing)."""

_MASK64 = (1 << 64) - 1
_rng = np.random.Generator(np.random.PCG64(0x61647660))
_WINDOW_MULTIPLIERS = _rng.integers(1, 1 << 63, size=MAX_WINDOW, dtype=np.uint64) | np.uint64(1)
"""Fixed odd multipliers of the window hash: fingerprints of one input are the same on
every worker and across versions that keep this seed."""
_POSITION_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class QueryStateError(ValueError):
    """A stored query history cannot be read (it is replaced by an empty one)."""


@dataclass(frozen=True)
class FingerprintSpec:
    """How a model's inputs are fingerprinted; stored in the detector file.

    Parameters
    ----------
    kind
        ``image`` (position-free windows over the flattened input) or ``tabular``
        (positioned windows over standardised features).
    step
        Quantisation step: input units for images, benign standard deviations for tabular.
    window
        Values per hashed window.
    top_k
        Distinct window hashes kept per query.
    match_fraction
        Share of ``top_k`` bits two fingerprints must share to match.
    low
        Image grid origin: the bottom of the input range.
    center, scale
        Tabular: each feature's benign mean and standard deviation.
    """

    kind: Literal["image", "tabular"]
    step: float
    window: int
    top_k: int = DEFAULT_TOP_K
    match_fraction: float = DEFAULT_MATCH_FRACTION
    low: float = 0.0
    center: tuple[float, ...] | None = field(default=None, repr=False)
    scale: tuple[float, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("image", "tabular"):
            raise ValueError(f"fingerprint kind must be image or tabular, not {self.kind!r}")
        if not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"fingerprint step must be a positive number, got {self.step}")
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"fingerprint window must be 1 to {MAX_WINDOW}, got {self.window}")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"fingerprint top_k must be 1 to {MAX_TOP_K}, got {self.top_k}")
        if not 0 < self.match_fraction <= 1:
            raise ValueError(
                f"fingerprint match_fraction must be in (0, 1], got {self.match_fraction}"
            )
        if not math.isfinite(self.low):
            raise ValueError("fingerprint low must be finite")
        if (self.center is None) != (self.scale is None):
            raise ValueError("fingerprint center and scale must be given together")
        if self.center is not None and self.scale is not None:
            if len(self.center) != len(self.scale):
                raise ValueError("fingerprint center and scale differ in length")
            values = np.asarray([*self.center, *self.scale], dtype=np.float64)
            if not np.all(np.isfinite(values)) or min(self.scale, default=1.0) <= 0:
                raise ValueError("fingerprint center must be finite and scale positive")

    @classmethod
    def for_image(
        cls, input_range: tuple[float, float], *, levels: int = DEFAULT_IMAGE_LEVELS
    ) -> FingerprintSpec:
        """The default for images: ``levels`` steps over the input range, windows of
        :data:`DEFAULT_IMAGE_WINDOW` values."""
        low, high = input_range
        return cls("image", step=(high - low) / levels, window=DEFAULT_IMAGE_WINDOW, low=low)

    @classmethod
    def for_tabular(
        cls, mean: np.ndarray, std: np.ndarray, *, step: float = DEFAULT_TABULAR_STEP
    ) -> FingerprintSpec:
        """The default for tabular inputs: single-feature windows, each feature
        standardised by its benign mean and standard deviation, then quantised in steps of
        ``step`` on ``asinh`` of that (about ``step`` σ near the mean, a fixed share of
        the value far from it). A feature that never varied in the benign data gets a unit
        scale.
        """
        scale = np.where(np.asarray(std) > 0, std, 1.0).astype(np.float64).ravel()
        return cls(
            "tabular",
            step=step,
            window=1,
            center=tuple(float(v) for v in np.ravel(mean)),
            scale=tuple(float(v) for v in scale),
        )

    def windows_per_input(self, elements: int) -> int:
        """How many windows an input of ``elements`` values has."""
        return max(0, elements - self.window + 1)

    def match_bits(self, elements: int) -> int:
        """Shared bits for two fingerprints of ``elements``-value inputs to match: the
        ``match_fraction`` of the hashes an input can keep (never below 1)."""
        kept = min(self.top_k, self.windows_per_input(elements))
        return max(1, math.ceil(self.match_fraction * kept))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "step": self.step,
            "window": self.window,
            "top_k": self.top_k,
            "match_fraction": self.match_fraction,
            "bitmap_bits": BITMAP_BITS,
        }
        out["low"] = self.low
        if self.center is not None and self.scale is not None:
            out["center"] = list(self.center)
            out["scale"] = list(self.scale)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FingerprintSpec:
        """Parse :meth:`to_dict`'s content; raise ``ValueError`` naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("a query fingerprint must be an object")
        known = {"kind", "step", "window", "top_k", "match_fraction", "bitmap_bits", "low"}
        known |= {"center", "scale"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"query fingerprint has unknown fields: {', '.join(unknown)}")
        if data.get("bitmap_bits", BITMAP_BITS) != BITMAP_BITS:
            raise ValueError(f"query fingerprint bitmap_bits must be {BITMAP_BITS}")
        center, scale = data.get("center"), data.get("scale")
        try:
            return cls(
                kind=data["kind"],
                step=float(data["step"]),
                window=_integer(data["window"], "window"),
                top_k=_integer(data.get("top_k", DEFAULT_TOP_K), "top_k"),
                match_fraction=float(data.get("match_fraction", DEFAULT_MATCH_FRACTION)),
                low=float(data.get("low", 0.0)),
                center=None if center is None else _floats(center, "center"),
                scale=None if scale is None else _floats(scale, "scale"),
            )
        except KeyError as exc:
            raise ValueError(f"query fingerprint lacks the field {exc.args[0]!r}") from None
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"query fingerprint has a malformed field: {exc}") from None


def _floats(values: object, name: str) -> tuple[float, ...]:
    if not isinstance(values, list | tuple):
        raise ValueError(f"query fingerprint {name} must be a list of numbers")
    return tuple(float(v) for v in values)


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"query fingerprint {name} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Fingerprints:
    """Fingerprints of a batch of inputs, row ``i`` for input ``i``."""

    bitmaps: np.ndarray
    """``uint64 [N, BITMAP_WORDS]``: the bit map of each input's kept window hashes."""
    windows: np.ndarray
    """``int32 [N]``: distinct window hashes kept per input (at most ``top_k``)."""
    digests: np.ndarray
    """``uint64 [N]``: BLAKE2b-64 of each input's float32 bytes (identical inputs)."""

    def __len__(self) -> int:
        return len(self.digests)


def _splitmix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place on ``uint64`` (wrapping arithmetic)."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


_QUANTUM_LIMIT = float(1 << 40)


def _quantised(spec: FingerprintSpec, flat: np.ndarray) -> np.ndarray:
    """Grid indices of every value, as ``uint64`` bit patterns of ``int64`` (clipped so
    that no value, however large, overflows)."""
    if spec.kind == "tabular" and spec.center is not None and spec.scale is not None:
        if len(spec.center) != flat.shape[1]:
            raise ValueError(
                f"the fingerprint is for {len(spec.center)} features, the inputs have "
                f"{flat.shape[1]}"
            )
        center = np.asarray(spec.center, dtype=np.float64)
        scale = np.asarray(spec.scale, dtype=np.float64)
        grid = np.arcsinh((flat - center) / scale) / spec.step
    else:
        grid = (flat - spec.low) / spec.step
    np.clip(grid, -_QUANTUM_LIMIT, _QUANTUM_LIMIT, out=grid)
    return np.floor(grid).astype(np.int64).view(np.uint64)


def fingerprints(spec: FingerprintSpec, inputs: np.ndarray) -> Fingerprints:
    """Fingerprint every input of ``inputs`` (``[N, ...]``, finite values).

    >>> spec = FingerprintSpec.for_image((0.0, 1.0))
    >>> x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    >>> y = x.copy(); y[1, 3] += 0.001
    >>> a, b = fingerprints(spec, x), fingerprints(spec, y)
    >>> bool(np.array_equal(a.bitmaps, b.bitmaps)), bool(a.digests[1] == b.digests[1])
    (True, False)
    """
    n = len(inputs)
    elements = int(np.prod(inputs.shape[1:], dtype=np.int64))
    flat32 = np.ascontiguousarray(inputs, dtype=np.float32).reshape(n, elements)
    digests = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
            for row in flat32
        ),
        dtype=np.uint64,
        count=n,
    )
    elements = flat32.shape[1]
    width = spec.windows_per_input(elements)
    bitmaps = np.zeros((n, BITMAP_WORDS), dtype=np.uint64)
    if n == 0 or width == 0:
        return Fingerprints(bitmaps, np.zeros(n, dtype=np.int32), digests)
    quantised = _quantised(spec, flat32.astype(np.float64))
    windows = sliding_window_view(quantised, spec.window, axis=1)  # [N, width, window]
    multipliers = _WINDOW_MULTIPLIERS[: spec.window]
    hashes = np.zeros((n, width), dtype=np.uint64)
    for j in range(spec.window):  # multiply-add over the window, wrapping
        hashes += windows[:, :, j] * multipliers[j]
    if spec.kind == "tabular":
        hashes += np.arange(width, dtype=np.uint64) * _POSITION_MULTIPLIER
    _splitmix64(hashes)
    hashes.sort(axis=1)
    distinct = np.ones_like(hashes, dtype=bool)
    distinct[:, 1:] = hashes[:, 1:] != hashes[:, :-1]
    kept = distinct & (np.cumsum(distinct, axis=1) <= spec.top_k)
    rows, columns = np.nonzero(kept)
    bits = np.zeros((n, BITMAP_BITS), dtype=bool)
    # The kept hashes are the smallest, so their top bits are all zero: the bit comes
    # from the bottom ones, which are as uniform as the hash.
    bits[rows, (hashes[rows, columns] & _BIT_MASK).astype(np.intp)] = True
    bitmaps = np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    return Fingerprints(bitmaps, kept.sum(axis=1, dtype=np.int32), digests)


def request_digest(request_id: str | None) -> int:
    """A query's request id as a 64-bit digest (0: none)."""
    if not request_id:
        return 0
    value = int.from_bytes(
        hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
        "little",
    )
    return value or 1


Outcome = Literal["new", "retry", "repeat", "low_information"]


@dataclass(frozen=True)
class QueryObservation:
    """What one query did to its source's history."""

    outcome: Outcome
    """``new`` (held, and matched against the history), ``retry`` (the request id of a
    held query), ``repeat`` (the input bytes of a held query), ``low_information`` (too
    few distinct windows to match anything; not held)."""
    matches: int = 0
    """Held queries the new query matches (0 unless ``new``)."""
    linked: int = 0
    """Held queries joined to the new one by a chain of matches (its group, less itself):
    what a source is flagged on."""
    matched_event_ids: tuple[str, ...] = ()
    """The most recent queries it matches, newest first (at most ``QueryHistory.keep_ids``)."""
    first_linked_time: float | None = None
    """Event time of the oldest query in its group: when the probing began."""
    held: int = 0
    """Queries held after this one."""


class _Stored(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A history as stored (see :meth:`QueryHistory.dumps`)."""

    format: int
    next_seq: int
    newest: float
    seqs: bytes
    times: bytes
    digests: bytes
    requests: bytes
    bitmaps: bytes
    groups: bytes
    event_ids: list[str]


_STATE_FORMAT = 1
_MAGIC = b"advmon-query-history\n"
_DECODER = msgspec.msgpack.Decoder(_Stored)


class QueryHistory:
    """One source's recent distinct queries to one model, and their matching.

    Parameters
    ----------
    capacity
        Queries held at most; the oldest is dropped for a new one.
    max_age_seconds
        Queries older than this (event time, against the newest seen) are dropped.
    match_bits
        Shared fingerprint bits for two queries to match
        (:meth:`FingerprintSpec.match_bits`).
    keep_ids
        Matched event ids reported per query.

    Memory: ``capacity × (BITMAP_WORDS·8 + 40)`` bytes of arrays (168 bytes per query),
    plus the event ids (each at most :data:`MAX_EVENT_ID_CHARS`); arrays grow with the
    source's queries, so a source with ten queries holds ten.
    """

    def __init__(
        self, capacity: int, max_age_seconds: float, match_bits: int, *, keep_ids: int = 5
    ) -> None:
        if capacity < 1:
            raise ValueError(f"a query history holds at least 1 query, not {capacity}")
        if not max_age_seconds > 0:
            raise ValueError(f"max_age_seconds must be positive, got {max_age_seconds}")
        self.capacity = capacity
        self.max_age_seconds = float(max_age_seconds)
        self.match_bits = int(match_bits)
        self.keep_ids = keep_ids
        self.next_seq = 0
        self._seqs = np.full(0, -1, dtype=np.int64)
        """Arrival number of each slot's query; -1: a free slot."""
        self._times = np.zeros(0, dtype=np.float64)
        self._digests = np.zeros(0, dtype=np.uint64)
        self._requests = np.zeros(0, dtype=np.uint64)
        self._bitmaps = np.zeros((0, BITMAP_WORDS), dtype=np.uint64)
        self._event_ids: list[str] = []
        self._groups = np.zeros(0, dtype=np.int64)
        """Each held query's group: queries joined by a chain of matches share one."""
        self._newest = -math.inf
        self._free: list[int] = []
        """Free slots within the arrays."""
        self._held = 0
        self._oldest = math.inf
        """No held query is older than this (exact after each expiry scan)."""
        self._by_digest: dict[int, int] = {}
        """Slot of the held query with each input digest."""
        self._by_request: dict[int, int] = {}
        """Slot of the held query with each request digest (0, no request id, left out)."""

    def _index(self) -> None:
        """Rebuild the lookups from the arrays (after loading)."""
        held = np.flatnonzero(self._seqs >= 0)
        self._free = np.flatnonzero(self._seqs < 0).tolist()[::-1]
        self._held = len(held)
        self._oldest = float(self._times[held].min()) if len(held) else math.inf
        slots = held.tolist()
        self._by_digest = dict(zip(self._digests[held].tolist(), slots, strict=True))
        self._by_request = {
            request: slot
            for request, slot in zip(self._requests[held].tolist(), slots, strict=True)
            if request
        }

    def __len__(self) -> int:
        return self._held

    @property
    def newest(self) -> float:
        """The newest event time seen (``-inf`` before the first query)."""
        return self._newest

    @property
    def nbytes(self) -> int:
        """Bytes the history's arrays and event ids take."""
        arrays: list[np.ndarray] = [self._seqs, self._times, self._digests, self._requests]
        arrays += [self._bitmaps, self._groups]
        return sum(a.nbytes for a in arrays) + sum(len(e) for e in self._event_ids)

    def _forget(self, slot: int) -> None:
        """Free a held query's slot."""
        digest, request = int(self._digests[slot]), int(self._requests[slot])
        if self._by_digest.get(digest) == slot:
            del self._by_digest[digest]
        if request and self._by_request.get(request) == slot:
            del self._by_request[request]
        self._seqs[slot] = -1
        self._free.append(slot)
        self._held -= 1

    def _expire(self, now: float) -> None:
        """Free the slots of queries older than ``max_age_seconds`` before ``now``."""
        cutoff = now - self.max_age_seconds
        if self._oldest >= cutoff:
            return
        held = self._seqs >= 0
        for slot in np.flatnonzero(held & (self._times < cutoff)).tolist():
            self._forget(slot)
        remaining = self._times[self._seqs >= 0]
        self._oldest = float(remaining.min()) if len(remaining) else math.inf

    def _slot(self) -> int:
        """A slot for a new query: a free one, else a new one, else the oldest's."""
        if not self._free:
            size = len(self._seqs)
            if size < self.capacity:
                grown = min(self.capacity, max(8, 2 * size))
                extra = grown - size
                self._seqs = np.concatenate([self._seqs, np.full(extra, -1, dtype=np.int64)])
                self._times = np.concatenate([self._times, np.zeros(extra)])
                self._digests = np.concatenate([self._digests, np.zeros(extra, dtype=np.uint64)])
                self._requests = np.concatenate([self._requests, np.zeros(extra, dtype=np.uint64)])
                self._bitmaps = np.concatenate(
                    [self._bitmaps, np.zeros((extra, BITMAP_WORDS), dtype=np.uint64)]
                )
                self._groups = np.concatenate([self._groups, np.zeros(extra, dtype=np.int64)])
                self._event_ids.extend([""] * extra)
                self._free.extend(range(grown - 1, size - 1, -1))
            else:
                self._forget(int(np.argmin(self._seqs)))
        return self._free.pop()

    def observe(
        self,
        bitmap: np.ndarray,
        windows: int,
        digest: int,
        when: float,
        event_id: str,
        request: int = 0,
    ) -> QueryObservation:
        """Match one query against the history, then hold it (see the module's rules)."""
        self._newest = max(self._newest, when)
        self._expire(self._newest)
        if request and request in self._by_request:
            return QueryObservation("retry", held=self._held)
        same = self._by_digest.get(digest)
        if same is not None:
            self._seqs[same] = self.next_seq
            self._times[same] = max(float(self._times[same]), when)
            self.next_seq += 1
            return QueryObservation("repeat", held=self._held)
        if windows < self.match_bits:
            return QueryObservation("low_information", held=self._held)
        held = self._seqs >= 0
        matched = np.zeros(0, dtype=np.intp)
        if self._held:
            overlap = np.bitwise_count(self._bitmaps & bitmap).sum(axis=1, dtype=np.int32)
            matched = np.flatnonzero(held & (overlap >= self.match_bits))
        group = self.next_seq
        if len(matched):
            joined_groups = np.unique(self._groups[matched])
            if len(joined_groups) == 1:
                joined = self._groups == joined_groups[0]
            else:
                joined = np.isin(self._groups, joined_groups)
            self._groups[held & joined] = group
        slot = self._slot()
        self._seqs[slot] = self.next_seq
        self.next_seq += 1
        self._times[slot] = when
        self._digests[slot] = np.uint64(digest)
        self._requests[slot] = np.uint64(request)
        self._bitmaps[slot] = bitmap
        self._event_ids[slot] = event_id[:MAX_EVENT_ID_CHARS]
        self._groups[slot] = group
        self._held += 1
        self._oldest = min(self._oldest, when)
        self._by_digest[digest] = slot
        if request:
            self._by_request[request] = slot
        members = (self._seqs >= 0) & (self._groups == group)
        members[slot] = False
        matched = matched[matched != slot]  # the slot of an evicted query, now this one
        newest_first = matched[np.argsort(-self._seqs[matched], kind="stable")]
        in_group = np.flatnonzero(members)
        return QueryObservation(
            "new",
            matches=len(matched),
            linked=len(in_group),
            matched_event_ids=tuple(self._event_ids[i] for i in newest_first[: self.keep_ids]),
            first_linked_time=float(self._times[in_group].min()) if len(in_group) else None,
            held=self._held,
        )

    def observe_batch(
        self,
        prints: Fingerprints,
        rows: Sequence[int],
        times: Sequence[float],
        event_ids: Sequence[str],
        requests: Sequence[int],
    ) -> list[QueryObservation]:
        """:meth:`observe` for rows ``rows`` of ``prints``, in order."""
        return [
            self.observe(
                prints.bitmaps[row],
                int(prints.windows[row]),
                int(prints.digests[row]),
                when,
                event_id,
                request,
            )
            for row, when, event_id, request in zip(rows, times, event_ids, requests, strict=True)
        ]

    def dumps(self, max_bytes: int | None = None) -> bytes:
        """The history as bytes (held queries only, oldest first).

        With ``max_bytes``, only the newest queries that fit in it are written (the bytes
        must fit a Kafka record: long event ids in a large history could outgrow one).
        """
        order = np.flatnonzero(self._seqs >= 0)
        order = order[np.argsort(self._seqs[order], kind="stable")]
        if max_bytes is not None:
            sizes = [_ENTRY_BYTES + len(self._event_ids[i].encode()) for i in order[::-1]]
            fits = int(np.searchsorted(np.cumsum(sizes), max_bytes - 256, side="right"))
            order = order[len(order) - fits :]
        stored = _Stored(
            format=_STATE_FORMAT,
            next_seq=self.next_seq,
            newest=self._newest,
            seqs=self._seqs[order].astype("<i8").tobytes(),
            times=self._times[order].astype("<f8").tobytes(),
            digests=self._digests[order].astype("<u8").tobytes(),
            requests=self._requests[order].astype("<u8").tobytes(),
            bitmaps=self._bitmaps[order].astype("<u8").tobytes(),
            groups=self._groups[order].astype("<i8").tobytes(),
            event_ids=[self._event_ids[i] for i in order],
        )
        return _MAGIC + msgspec.msgpack.encode(stored)

    @classmethod
    def loads(
        cls,
        data: bytes,
        capacity: int,
        max_age_seconds: float,
        match_bits: int,
        *,
        keep_ids: int = 5,
    ) -> QueryHistory:
        """A history from :meth:`dumps`'s bytes, kept to ``capacity`` newest queries.

        Raises :class:`QueryStateError` for anything that is not such bytes, whatever they
        hold: the caller starts an empty history instead.
        """
        if not data.startswith(_MAGIC):
            raise QueryStateError("not a query history")
        try:
            stored = _DECODER.decode(data[len(_MAGIC) :])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise QueryStateError(f"unreadable query history: {exc}") from None
        if stored.format != _STATE_FORMAT:
            raise QueryStateError(f"query history format {stored.format} is not {_STATE_FORMAT}")
        n = len(stored.event_ids)
        sizes = {
            "seqs": (len(stored.seqs), 8 * n),
            "times": (len(stored.times), 8 * n),
            "digests": (len(stored.digests), 8 * n),
            "requests": (len(stored.requests), 8 * n),
            "bitmaps": (len(stored.bitmaps), 8 * BITMAP_WORDS * n),
            "groups": (len(stored.groups), 8 * n),
        }
        wrong = {name: got for name, (got, want) in sizes.items() if got != want}
        if wrong:
            raise QueryStateError(f"query history arrays do not hold {n} queries: {wrong}")
        seqs = np.frombuffer(stored.seqs, dtype="<i8").astype(np.int64)
        times = np.frombuffer(stored.times, dtype="<f8").astype(np.float64)
        groups = np.frombuffer(stored.groups, dtype="<i8").astype(np.int64)
        if not 0 <= stored.next_seq < _MAX_SEQ or not stored.newest < math.inf:
            raise QueryStateError("query history holds an impossible sequence number or time")
        if n and (
            np.any(seqs < 0)
            or np.any(seqs >= stored.next_seq)
            or stored.newest < times.max()
            or np.any(groups < 0)
            or np.any(groups >= stored.next_seq)
            or not np.all(np.isfinite(times))
            or len(np.unique(seqs)) != n
        ):
            raise QueryStateError("query history holds impossible sequence numbers or times")
        if any(len(e) > MAX_EVENT_ID_CHARS for e in stored.event_ids):
            raise QueryStateError("query history holds an over-long event id")
        keep = slice(max(0, n - capacity), n)  # oldest first: the newest are kept
        history = cls(capacity, max_age_seconds, match_bits, keep_ids=keep_ids)
        history.next_seq = int(stored.next_seq)
        history._newest = stored.newest
        history._seqs = seqs[keep].copy()
        history._times = times[keep].copy()
        history._digests = np.frombuffer(stored.digests, dtype="<u8").astype(np.uint64)[keep]
        history._requests = np.frombuffer(stored.requests, dtype="<u8").astype(np.uint64)[keep]
        history._bitmaps = (
            np.frombuffer(stored.bitmaps, dtype="<u8")
            .astype(np.uint64)
            .reshape(n, BITMAP_WORDS)[keep]
            .copy()
        )
        history._groups = groups[keep].copy()
        history._event_ids = list(stored.event_ids[keep])
        history._index()
        return history


@dataclass(frozen=True)
class QuerySettings:
    """A model's query-attack settings, as stored in its detector file.

    ``min_linked`` is the threshold a source is flagged at; ``benign_*`` record what it
    was calibrated on: one history fed every benign event in order (a single client
    sending the whole benign set, as fast as it likes), and the largest group any of
    them formed.
    """

    fingerprint: FingerprintSpec
    min_linked: int = DEFAULT_MIN_LINKED
    history_size: int = DEFAULT_HISTORY_SIZE
    benign_events: int = 0
    benign_max_linked: int = 0
    benign_max_matches: int = 0

    def __post_init__(self) -> None:
        if self.min_linked < 1:
            raise ValueError(f"query min_linked must be at least 1, got {self.min_linked}")
        if self.history_size < 1:
            raise ValueError(f"query history_size must be at least 1, got {self.history_size}")

    @classmethod
    def default_for(cls, input_kind: str, input_range: tuple[float, float]) -> QuerySettings | None:
        """Defaults for a detector file that has none: images only (tabular inputs need
        the benign statistics that calibration measures)."""
        if input_kind != "image":
            return None
        return cls(FingerprintSpec.for_image(input_range))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content."""
        return {
            "fingerprint": self.fingerprint.to_dict(),
            "min_linked": self.min_linked,
            "history_size": self.history_size,
            "benign": {
                "events": self.benign_events,
                "max_linked": self.benign_max_linked,
                "max_matches": self.benign_max_matches,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuerySettings:
        """Parse :meth:`to_dict`'s content; raise ``ValueError`` naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("query_attacks must be an object")
        unknown = sorted(set(data) - {"fingerprint", "min_linked", "history_size", "benign"})
        if unknown:
            raise ValueError(f"query_attacks has unknown fields: {', '.join(unknown)}")
        benign = data.get("benign", {})
        if not isinstance(benign, Mapping):
            raise ValueError("query_attacks.benign must be an object")
        try:
            return cls(
                fingerprint=FingerprintSpec.from_dict(data["fingerprint"]),
                min_linked=_integer(data.get("min_linked", DEFAULT_MIN_LINKED), "min_linked"),
                history_size=_integer(
                    data.get("history_size", DEFAULT_HISTORY_SIZE), "history_size"
                ),
                benign_events=_integer(benign.get("events", 0), "benign.events"),
                benign_max_linked=_integer(benign.get("max_linked", 0), "benign.max_linked"),
                benign_max_matches=_integer(benign.get("max_matches", 0), "benign.max_matches"),
            )
        except KeyError as exc:
            raise ValueError(f"query_attacks lacks the field {exc.args[0]!r}") from None


class QueryCalibrator:
    """Measure how benign events link, batch by batch, for :class:`QuerySettings`.

    Every event goes through one history of ``history_size`` queries, in order, as
    though one client had sent them all. The threshold is the default
    (:data:`DEFAULT_MIN_LINKED`) or, when the benign events linked more than that,
    ``margin`` above the largest group they formed.

    >>> spec = FingerprintSpec.for_image((0.0, 1.0))
    >>> calibrator = QueryCalibrator(spec, elements=64)
    >>> calibrator.update(np.random.default_rng(0).random((50, 64), dtype=np.float32))
    >>> settings = calibrator.result()
    >>> settings.min_linked, settings.benign_events, settings.benign_max_linked
    (8, 50, 0)
    """

    def __init__(
        self,
        spec: FingerprintSpec,
        elements: int,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        floor: int = DEFAULT_MIN_LINKED,
        margin: int = 2,
    ) -> None:
        self.spec = spec
        self.history_size = history_size
        self.floor = floor
        self.margin = margin
        self._history = QueryHistory(history_size, math.inf, spec.match_bits(elements))
        self._events = 0
        self._max_linked = 0
        self._max_matches = 0

    def update(self, batch: np.ndarray) -> None:
        """Feed a batch of benign inputs, in order."""
        prints = fingerprints(self.spec, batch)
        for row in range(len(prints)):
            seen = self._history.observe(
                prints.bitmaps[row],
                int(prints.windows[row]),
                int(prints.digests[row]),
                float(self._events),
                "",
            )
            self._events += 1
            self._max_linked = max(self._max_linked, seen.linked)
            self._max_matches = max(self._max_matches, seen.matches)

    def result(self) -> QuerySettings:
        """The settings, with the threshold calibrated on what was fed."""
        return QuerySettings(
            self.spec,
            min_linked=max(self.floor, self._max_linked + self.margin),
            history_size=self.history_size,
            benign_events=self._events,
            benign_max_linked=self._max_linked,
            benign_max_matches=self._max_matches,
        )
