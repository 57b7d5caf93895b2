"""Choose a detector's squeezers from evidence: attacks crafted against the user's model.

``advmon calibrate`` without ``--squeezers`` runs :func:`search_squeezers`:

1. **Sample.** While the events file is read, :class:`BenignSample` keeps a uniform random
   sample of at most :attr:`SearchLimits.sample_events` benign inputs (float32, so
   ``4 · sample_events · input elements`` bytes: 6.3 MB for 2,000 28×28 images).
2. **Split.** The sample is shuffled (seeded) and split in two: the *threshold* part
   calibrates each candidate's threshold at the target FPR; the *held-back* part (half the
   sample, less if the threshold part would fall below 100 events or ``1/fpr``) measures
   each candidate's false-positive rate, and attacks start from up to
   :attr:`SearchLimits.attacked_events` of its events.
3. **Attack.** :func:`monitor.evaluate._attacks.craft_adversarial` crafts adversarial
   examples from those events, labelled with the model's own predictions (benign events
   carry no ground truth); only examples that change the prediction count.
4. **Score.** One fused graph holding every squeezer of every candidate scores the
   threshold part, the held-back part and each attack's examples once. A candidate's score
   is the max of its squeezers' ``squeezer_distances``: exactly what a detector holding
   only those squeezers computes.
5. **Choose.** A candidate competes when its held-back FPR stays within
   :func:`held_back_fpr_limit` (the target plus two standard errors): a threshold that
   lets through many more benign events than calibrated also flags more attacks, and
   would win for the wrong reason. Among those (all, if none stays within it), the
   highest detection rate (the mean over attacks of the fraction of each attack's
   examples scored above the candidate's threshold) wins. Rates within one standard
   error of the best are ties (the data cannot tell them apart), won by the lower
   held-back FPR, then by fewer squeezers, then by the earlier candidate (the preset
   comes first).

When the search cannot decide (too few events, inputs of several shapes, no attack
succeeded) the preset is taken and :attr:`SqueezerSearch.fallback_reason` says why.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from detectors import (
    MIN_CALIBRATION_EVENTS,
    CalibrationError,
    Device,
    FeatureStats,
    ModelSignature,
    OutputKind,
    QuantileGrid,
    Quantize,
    SearchAttack,
    SearchBudget,
    SearchCandidate,
    SearchSplit,
    Squeezer,
    SqueezerSearch,
    SqueezeScorer,
    build_squeeze_graph,
    calibrate_threshold,
    format_squeezer_spec,
    inspect_model,
    load_model,
    parse_squeezer_spec,
    preset_for,
)

__all__ = [
    "MIN_HELD_BACK_EVENTS",
    "PAPER_MNIST_SPEC",
    "SEARCH_LIMITS",
    "AdversarialExamples",
    "BenignSample",
    "CraftAdversarial",
    "SearchLimits",
    "candidate_specs",
    "choose_candidate",
    "evaluate_candidates",
    "held_back_fpr_limit",
    "rank_candidates",
    "search_squeezers",
    "tie_floor",
]

#: The configuration Xu, Evans and Qi (NDSS 2018) used on MNIST.
PAPER_MNIST_SPEC = "bit_depth:1,median:2,median:3"

#: Fewest held-back events the search attacks and measures false positives on.
MIN_HELD_BACK_EVENTS = 20


@dataclass(frozen=True)
class SearchLimits:
    """What a search budget bounds."""

    sample_events: int
    """Most benign events kept in memory for the search."""
    attacked_events: int
    """Most held-back events the attacks start from."""
    image_attacks: str | None
    """The attacks for images with a channel axis (``None``: every default attack of
    ``advmon evaluate`` at this budget)."""
    other_attacks: str | None
    """The attacks for other inputs (tabular, or images without a channel axis)."""

    def attacks_for(self, signature: ModelSignature) -> str | None:
        """The attack spec for a model (see :func:`monitor.evaluate._attacks.parse_attacks`)."""
        channels = signature.input_kind == "image" and len(signature.input_shape) == 3
        return self.image_attacks if channels else self.other_attacks


#: The bounds of each budget; the attacks' own effort follows the budget too. The small
#: budget runs fast attacks of both norms: L∞ (Square, FGSM, PGD) and L2 (SimBA or
#: HopSkipJump, DeepFool); the white-box ones only where the model converts to PyTorch.
SEARCH_LIMITS: dict[SearchBudget, SearchLimits] = {
    "small": SearchLimits(
        sample_events=2_000,
        attacked_events=50,
        image_attacks="square,simba,fgsm,pgd,deepfool",
        other_attacks="hopskipjump,fgsm,pgd,deepfool",
    ),
    "full": SearchLimits(
        sample_events=10_000, attacked_events=500, image_attacks=None, other_attacks=None
    ),
}

_IMAGE_BITS = range(1, 7)
_IMAGE_MEDIANS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))
_TABULAR_GRIDS: dict[SearchBudget, dict[str, tuple[float, ...]]] = {
    "small": {
        "quantize": (0.25, 0.5, 1.0, 2.0),
        "quantile": (4, 8, 16, 32),
        "round": (0, 1, 2),
    },
    "full": {
        "quantize": (0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
        "quantile": (2, 4, 8, 16, 32, 64, 128),
        "round": (-1, 0, 1, 2, 3),
    },
}


class AdversarialExamples(Protocol):
    """One attack's successful adversarial examples (an ``AdversarialSet``)."""

    @property
    def name(self) -> str: ...

    @property
    def norm(self) -> str: ...

    @property
    def access(self) -> str: ...

    @property
    def x_adv(self) -> np.ndarray: ...


