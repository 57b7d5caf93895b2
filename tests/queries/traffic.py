"""Query traffic for the query-attack tests: real ART black-box attacks, every query they
send recorded, and benign users with the habits that must not look like an attack.

An attacker attacks one input; each row its model calls hold is one query, recorded in
the order the attack sent it (:func:`monitor.demo.attacks.record_attack_queries`). Benign
users send inputs from a held-out pool: a plain user, a user who retries (same request
id, same bytes), a user who resends one input again and again, a user who sends only one
class, a camera that sends bursts of slightly shifted frames of one scene, and a bulk
client that sends as fast as an attacker. :func:`interleave` merges them in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.demo.attacks import BLACK_BOX_ATTACKS as ATTACKS
from monitor.demo.attacks import record_attack_queries as record_attack

__all__ = [
    "ATTACKS",
    "Query",
    "attacker_queries",
    "benign_users",
    "interleave",
    "record_attack",
]


@dataclass(frozen=True)
class Query:
    """One query a source sends."""

    source: str
    input: np.ndarray
    time: float
    request_id: str
    event_id: str
    attacker: bool = False
    number: int = 0
    """The query's number within its source, from 1."""


def _shifted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A frame of the same scene: moved by up to one pixel each way, a little noise."""
    dy, dx = rng.integers(-1, 2, size=2)
    moved = np.roll(image, (int(dy), int(dx)), axis=(-2, -1))
    noisy: np.ndarray = moved + rng.normal(0.0, 0.01, size=image.shape).astype(np.float32)
    return noisy


def _jittered(row: np.ndarray, scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tabular "frame": the same record measured again, 2 % of a std off per feature."""
    jittered: np.ndarray = row + (rng.normal(0.0, 0.02, size=row.shape) * scale).astype(np.float32)
    return jittered


def benign_users(
    pool: np.ndarray,
    labels: np.ndarray,
    input_range: tuple[float, float],
    *,
    seed: int = 0,
    start: float = 0.0,
    span: float = 3600.0,
    image: bool = True,
) -> list[Query]:
    """Queries of six benign users over ``span`` seconds, drawn from ``pool``."""
    rng = np.random.default_rng(seed)
    low, high = input_range
    order = rng.permutation(len(pool))
    taken = iter(order)
    scale = pool.reshape(len(pool), -1).std(axis=0).reshape(pool.shape[1:]) + 1e-6
    out: list[Query] = []

    def add(source: str, x: np.ndarray, when: float, request: str | None = None) -> None:
        n = sum(1 for q in out if q.source == source) + 1
        out.append(
            Query(
                source,
                np.clip(x, low, high).astype(np.float32),
                when,
                request or f"{source}-r{n}",
                f"{source}-e{n}",
                number=n,
            )
        )

    # A plain user: 40 distinct inputs, spread over the span.
    for when in np.sort(rng.uniform(start, start + span, 40)):
        add("user-plain", pool[next(taken)], float(when))
    # A user whose client retries: each request sent twice or three times, same id.
    for k, when in enumerate(np.sort(rng.uniform(start, start + span, 25))):
        x = pool[next(taken)]
        for attempt in range(int(rng.integers(1, 4))):
            add("user-retries", x, float(when) + attempt * 0.5, request=f"user-retries-q{k}")
    # A user who sends the same few inputs again and again (polling a result).
    favourites = [pool[next(taken)] for _ in range(3)]
    for when in np.sort(rng.uniform(start, start + span, 60)):
        add("user-repeats", favourites[int(rng.integers(0, 3))], float(when))
    # A user who sends only one class.
    klass = int(labels[order[0]])
    same = [i for i in order if labels[i] == klass][:30]
    for i, when in zip(same, np.sort(rng.uniform(start, start + span, len(same))), strict=True):
        add("user-one-class", pool[i], float(when))
    # A camera: bursts of five frames of one scene, each burst a new scene.
    for burst in np.sort(rng.uniform(start, start + span, 8)):
        scene = pool[next(taken)]
        for frame in range(5):
            x = _shifted(scene, rng) if image else _jittered(scene, scale, rng)
            add("camera", x, float(burst) + frame * 0.1)
    # A bulk client: 150 distinct inputs, ten a second.
    for k in range(150):
        add("bulk", pool[order[(k * 7) % len(order)]], start + 100.0 + k * 0.1)
    return out


def interleave(*streams: list[Query]) -> list[Query]:
    """All queries, in time order (stable for equal times)."""
    merged = [q for stream in streams for q in stream]
    return sorted(merged, key=lambda q: q.time)


def attacker_queries(
    source: str, queries: np.ndarray, *, start: float, interval: float
) -> list[Query]:
    """An attacker's recorded queries, one every ``interval`` seconds from ``start``."""
    return [
        Query(
            source,
            x,
            start + k * interval,
            f"{source}-r{k + 1}",
            f"{source}-e{k + 1}",
            attacker=True,
            number=k + 1,
        )
        for k, x in enumerate(queries)
    ]
