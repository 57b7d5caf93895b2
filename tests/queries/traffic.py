"""Query traffic for the query-attack tests: real ART black-box attacks, every query they
send recorded, and benign users with the habits that must not look like an attack.

An attacker attacks one input; each row its model calls hold is one query, recorded in
the order the attack sent it (a batched call counts as its rows, in row order). Benign
users send inputs from a held-out pool: a plain user, a user who retries (same request
id, same bytes), a user who resends one input again and again, a user who sends only one
class, a camera that sends bursts of slightly shifted frames of one scene, and a bulk
client that sends as fast as an attacker. :func:`interleave` merges them in time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.evaluate._estimators import OnnxClassifier

__all__ = [
    "ATTACKS",
    "Query",
    "QueryBudgetSpentError",
    "attacker_queries",
    "benign_users",
    "interleave",
    "record_attack",
]

ATTACKS = ("hopskipjump", "boundary", "square", "simba")


class QueryBudgetSpentError(Exception):
    """Ends an attack once it has sent the queries the test wants."""


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


@dataclass
class _Recorder:
    model: OnnxClassifier
    limit: int
    queries: list[np.ndarray] = field(default_factory=list)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, dtype=np.float32)
        room = self.limit - len(self.queries)
        self.queries.extend(rows[:room].copy())
        if len(self.queries) >= self.limit:
            raise QueryBudgetSpentError
        return self.model.probabilities(rows)


def _attack(name: str, classifier: object, input_range: tuple[float, float]) -> Any:
    """ART's attack ``name`` with its usual settings (ε of Square and SimBA from the range)."""
    from art.attacks.evasion import BoundaryAttack, HopSkipJump, SimBA, SquareAttack

    low, high = input_range
    if name == "hopskipjump":
        return HopSkipJump(classifier, max_iter=20, max_eval=200, init_eval=20, verbose=False)
    if name == "boundary":
        return BoundaryAttack(
            classifier, targeted=False, max_iter=200, num_trial=10, sample_size=10, verbose=False
        )
    if name == "square":
        return SquareAttack(
            classifier,
            norm=np.inf,
            eps=0.1 * (high - low),
            max_iter=500,
            nb_restarts=1,
            verbose=False,
        )
    if name == "simba":
        return SimBA(
            classifier, attack="dct", max_iter=500, epsilon=0.2 * (high - low), verbose=False
        )
    raise ValueError(f"unknown attack {name!r}")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def record_attack(
    name: str,
    model: OnnxClassifier,
    x0: np.ndarray,
    input_range: tuple[float, float],
    *,
    limit: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """The first ``limit`` queries (``[limit, *x0.shape]``) ART's ``name`` attack sends
    while it attacks ``x0`` (fewer if it finishes first)."""
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    recorder = _Recorder(model, limit)
    classifier = BlackBoxClassifierNeuralNetwork(
        recorder,
        input_shape=tuple(x0.shape),
        nb_classes=int(model.signature.num_classes or 0),
        clip_values=input_range,
    )
    attack = _attack(name, classifier, input_range)
    with _seeded(seed), contextlib.suppress(QueryBudgetSpentError):
        attack.generate(x=x0[None].astype(np.float32))
    return np.stack(recorder.queries)


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