class CraftAdversarial(Protocol):
    """Crafts adversarial examples from ``x`` labelled ``labels`` against a model file
    (the signature of :func:`monitor.evaluate._attacks.craft_adversarial`)."""

    def __call__(
        self,
        model_path: Path,
        x: np.ndarray,
        labels: np.ndarray | None,
        *,
        input_range: tuple[float, float],
        output_kind: OutputKind,
        output_name: str | None = None,
        attacks: str | None = None,
        budget: SearchBudget = "small",
        seed: int = 0,
    ) -> Sequence[AdversarialExamples]: ...


class BenignSample:
    """A uniform random sample of at most ``capacity`` inputs from a stream of batches.

    Each input draws a seeded random key and the ``capacity`` smallest keys are kept
    (bottom-k sampling), so the sample does not depend on how the stream is batched.
    Inputs of another shape than the first stop the sampling: :attr:`varying_shape`.

    Parameters
    ----------
    capacity
        Most inputs kept (``4 · capacity · input elements`` bytes).
    seed
        Seed of the keys.

    Examples
    --------
    >>> sample = BenignSample(3, seed=1)
    >>> for start in range(0, 10, 4):
    ...     sample.update(np.arange(start, min(start + 4, 10), dtype=np.float32)[:, None])
    >>> sample.count, sample.inputs.ravel().tolist()
    (10, [2.0, 4.0, 9.0])
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.count = 0
        self.varying_shape = False
        self._rng = np.random.default_rng(seed)
        self._inputs: np.ndarray | None = None
        self._keys = np.empty(0)
        self._positions = np.empty(0, dtype=np.int64)

    def update(self, batch: np.ndarray) -> None:
        """Offer a batch shaped ``[N, *input_shape]``."""
        n = len(batch)
        if n == 0:
            return
        keys = self._rng.random(n)
        positions = np.arange(self.count, self.count + n)
        self.count += n
        if self.varying_shape:
            return
        if self._inputs is not None and batch.shape[1:] != self._inputs.shape[1:]:
            self.varying_shape = True
            self._inputs = None
            return
        inputs = np.asarray(batch, dtype=np.float32)
        if self._inputs is None:
            self._inputs = np.empty((0, *inputs.shape[1:]), dtype=np.float32)
        free = self.capacity - len(self._inputs)
        if free > 0:
            self._inputs = np.concatenate([self._inputs, inputs[:free]])
            self._keys = np.concatenate([self._keys, keys[:free]])
            self._positions = np.concatenate([self._positions, positions[:free]])
            inputs, keys, positions = inputs[free:], keys[free:], positions[free:]
        entering = np.flatnonzero(keys < self._keys.max())
        if len(entering) == 0:
            return
        # The capacity smallest keys of the kept and the entering inputs win.
        pooled = np.concatenate([self._keys, keys[entering]])
        winners = np.argpartition(pooled, self.capacity - 1)[: self.capacity]
        new = winners[winners >= len(self._keys)] - len(self._keys)
        if len(new) == 0:
            return
        evicted = np.setdiff1d(np.arange(len(self._keys)), winners, assume_unique=True)
        chosen = entering[new]
        self._inputs[evicted] = inputs[chosen]
        self._keys[evicted] = keys[chosen]
        self._positions[evicted] = positions[chosen]

    @property
    def inputs(self) -> np.ndarray:
        """The sampled inputs, float32 ``[n, *input_shape]``, in stream order."""
        if self._inputs is None:
            return np.empty((0,), dtype=np.float32)
        result: np.ndarray = self._inputs[np.argsort(self._positions, kind="stable")]
        return result


def _spec(bits: int | None, medians: tuple[int, ...]) -> str:
    items = ([f"bit_depth:{bits}"] if bits is not None else []) + [f"median:{m}" for m in medians]
    return ",".join(items)


def candidate_specs(signature: ModelSignature, budget: SearchBudget = "small") -> tuple[str, ...]:
    """The squeezer sets the search compares for a model, the preset first.

    Images: ``bit_depth:1`` … ``bit_depth:6``, ``median:2``, ``median:3`` and every
    combination of at most one bit depth with either or both medians (27 sets), which
    include the paper's MNIST configuration :data:`PAPER_MNIST_SPEC`. Tabular inputs: grids
    of ``quantize``, ``quantile`` and ``round`` (with the ``full`` budget, also each pair
    of a ``quantize`` and a ``quantile``). The preset (:func:`detectors.preset_for`) is
    always a candidate.

    Examples
    --------
    >>> from detectors import ModelSignature
    >>> digits = ModelSignature("x", (1, 28, 28), "image", "y", 10, "logits", 1, 17)
    >>> specs = candidate_specs(digits)
    >>> len(specs), specs[:2], PAPER_MNIST_SPEC in specs
    (27, ('bit_depth:2,median:2', 'bit_depth:1,median:2,median:3'), True)
    >>> table = ModelSignature("x", (30,), "tabular", "y", 2, "probabilities", 1, 17)
    >>> candidate_specs(table)[:3]
    ('quantize:0.5', 'quantize:0.25', 'quantize:1')
    """
    preset = preset_for(signature)
    specs: list[str] = [preset]
    if signature.input_kind == "image":
        grid = [
            _spec(bits, medians)
            for bits in (None, *_IMAGE_BITS)
            for medians in _IMAGE_MEDIANS
            if bits is not None or medians
        ]
        grid.sort(key=lambda spec: spec.count(","))
        specs += [PAPER_MNIST_SPEC, *grid]
    else:
        grids = _TABULAR_GRIDS[budget]
        quantize = [f"quantize:{step:g}" for step in grids["quantize"]]
        quantile = [f"quantile:{int(levels)}" for levels in grids["quantile"]]
        specs += quantize + quantile + [f"round:{int(d)}" for d in grids["round"]]
        if budget == "full":
            specs += [f"{a},{b}" for a in quantize for b in quantile]
    canonical = (format_squeezer_spec(parse_squeezer_spec(spec)) for spec in specs)
    return tuple(dict.fromkeys(canonical))


def _columns(spec: str, squeezer_columns: Sequence[str]) -> list[int]:
    return [squeezer_columns.index(item) for item in spec.split(",")]


def evaluate_candidates(
    specs: Sequence[str],
    squeezer_columns: Sequence[str],
    threshold_distances: np.ndarray,
    held_back_distances: np.ndarray,
    attack_distances: Mapping[str, np.ndarray],
    fpr: float,
) -> tuple[SearchCandidate, ...]:
    """Score every candidate from per-squeezer distances.

    ``squeezer_columns`` names the squeezer (a spec item such as ``median:2``) of each
    column of the ``[events, squeezers]`` distance arrays, as the fused graph's
    ``squeezer_distances`` output holds them. Each candidate's threshold is calibrated at
    ``fpr`` on ``threshold_distances``; its held-back FPR and its detection rate per
    attack are the fractions of ``held_back_distances`` and of each attack's distances
    scored strictly above it. Attacks without examples are left out. The detection rate is
    the mean over attacks; its standard error is ``√(Σ p(1 − p)/n) / attacks``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> benign = rng.uniform(0.0, 0.1, (200, 2))
    >>> attacks = {"fgsm": np.array([[0.05, 0.9], [0.5, 0.02]])}
    >>> one, both = evaluate_candidates(
    ...     ["bit_depth:1", "bit_depth:1,median:2"], ["bit_depth:1", "median:2"],
    ...     benign[:100], benign[100:], attacks, fpr=0.05)
    >>> one.detection_by_attack, both.detection_by_attack
    ({'fgsm': 0.5}, {'fgsm': 1.0})
    """
    candidates = []
    for spec in specs:
        columns = _columns(spec, squeezer_columns)
        benign = threshold_distances[:, columns].max(axis=1)
        threshold = np.float32(calibrate_threshold(benign, fpr).threshold)
        held_back = held_back_distances[:, columns].max(axis=1)
        by_attack = {
            name: float(np.mean(distances[:, columns].max(axis=1) > threshold))
            for name, distances in attack_distances.items()
            if len(distances)
        }
        variance = sum(p * (1.0 - p) / len(attack_distances[name]) for name, p in by_attack.items())
        candidates.append(
            SearchCandidate(
                spec=spec,
                detection_rate=float(np.mean(list(by_attack.values()))) if by_attack else 0.0,
                held_back_fpr=float(np.mean(held_back > threshold)) if len(held_back) else 0.0,
                threshold=float(threshold),
                detection_by_attack=by_attack,
                detection_stderr=math.sqrt(variance) / len(by_attack) if by_attack else 0.0,
            )
        )
    return tuple(candidates)


def held_back_fpr_limit(fpr: float, threshold_events: int, held_back_events: int) -> float:
    """The highest held-back FPR a candidate may show and still be chosen.

    A threshold calibrated at ``fpr`` on ``threshold_events`` benign events and checked
    on ``held_back_events`` others shows a held-back FPR that varies by about
    ``√(fpr·(1 − fpr)·(1/threshold_events + 1/held_back_events))``; the limit is the target
    plus two of those.

    Examples
    --------
    >>> round(held_back_fpr_limit(0.05, 225, 224), 4)
    0.0911
    """
    spread = math.sqrt(fpr * (1.0 - fpr) * (1.0 / threshold_events + 1.0 / held_back_events))
    return min(1.0, fpr + 2.0 * spread)


def rank_candidates(
    candidates: Sequence[SearchCandidate], fpr_limit: float = 1.0
) -> list[SearchCandidate]:
    """The candidates, best first.

    Those whose held-back FPR is at most ``fpr_limit`` come first (all compete when none
    is). Among them, the ones whose detection rate is within one standard error
    (:attr:`SearchCandidate.detection_stderr`) of the highest are tied, and ranked by lower
    held-back FPR, then fewer squeezers, then their order in ``candidates``; the rest
    follow by highest detection rate, then the same keys.

    Examples
    --------
    >>> a = SearchCandidate("bit_depth:2", 0.80, 0.05, 0.1, {}, detection_stderr=0.03)
    >>> b = SearchCandidate("bit_depth:1,median:2", 0.78, 0.04, 0.2, {})
    >>> c = SearchCandidate("median:2", 0.70, 0.03, 0.3, {})
    >>> d = SearchCandidate("median:3", 0.90, 0.20, 0.3, {})
    >>> [x.spec for x in rank_candidates([a, b, c, d], fpr_limit=0.1)]
    ['bit_depth:1,median:2', 'bit_depth:2', 'median:2', 'median:3']
    """

    def rank(group: list[tuple[int, SearchCandidate]]) -> list[SearchCandidate]:
        if not group:
            return []
        floor = tie_floor([candidate for _, candidate in group])
        tied = [item for item in group if item[1].detection_rate >= floor]
        rest = [item for item in group if item[1].detection_rate < floor]
        tied.sort(key=lambda item: (item[1].held_back_fpr, item[1].n_squeezers, item[0]))
        rest.sort(
            key=lambda item: (
                -item[1].detection_rate,
                item[1].held_back_fpr,
                item[1].n_squeezers,
                item[0],
            )
        )
        return [candidate for _, candidate in tied + rest]

    numbered = list(enumerate(candidates))
    within = [item for item in numbered if item[1].held_back_fpr <= fpr_limit]
    above = [item for item in numbered if item[1].held_back_fpr > fpr_limit]
    return rank(within) + rank(above)


def tie_floor(candidates: Sequence[SearchCandidate]) -> float:
    """The lowest detection rate that ties with the best of ``candidates``: the best rate
    less its standard error.

    Examples
    --------
    >>> tie_floor([SearchCandidate("bit_depth:1", 0.6, 0.05, 0.7, {}, detection_stderr=0.03)])
    0.57
    """
    best = max(candidates, key=lambda candidate: candidate.detection_rate)
    return best.detection_rate - best.detection_stderr


def choose_candidate(
    candidates: Sequence[SearchCandidate], fpr_limit: float = 1.0
) -> SearchCandidate:
    """The first candidate of :func:`rank_candidates`.

    Examples
    --------
    >>> a = SearchCandidate("bit_depth:2", 0.8, 0.05, 0.1, {})
    >>> d = SearchCandidate("median:3", 0.9, 0.2, 0.3, {})
    >>> choose_candidate([a, d]).spec, choose_candidate([a, d], fpr_limit=0.1).spec
    ('median:3', 'bit_depth:2')
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    return rank_candidates(candidates, fpr_limit)[0]


