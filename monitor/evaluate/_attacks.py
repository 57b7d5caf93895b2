"""The attacks of ``advmon evaluate`` and ``advmon calibrate``: IBM ART's, named and sized.

Black-box attacks query the bare ONNX model through ONNX Runtime; white-box attacks take
gradients of the same model converted to PyTorch (:mod:`._estimators`).

==============  =========  ==========  ============  ===================================
name            norms      access      kind          inputs
==============  =========  ==========  ============  ===================================
square          linf, l2   black-box   ε-bounded     images ``[N, C, H, W]``
hopskipjump     l2, linf   black-box   minimal-norm  any
simba           l2         black-box   minimal-norm  images ``[N, C, H, W]``
boundary        l2         black-box   minimal-norm  any
fgsm            linf, l2   white-box   ε-bounded     any
pgd             linf, l2   white-box   ε-bounded     any
cw              l2         white-box   minimal-norm  any
deepfool        l2         white-box   minimal-norm  any
autoattack      linf, l2   white-box   ε-bounded     any
==============  =========  ==========  ============  ===================================

The first norm of an attack is its default; ``hopskipjump:linf`` picks another. An
ε-bounded attack runs once per ε; a minimal-norm attack runs once, and each ε counts the
examples whose perturbation is at most ε.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from detectors import OutputKind, load_model
from monitor.evaluate._estimators import (
    OnnxClassifier,
    black_box_classifier,
    seed_everything,
    torch_threads,
    white_box_classifier,
)

__all__ = [
    "ATTACKS",
    "Access",
    "AdversarialSet",
    "AttackContext",
    "AttackDefinition",
    "AttackSpec",
    "BudgetName",
    "Norm",
    "Work",
    "check_budget",
    "craft_adversarial",
    "default_eps",
    "parse_attacks",
    "perturbation_norm",
    "run_attack",
    "samples_for",
    "within",
]

logger = logging.getLogger(__name__)

Norm = Literal["linf", "l2"]
Access = Literal["black-box", "white-box"]
BudgetName = Literal["small", "full"]

_EPS_FRACTIONS = (0.02, 0.05, 0.1, 0.2)
"""Default ε as fractions of the input range (L2: of the range times √d)."""
_SAMPLES: dict[BudgetName, int] = {"small": 100, "full": 500}
_BATCH = 128
_RANDOM_TRIES = 100
"""Noise draws a row may take to find a misclassified starting point (ART's init_size)."""
_DRAWS_PER_ROUND = 10
_NOISE_ELEMENTS = 1 << 24
"""Input elements of noise drawn at once (64 MiB of float32)."""
_NORM_TOLERANCE = 1e-5
"""Relative slack when a perturbation's norm is compared with ε (float32 rounding)."""


@dataclass(frozen=True)
class Work:
    """Model calls and rows one attack run costs for all its events (for time estimates)."""

    calls: float
    rows: float
    gradient_calls: float = 0.0
    gradient_rows: float = 0.0
    bookkeeping_seconds: float = 0.0
    """Time ART spends outside the model (numpy work between queries)."""


@dataclass(frozen=True)
class AttackContext:
    """What building an ART attack needs besides its classifier."""

    norm: Norm
    eps: float | None
    """The budget of an ε-bounded attack, in input units; ``None`` for minimal-norm ones."""
    budget: BudgetName
    input_range: tuple[float, float]
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def small(self) -> bool:
        """Whether the reduced strengths of the ``small`` budget apply."""
        return self.budget == "small"

    @property
    def art_norm(self) -> float:
        """The norm as ART spells it."""
        return np.inf if self.norm == "linf" else 2.0

    @property
    def bound(self) -> float:
        """ε, which an ε-bounded attack must have."""
        if self.eps is None:
            raise ValueError("eps: an ε-bounded attack needs a budget")
        return self.eps


@dataclass(frozen=True)
class AttackDefinition:
    """One ART attack as advmon runs it."""

    name: str
    norms: tuple[Norm, ...]
    """Norms it can work in; the first is the default."""
    access: Access
    bounded: bool
    """ε-bounded (run per ε) rather than minimal-norm (run once)."""
    images_only: bool
    """Applies only to images with a channel axis, ``[N, C, H, W]``."""
    build: Callable[[Any, AttackContext], Any]
    work: Callable[[AttackContext, int], Work]
    """Estimated model work of one run over that many events."""
    random_start: bool = False
    """Starts from noise the model misclassifies (HopSkipJump, Boundary), which advmon
    draws from numpy's seeded generator: ART draws it from an unseeded one."""
    requires: tuple[str, ...] = ()
    """Python packages ART needs for it beyond its own dependencies."""

    def missing(self) -> list[str]:
        """The packages of :attr:`requires` that are not installed."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


@dataclass(frozen=True)
class AttackSpec:
    """An attack picked for a run, in one of its norms.

    Examples
    --------
    >>> AttackSpec(ATTACKS["hopskipjump"], "linf").key
    'hopskipjump:linf'
    >>> AttackSpec(ATTACKS["hopskipjump"], "l2").key
    'hopskipjump'
    """

    definition: AttackDefinition
    norm: Norm

    @property
    def name(self) -> str:
        """The attack's name, without the norm."""
        return self.definition.name

    @property
    def key(self) -> str:
        """How ``--attacks`` names it: the name, plus ``:norm`` when not the default."""
        return self.name if self.norm == self.definition.norms[0] else f"{self.name}:{self.norm}"

    @property
    def access(self) -> Access:
        """Black-box or white-box."""
        return self.definition.access

    @property
    def bounded(self) -> bool:
        """Whether the attack runs once per ε."""
        return self.definition.bounded


# --- ART attacks, sized by budget -----------------------------------------------------


def _square(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import SquareAttack

    return SquareAttack(
        classifier,
        norm=context.art_norm,
        eps=context.bound,
        max_iter=100 if context.small else 1000,
        nb_restarts=1,
        batch_size=_BATCH,
        verbose=False,
    )


def _square_work(context: AttackContext, events: int) -> Work:
    iterations = 100 if context.small else 1000
    # Each iteration queries the events not fooled yet, and draws its squares in numpy.
    return Work(
        calls=2 * iterations * math.ceil(events / _BATCH),
        rows=iterations * events,
        bookkeeping_seconds=iterations * 4e-4,
    )


def _hopskipjump_strength(context: AttackContext) -> tuple[int, int, int]:
    """``max_iter``, ``max_eval`` and ``init_eval``."""
    return (10, 1000, 50) if context.small else (50, 10000, 100)


def _hopskipjump(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import HopSkipJump

    max_iter, max_eval, init_eval = _hopskipjump_strength(context)
    return HopSkipJump(
        classifier,
        batch_size=_BATCH,
        targeted=False,
        norm=context.art_norm,
        max_iter=max_iter,
        max_eval=max_eval,
        init_eval=init_eval,
        init_size=100,
        verbose=False,
    )


def _hopskipjump_work(context: AttackContext, events: int) -> Work:
    max_iter, max_eval, init_eval = _hopskipjump_strength(context)
    evaluations = sum(min(init_eval * math.sqrt(i), max_eval) for i in range(1, max_iter + 1))
    # Per iteration: the gradient estimate in batches, then a binary and a geometric search
    # of about 25 single queries.
    per_event_calls = 100 + max_iter * 25 + evaluations / _BATCH
    return Work(
        calls=events * per_event_calls,
        rows=events * (100 + evaluations + 25 * max_iter),
        bookkeeping_seconds=events * max_iter * 1e-3,
    )


def _simba_iterations(context: AttackContext) -> int:
    return 300 if context.small else 3000


def _simba(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import SimBA

    _, height, width = context.input_shape
    low, high = context.input_range
    return SimBA(
        classifier,
        # The DCT basis of ART's SimBA assumes square images.
        attack="dct" if height == width else "px",
        max_iter=_simba_iterations(context),
        epsilon=0.2 * (high - low),
        targeted=False,
        verbose=False,
    )


def _simba_work(context: AttackContext, events: int) -> Work:
    # Two single-row queries per iteration; most events fall within a few hundred.
    queries = events * min(_simba_iterations(context), 300)
    return Work(calls=queries, rows=queries)


def _boundary_strength(context: AttackContext) -> tuple[int, int, int]:
    """``max_iter``, ``num_trial`` and ``sample_size``: ART's trials and samples under
    ``full``, with 500 steps instead of its 5000 (which take hours for a few hundred
    events, as the attack never stops early)."""
    return (100, 10, 10) if context.small else (500, 25, 20)


def _boundary(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import BoundaryAttack

    max_iter, num_trial, sample_size = _boundary_strength(context)
    return BoundaryAttack(
        classifier,
        batch_size=_BATCH,
        targeted=False,
        max_iter=max_iter,
        num_trial=num_trial,
        sample_size=sample_size,
        init_size=100,
        verbose=False,
    )


def _boundary_work(context: AttackContext, events: int) -> Work:
    max_iter, num_trial, sample_size = _boundary_strength(context)
    # Each step tries candidates in batches of sample_size until enough are adversarial;
    # about num_trial such batches a step.
    calls = events * max_iter * num_trial
    return Work(calls=calls, rows=calls * sample_size)


def _fgsm(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import FastGradientMethod

    return FastGradientMethod(
        classifier,
        norm=context.art_norm,
        eps=context.bound,
        eps_step=context.bound,
        targeted=False,
        batch_size=_BATCH,
    )


def _fgsm_work(context: AttackContext, events: int) -> Work:
    return Work(calls=0, rows=0, gradient_calls=math.ceil(events / _BATCH), gradient_rows=events)


def _pgd_iterations(context: AttackContext) -> int:
    return 10 if context.small else 100


def _pgd(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    max_iter = _pgd_iterations(context)
    return ProjectedGradientDescent(
        classifier,
        norm=context.art_norm,
        eps=context.bound,
        # Madry et al.'s step: 2.5·ε spread over the iterations.
        eps_step=2.5 * context.bound / max_iter,
        max_iter=max_iter,
        targeted=False,
        num_random_init=0 if context.small else 1,
        batch_size=_BATCH,
        verbose=False,
    )


def _pgd_work(context: AttackContext, events: int) -> Work:
    steps = _pgd_iterations(context) + 1
    return Work(
        calls=0,
        rows=0,
        gradient_calls=steps * math.ceil(events / _BATCH),
        gradient_rows=steps * events,
    )


def _cw_strength(context: AttackContext) -> tuple[int, int]:
    """``binary_search_steps`` and ``max_iter``."""
    return (5, 10) if context.small else (10, 10)


def _cw(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import CarliniL2Method

    steps, max_iter = _cw_strength(context)
    return CarliniL2Method(
        classifier,
        confidence=0.0,
        targeted=False,
        learning_rate=0.1,
        binary_search_steps=steps,
        max_iter=max_iter,
        initial_const=1.0,
        batch_size=_BATCH,
        verbose=False,
    )


def _cw_work(context: AttackContext, events: int) -> Work:
    steps, max_iter = _cw_strength(context)
    # Each iteration takes class gradients and a line search of several forward passes.
    iterations = 12 * steps * max_iter
    calls = iterations * math.ceil(events / _BATCH)
    return Work(calls=0, rows=0, gradient_calls=calls, gradient_rows=iterations * events)


def _deepfool_iterations(context: AttackContext) -> int:
    return 50 if context.small else 100


def _deepfool(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import DeepFool

    return DeepFool(
        classifier,
        max_iter=_deepfool_iterations(context),
        # The overshoot of Moosavi-Dezfooli et al.: it carries the example clearly over
        # the boundary, where ONNX Runtime's arithmetic agrees with PyTorch's.
        epsilon=0.02,
        nb_grads=min(10, context.num_classes),
        batch_size=_BATCH,
        verbose=False,
    )


def _deepfool_work(context: AttackContext, events: int) -> Work:
    # Most events cross the boundary within a few iterations; each takes a gradient per
    # candidate class.
    iterations = 20 * min(10, context.num_classes)
    return Work(
        calls=0,
        rows=0,
        gradient_calls=iterations * math.ceil(events / _BATCH),
        gradient_rows=iterations * events,
    )


def _autoattack_strength(context: AttackContext) -> tuple[int, int]:
    """APGD's ``max_iter`` and Square's."""
    return (20, 100) if context.small else (100, 5000)


def _autoattack(classifier: Any, context: AttackContext) -> Any:
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    apgd_iter, square_iter = _autoattack_strength(context)
    eps = context.bound
    losses = ["cross_entropy"]
    if context.num_classes > 2:
        losses.append("difference_logits_ratio")
    attacks = [
        AutoProjectedGradientDescent(
            classifier,
            norm=context.art_norm,
            eps=eps,
            eps_step=2 * eps,
            max_iter=apgd_iter,
            targeted=False,
            nb_random_init=1,
            batch_size=_BATCH,
            loss_type=loss,
            verbose=False,
        )
        for loss in losses
    ]
    if len(context.input_shape) == 3:
        attacks.append(
            SquareAttack(
                classifier,
                norm=context.art_norm,
                eps=eps,
                max_iter=square_iter,
                batch_size=_BATCH,
                verbose=False,
            )
        )
    return AutoAttack(
        classifier,
        norm=context.art_norm,
        eps=eps,
        eps_step=2 * eps,
        attacks=attacks,
        batch_size=_BATCH,
        targeted=False,
    )


def _autoattack_work(context: AttackContext, events: int) -> Work:
    apgd_iter, square_iter = _autoattack_strength(context)
    runs = 2 if context.num_classes > 2 else 1
    gradient_rows = runs * (apgd_iter + 1) * events
    # Square runs on the events APGD left standing, few rows a step but every step.
    return Work(
        calls=square_iter * math.ceil(events / _BATCH),
        rows=square_iter * events / 4,
        gradient_calls=gradient_rows / min(events, _BATCH),
        gradient_rows=gradient_rows,
        bookkeeping_seconds=square_iter * 4e-3,
    )


def _definition(
    name: str,
    norms: tuple[Norm, ...],
    access: Access,
    *,
    bounded: bool,
    images_only: bool = False,
    random_start: bool = False,
    requires: tuple[str, ...] = (),
) -> AttackDefinition:
    build, work = _BUILDERS[name]
    return AttackDefinition(
        name, norms, access, bounded, images_only, build, work, random_start, requires
    )


_BUILDERS: dict[
    str, tuple[Callable[[Any, AttackContext], Any], Callable[[AttackContext, int], Work]]
] = {
    "square": (_square, _square_work),
    "hopskipjump": (_hopskipjump, _hopskipjump_work),
    "simba": (_simba, _simba_work),
    "boundary": (_boundary, _boundary_work),
    "fgsm": (_fgsm, _fgsm_work),
    "pgd": (_pgd, _pgd_work),
    "cw": (_cw, _cw_work),
    "deepfool": (_deepfool, _deepfool_work),
    "autoattack": (_autoattack, _autoattack_work),
}

ATTACKS: dict[str, AttackDefinition] = {
    definition.name: definition
    for definition in (
        _definition("square", ("linf", "l2"), "black-box", bounded=True, images_only=True),
        _definition("hopskipjump", ("l2", "linf"), "black-box", bounded=False, random_start=True),
        _definition("simba", ("l2",), "black-box", bounded=False, images_only=True),
        _definition("boundary", ("l2",), "black-box", bounded=False, random_start=True),
        _definition("fgsm", ("linf", "l2"), "white-box", bounded=True),
        _definition("pgd", ("linf", "l2"), "white-box", bounded=True),
        _definition("cw", ("l2",), "white-box", bounded=False),
        _definition("deepfool", ("l2",), "white-box", bounded=False),
        # ART's AutoAttack imports multiprocess to run its attacks in parallel.
        _definition(
            "autoattack", ("linf", "l2"), "white-box", bounded=True, requires=("multiprocess",)
        ),
    )
}
"""Every attack advmon runs, by name."""

_DEFAULTS: dict[tuple[bool, BudgetName], tuple[str, ...]] = {
    # Keyed by (images with a channel axis, budget).
    (True, "small"): ("square", "hopskipjump", "simba", "fgsm", "pgd", "cw", "deepfool"),
    (True, "full"): (
        "square",
        "hopskipjump",
        "simba",
        "boundary",
        "fgsm",
        "pgd",
        "cw",
        "deepfool",
        "autoattack",
    ),
    (False, "small"): (
        "hopskipjump",
        "hopskipjump:linf",
        "boundary",
        "fgsm",
        "pgd",
        "cw",
        "deepfool",
    ),
    (False, "full"): (
        "hopskipjump",
        "hopskipjump:linf",
        "boundary",
        "fgsm",
        "pgd",
        "cw",
        "deepfool",
        "autoattack",
    ),
}


def _has_channels(input_shape: Sequence[int | None]) -> bool:
    return len(input_shape) == 3


def check_budget(budget: str) -> BudgetName:
    """``budget``, if it is ``small`` or ``full``; a ``ValueError`` naming it otherwise."""
    if budget not in get_args(BudgetName):
        raise ValueError(f"budget must be 'small' or 'full', got {budget!r}")
    return budget  # type: ignore[return-value]


def samples_for(budget: BudgetName) -> int:
    """How many events each attack attacks at most under ``budget``.

    Examples
    --------
    >>> samples_for("small")
    100
    """
    return _SAMPLES[check_budget(budget)]


def parse_attacks(
    spec: str | None, input_shape: Sequence[int | None], budget: BudgetName = "small"
) -> list[AttackSpec]:
    """The attacks ``spec`` names, for a model taking ``input_shape`` (no batch axis).

    ``spec`` is comma-separated names, each maybe with a norm (``hopskipjump:linf``);
    ``None`` picks the defaults for the input and the budget: every attack that applies,
    with Boundary and AutoAttack under the ``full`` budget only for images, and
    AutoAttack only where the ``multiprocess`` package ART imports for it is installed.
    White-box attacks are listed whether or not they can run here; the caller drops them
    when the model cannot be converted.

    Examples
    --------
    >>> [a.key for a in parse_attacks("square, hopskipjump:linf", [1, 8, 8])]
    ['square', 'hopskipjump:linf']
    >>> parse_attacks("square", [30])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: attacks: square applies to images shaped [N, C, H, W] only; for this model use: ...
    """
    budget = check_budget(budget)
    channels = _has_channels(input_shape)
    applicable = [d.name for d in ATTACKS.values() if channels or not d.images_only]
    if spec is None:
        tokens: list[str] = [
            key for key in _DEFAULTS[channels, budget] if not ATTACKS[key.split(":")[0]].missing()
        ]
    else:
        tokens = [token.strip().lower() for token in spec.split(",")]
        if not any(tokens):
            raise ValueError(f"attacks: no attack named; valid names: {', '.join(applicable)}")
    chosen: list[AttackSpec] = []
    for token in tokens:
        if not token:
            raise ValueError(f"attacks: empty name in {spec!r}")
        name, _, norm = token.partition(":")
        definition = ATTACKS.get(name)
        if definition is None:
            raise ValueError(
                f"attacks: unknown attack {name!r}; valid names: {', '.join(applicable)}"
            )
        if definition.images_only and not channels:
            raise ValueError(
                f"attacks: {name} applies to images shaped [N, C, H, W] only; for this model "
                f"use: {', '.join(applicable)}"
            )
        missing = definition.missing()
        if missing:
            raise ValueError(
                f"attacks: {name} needs the Python package {', '.join(missing)}, which ART "
                f"imports for it; install it (pip install {' '.join(missing)}) or leave "
                f"{name} out"
            )
        picked = norm or definition.norms[0]
        if picked not in definition.norms:
            raise ValueError(
                f"attacks: {name} has no norm {picked!r}; it takes {', '.join(definition.norms)}"
            )
        attack = AttackSpec(definition, picked)
        if any(a.key == attack.key for a in chosen):
            raise ValueError(f"attacks: {attack.key} is named twice")
        chosen.append(attack)
    return chosen


def default_eps(input_range: tuple[float, float], elements: int) -> dict[Norm, list[float]]:
    """Default ε values in input units: L∞ ``r·(0.02, 0.05, 0.1, 0.2)`` and L2 those times
    ``√d``, where ``r`` is the width of the input range and ``d`` the input's elements.

    Examples
    --------
    >>> default_eps((0.0, 1.0), 64)
    {'linf': [0.02, 0.05, 0.1, 0.2], 'l2': [0.16, 0.4, 0.8, 1.6]}
    """
    low, high = input_range
    width = high - low
    if not width > 0:
        raise ValueError(f"input_range must have high > low, got {list(input_range)}")
    if elements < 1:
        raise ValueError(f"elements must be at least 1, got {elements}")
    root = math.sqrt(elements)
    return {
        "linf": [round(width * f, 12) for f in _EPS_FRACTIONS],
        "l2": [round(width * root * f, 12) for f in _EPS_FRACTIONS],
    }


def perturbation_norm(x: np.ndarray, x_adv: np.ndarray, norm: Norm) -> np.ndarray:
    """The L∞ or L2 norm of each row's perturbation ``x_adv - x`` (float64 ``[N]``).

    Examples
    --------
    >>> perturbation_norm(np.zeros((1, 2)), np.array([[3.0, 4.0]]), "l2")
    array([5.])
    """
    delta = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    if norm == "linf":
        return np.asarray(np.abs(delta).max(axis=1, initial=0.0))
    return np.asarray(np.sqrt((delta**2).sum(axis=1)))


def within(norms: np.ndarray, eps: float) -> np.ndarray:
    """Which norms are at most ``eps``, with a little slack for float32 rounding."""
    return np.asarray(norms <= eps * (1 + _NORM_TOLERANCE) + 1e-9)


@contextlib.contextmanager
def _quiet_art() -> Iterator[None]:
    """Hold back ART's per-example log lines (e.g. the Boundary attack's "adversarial
    example found but not optimal") and numpy warnings while an attack runs: the report
    says the same in figures."""
    art_logger = logging.getLogger("art")
    before = art_logger.level
    art_logger.setLevel(logging.ERROR)
    try:
        # ART's numpy divides by zero-norm steps now and then and recovers; its
        # RuntimeWarnings say nothing about the result, which is checked on the model.
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        art_logger.setLevel(before)


def run_attack(
    attack: AttackSpec, classifier: Any, x: np.ndarray, y: np.ndarray, context: AttackContext
) -> np.ndarray:
    """Run ``attack`` with ART on the rows ``x`` of true classes ``y``; the adversarial
    inputs, one per row (a row the attack could not move comes back as it was).

    Seed the random generators (:func:`seed_everything`) before calling, for repeatable
    results.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    one_hot = np.eye(context.num_classes, dtype=np.float32)[y]
    art_attack = attack.definition.build(classifier, context)
    if not attack.definition.random_start:
        with torch_threads(), _quiet_art():
            x_adv = art_attack.generate(x=x, y=one_hot)
        return np.asarray(x_adv, dtype=np.float32).reshape(x.shape)
    starts, found = _random_starts(classifier, x, context.input_range)
    x_adv = x.copy()
    if found.any():
        with _quiet_art():
            moved = art_attack.generate(x=x[found], y=one_hot[found], x_adv_init=starts[found])
        x_adv[found] = np.asarray(moved, dtype=np.float32).reshape(x[found].shape)
    return x_adv


def _random_starts(
    classifier: Any, x: np.ndarray, input_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """For each row, uniform noise over the input range that the model classifies
    differently, as ART's HopSkipJump and Boundary draw it (up to
    :data:`_RANDOM_TRIES` draws a row); and which rows got one."""
    predicted = np.asarray(classifier.predict(x, batch_size=_BATCH)).argmax(axis=1)
    starts = x.copy()
    found = np.zeros(len(x), dtype=bool)
    low, high = input_range
    elements = int(np.prod(x.shape[1:]))
    rows_per_chunk = max(1, _NOISE_ELEMENTS // (_DRAWS_PER_ROUND * elements))
    for _ in range(_RANDOM_TRIES // _DRAWS_PER_ROUND):
        pending = np.flatnonzero(~found)
        for chunk_start in range(0, len(pending), rows_per_chunk):
            rows = pending[chunk_start : chunk_start + rows_per_chunk]
            shape = (len(rows), _DRAWS_PER_ROUND, *x.shape[1:])
            noise = np.random.uniform(low, high, size=shape).astype(np.float32)
            flat = noise.reshape(-1, *x.shape[1:])
            classes = np.asarray(classifier.predict(flat, batch_size=_BATCH)).argmax(axis=1)
            differs = classes.reshape(len(rows), _DRAWS_PER_ROUND) != predicted[rows, None]
            for row, hits, draws in zip(rows, differs, noise, strict=True):
                if hits.any():
                    starts[row] = draws[int(hits.argmax())]
                    found[row] = True
        if found.all():
            break
    return starts, found


@dataclass(frozen=True)
class AdversarialSet:
    """The successful adversarial examples of one attack (prediction ≠ label)."""

    name: str
    norm: str
    access: Access
    x_adv: np.ndarray
    """``[M, *input_shape]`` float32."""
    index: np.ndarray
    """``[M]`` int64: the row of the caller's ``x`` each example was made from."""


def craft_adversarial(
    model_path: str | os.PathLike[str],
    x: np.ndarray,
    labels: np.ndarray | None,
    *,
    input_range: tuple[float, float],
    output_kind: OutputKind,
    output_name: str | None = None,
    attacks: str | None = None,
    budget: BudgetName = "small",
    seed: int = 0,
) -> list[AdversarialSet]:
    """Craft adversarial examples against the ONNX model at ``model_path``.

    The rows of ``x`` the model classifies as ``labels`` (its own predictions when
    ``labels`` is ``None``) are attacked, at most the budget's sample count of them
    (:func:`samples_for`, drawn with ``seed``). ε-bounded attacks use the largest
    default ε (:func:`default_eps`: a fifth of the input range in L∞); minimal-norm
    attacks keep every success. White-box attacks run when the model converts to PyTorch
    (see :func:`monitor.evaluate._estimators.white_box_classifier`) and are left out, with
    the reason logged, when it does not. Attacks are those of :func:`parse_attacks`.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    model = OnnxClassifier(load_model(str(model_path)), output_kind, output_name)
    expected = model.signature.input_shape
    if x.ndim != len(expected) + 1 or any(
        d is not None and d != s for d, s in zip(expected, x.shape[1:], strict=True)
    ):
        raise ValueError(
            f"x must be shaped [N, {', '.join(str(d or '?') for d in expected)}], "
            f"got {list(x.shape)}"
        )
    predictions = model.predict(x)
    truth = predictions if labels is None else np.asarray(labels, dtype=np.int64)
    if truth.shape != (len(x),):
        raise ValueError(f"labels must hold one class per row of x, got shape {truth.shape}")
    chosen = parse_attacks(attacks, x.shape[1:], budget)
    correct = np.flatnonzero(predictions == truth)
    rng = np.random.default_rng(seed)
    limit = samples_for(budget)
    if len(correct) > limit:
        correct = np.sort(rng.choice(correct, size=limit, replace=False))
    if len(correct) == 0:
        return []
    rows, y = x[correct], truth[correct]
    input_shape = tuple(int(d) for d in x.shape[1:])
    num_classes = int(model.signature.num_classes or model.scores(x[:1]).shape[1])
    classifiers: dict[Access, Any] = {
        "black-box": black_box_classifier(model, input_shape, input_range)
    }
    if any(a.access == "white-box" for a in chosen):
        white_box = white_box_classifier(model, rows, input_range)
        if white_box.available:
            classifiers["white-box"] = white_box.classifier
        else:
            logger.info("white-box attacks left out: %s", white_box.reason)
    eps = default_eps(input_range, int(np.prod(input_shape)))
    crafted: list[AdversarialSet] = []
    for attack in chosen:
        classifier = classifiers.get(attack.access)
        if classifier is None:
            continue
        bound = eps[attack.norm][-1] if attack.bounded else None
        context = AttackContext(attack.norm, bound, budget, input_range, input_shape, num_classes)
        seed_everything(seed)
        x_adv = run_attack(attack, classifier, rows, y, context)
        fooled = model.predict(x_adv) != y
        if bound is not None:
            fooled &= within(perturbation_norm(rows, x_adv, attack.norm), bound)
        crafted.append(
            AdversarialSet(attack.name, attack.norm, attack.access, x_adv[fooled], correct[fooled])
        )
    return crafted