def _fit(squeezer: Squeezer, stats: FeatureStats) -> Squeezer:
    """Learn a tabular squeezer's per-feature grid from benign inputs, as calibration does."""
    if isinstance(squeezer, Quantize):
        return squeezer.fit(stats.mean, stats.std)
    if isinstance(squeezer, QuantileGrid):
        return squeezer.fit(stats.sample)
    return squeezer


def _score(scorer: SqueezeScorer, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-squeezer distances ``[N, k]`` and predicted classes ``[N]`` of ``x``."""
    scored = [scorer.score(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
    return (
        np.concatenate([s.squeezer_distances for s in scored]),
        np.concatenate([s.prediction for s in scored]),
    )


def _unique_names(sets: Sequence[AdversarialExamples]) -> list[str]:
    """Attack names, made unique by their norm and then a counter where they repeat."""
    names = [str(s.name) for s in sets]
    if len(set(names)) == len(names):
        return names
    names = [f"{s.name}:{s.norm}" for s in sets]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def _default_craft() -> CraftAdversarial:
    from monitor.evaluate._attacks import craft_adversarial

    craft: CraftAdversarial = craft_adversarial
    return craft


def search_squeezers(
    model_path: str | os.PathLike[str],
    sample: BenignSample,
    *,
    fpr: float,
    input_range: tuple[float, float],
    output_kind: OutputKind,
    output_name: str | None = None,
    budget: SearchBudget = "small",
    seed: int = 0,
    device: Device = "auto",
    batch_size: int = 256,
    craft: CraftAdversarial | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> SqueezerSearch:
    """Choose the squeezers for the model at ``model_path`` from attacks on its own inputs.

    ``sample`` is the bounded sample of the benign events read; ``input_range`` and
    ``output_kind`` are the model's, as calibration resolved them. The module docstring
    describes the steps. ``craft`` crafts the attacks (default:
    :func:`monitor.evaluate._attacks.craft_adversarial`); ``on_stage`` is told, in words,
    each step as it starts.

    Returns the evidence; :attr:`SqueezerSearch.chosen` is the spec to calibrate with. It
    is the preset, with :attr:`SqueezerSearch.fallback_reason` set, when the search
    cannot decide.
    """
    if not 0.0 < fpr < 1.0:
        raise CalibrationError(f"the false-positive rate must be between 0 and 1, got {fpr}")
    started = time.perf_counter()
    model = load_model(str(Path(model_path)))
    signature = inspect_model(model, output_name)
    preset = format_squeezer_spec(parse_squeezer_spec(preset_for(signature)))
    limits = SEARCH_LIMITS[budget]

    def report(stage: str) -> None:
        if on_stage is not None:
            on_stage(stage)

    def fallback(
        reason: str, split: SearchSplit, attacks: tuple[SearchAttack, ...] = ()
    ) -> SqueezerSearch:
        return SqueezerSearch(
            chosen=preset,
            preset=preset,
            fallback_reason=reason,
            budget=budget,
            seed=seed,
            seconds=time.perf_counter() - started,
            split=split,
            attacks=attacks,
            candidates=(),
        )

    if sample.varying_shape:
        return fallback(
            "the benign inputs differ in shape; the search needs inputs of one shape",
            SearchSplit(sample.count, 0, 0, 0, 0),
        )
    x = sample.inputs
    benign_events, n = sample.count, len(x)
    needed = max(MIN_CALIBRATION_EVENTS, math.ceil(1.0 / fpr))
    held = min(n // 2, n - needed)
    if held < MIN_HELD_BACK_EVENTS:
        return fallback(
            f"too few benign events to search: the search needs {needed + MIN_HELD_BACK_EVENTS} "
            f"({needed} to calibrate candidate thresholds at FPR {fpr:g}, "
            f"{MIN_HELD_BACK_EVENTS} to hold back), got {n}",
            SearchSplit(benign_events, n, n, 0, 0),
        )
    order = np.random.default_rng(seed).permutation(n)
    held_back_x = np.ascontiguousarray(x[order[:held]])
    threshold_x = np.ascontiguousarray(x[order[held:]])
    attacked_x = held_back_x[: limits.attacked_events]
    split = SearchSplit(benign_events, n, n - held, held, len(attacked_x))

    specs = candidate_specs(signature, budget)
    squeezer_columns = list(dict.fromkeys(item for spec in specs for item in spec.split(",")))
    parsed = parse_squeezer_spec(",".join(squeezer_columns), input_range=input_range)
    stats = FeatureStats(keep_sample=any(isinstance(s, QuantileGrid) for s in parsed))
    stats.update(threshold_x)
    squeezers = tuple(_fit(s, stats) for s in parsed)

    report(f"scoring {n} benign events with {len(squeezers)} squeezers")
    scorer = SqueezeScorer(
        build_squeeze_graph(model, squeezers, output_kind=output_kind, output_name=output_name),
        device=device,
    )
    threshold_distances, _ = _score(scorer, threshold_x, batch_size)
    held_back_distances, held_back_predictions = _score(scorer, held_back_x, batch_size)
    labels = held_back_predictions[: len(attacked_x)]

    report(f"crafting attacks on {len(attacked_x)} held-back events ({budget} budget)")
    crafted = (craft or _default_craft())(
        Path(model_path),
        attacked_x,
        labels,
        input_range=input_range,
        output_kind=output_kind,
        output_name=output_name,
        attacks=limits.attacks_for(signature),
        budget=budget,
        seed=seed,
    )
    names = _unique_names(crafted)
    attacks = tuple(
        SearchAttack(
            name=name,
            norm=str(s.norm),
            access=str(s.access),
            attempted=len(attacked_x),
            successful=len(s.x_adv),
        )
        for name, s in zip(names, crafted, strict=True)
    )
    if not any(a.successful for a in attacks):
        tried = ", ".join(a.name for a in attacks) or "none"
        return fallback(
            f"no attack fooled the model on {len(attacked_x)} held-back events "
            f"(attacks tried: {tried})",
            split,
            attacks,
        )

    report(f"scoring {len(specs)} candidate squeezer sets")
    attack_distances = {
        name: _score(scorer, np.asarray(s.x_adv, dtype=np.float32), batch_size)[0]
        for name, s in zip(names, crafted, strict=True)
        if len(s.x_adv)
    }
    candidates = evaluate_candidates(
        specs, squeezer_columns, threshold_distances, held_back_distances, attack_distances, fpr
    )
    limit = held_back_fpr_limit(fpr, split.threshold_events, split.held_back_events)
    best = choose_candidate(candidates, limit)
    return SqueezerSearch(
        chosen=best.spec,
        preset=preset,
        fallback_reason=None,
        budget=budget,
        seed=seed,
        seconds=time.perf_counter() - started,
        split=split,
        attacks=attacks,
        candidates=candidates,
        held_back_fpr_limit=limit,
    )
