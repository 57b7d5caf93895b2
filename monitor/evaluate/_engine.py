"""``advmon evaluate``'s engine: attack a model on labelled clean events and measure it.

:func:`evaluate` takes these steps:

1. Load the model (and the detector, which must be calibrated for this very model file)
   and read the events with their true classes; bad lines are reported and skipped.
2. Measure the clean events: accuracy, and the detector's false-positive rate.
3. Pick the attacks (:func:`monitor.evaluate._attacks.parse_attacks`); when white-box
   ones are among them, convert the model to PyTorch and check it, or record why not.
4. Time model calls and announce the plan with an estimate of each step's seconds.
5. Attack a seeded sample of the events (at most the budget's sample count). A
   minimal-norm attack runs once and each ε counts the successes within it; an
   ε-bounded attack runs per ε, and an event it broke at a smaller ε stays broken at a
   larger one (that perturbation is within the larger budget too), so robust accuracy
   never grows with ε.
6. Certify the sample with randomized smoothing.
7. Time the bare model against the detector's fused graph on the clean events.

Numpy's global generator and torch's are seeded before every attack run and before
certification, so one seed gives one report (bar ``created_at`` and ``seconds``).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from detectors import (
    Detector,
    DetectorConfig,
    Device,
    InputKind,
    ModelHashMismatchError,
    OutputKind,
    detect_output_kind,
    file_sha256,
    inspect_model,
    load_model,
)
from monitor.evaluate._attacks import (
    AttackContext,
    AttackSpec,
    BudgetName,
    Norm,
    check_budget,
    default_eps,
    parse_attacks,
    run_attack,
    samples_for,
)
from monitor.evaluate._data import LabelledEvents, default_input_range, read_labelled_events
from monitor.evaluate._estimators import (
    ModelTiming,
    OnnxClassifier,
    WhiteBox,
    black_box_classifier,
    seed_everything,
    torch_threads,
    white_box_classifier,
)
from monitor.evaluate._metrics import (
    AttackOutcome,
    Detections,
    attack_outcome,
    rate,
    success_within,
)
from monitor.evaluate._progress import EvaluationProgress, NoProgress, PlannedStep
from monitor.evaluate._smoothing import (
    CertifiedAccuracy,
    SmoothingPlan,
    certified_accuracy,
    smoothing_plan,
)
from monitor.evaluate._types import AttackScores, Evaluation
from monitor.offline import BadLine

__all__ = ["check_eps", "evaluate"]

_REPORT_FORMAT = "advmon-robustness-report"
_REPORT_FORMAT_VERSION = 1
_NO_WHITE_BOX = "not requested: no white-box attack was asked for"
_CHECK_ROWS = 256
"""Events the PyTorch conversion is checked on, and the batch the cost is timed on."""
_COST_REPEATS = 20
_SMOOTHING = "smoothing"
_COST = "cost"


def _advmon_version() -> str:
    try:
        return metadata.version("advmon")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_eps(eps: Mapping[str, Sequence[float]] | None) -> dict[Norm, list[float]]:
    """The ε values given, ascending and without repeats, per norm; ``ValueError`` for
    an unknown norm or a value that is not a finite positive number."""
    if eps is None:
        return {}
    if not isinstance(eps, Mapping):
        raise ValueError(f'eps must map "linf" and/or "l2" to lists of values, got {eps!r}')
    checked: dict[Norm, list[float]] = {}
    for name, values in eps.items():
        norm = _norm(name)
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"eps: {norm} needs a non-empty list of values, got {values!r}")
        numbers: list[float] = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"eps: {norm} values must be numbers, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"eps: {norm} values must be finite and positive, got {value!r}")
            numbers.append(float(value))
        checked[norm] = sorted(set(numbers))
    return checked


def _norm(name: str) -> Norm:
    if name == "linf":
        return "linf"
    if name == "l2":
        return "l2"
    raise ValueError(f'eps: unknown norm {name!r}; use "linf" or "l2"')


def _num_classes(
    model: onnx.ModelProto, declared: int | None, input_shape: Sequence[int | None]
) -> int:
    """The class count: declared by the output shape, or found by running the model."""
    if declared is not None:
        return declared
    if any(d is None for d in input_shape):
        raise ValueError(
            "the model declares neither its class count nor a fixed input shape; "
            "re-export it with a fixed number of classes in its output shape"
        )
    probe = OnnxClassifier(model, "logits")
    shape = [1, *(int(d) for d in input_shape if d is not None)]
    return int(probe.scores(np.zeros(shape, dtype=np.float32)).shape[1])


def _detections(detector: Detector | None, x: np.ndarray) -> Detections | None:
    """The detector's verdicts on ``x`` (``None`` without a detector)."""
    if detector is None:
        return None
    scores, flagged = [], []
    for start in range(0, len(x), _CHECK_ROWS):
        result = detector.score(x[start : start + _CHECK_ROWS])
        scores.append(result.scores.score)
        flagged.append(result.flagged)
    if not scores:
        return Detections(np.zeros(0, np.float32), np.zeros(0, bool))
    return Detections(np.concatenate(scores), np.concatenate(flagged))


@dataclass(frozen=True)
class _Setup:
    """Everything loaded and measured before the first attack."""

    model_path: Path
    model_sha256: str
    model: OnnxClassifier
    detector: Detector | None
    events: LabelledEvents
    input_range: tuple[float, float]
    input_kind: InputKind
    num_classes: int
    correct: np.ndarray
    clean: Detections | None
    sample: np.ndarray
    """Indices of the attacked events, ascending."""
    budget: BudgetName
    seed: int

    @property
    def x(self) -> np.ndarray:
        """The attacked events' inputs."""
        return np.asarray(self.events.inputs[self.sample])

    @property
    def y(self) -> np.ndarray:
        """The attacked events' true classes."""
        return np.asarray(self.events.labels[self.sample])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape (no batch axis), as the events have it."""
        return tuple(int(d) for d in self.events.inputs.shape[1:])

    def context(self, attack: AttackSpec, eps: float | None) -> AttackContext:
        """What building ``attack`` at ``eps`` needs."""
        return AttackContext(
            attack.norm, eps, self.budget, self.input_range, self.input_shape, self.num_classes
        )

    def detections(self, x: np.ndarray) -> Detections | None:
        """The detector's verdicts on ``x`` (``None`` without a detector)."""
        return _detections(self.detector, x)


def _load(
    model_path: str | os.PathLike[str],
    events_path: str | os.PathLike[str],
    *,
    detector_path: str | os.PathLike[str] | None,
    budget: BudgetName,
    seed: int,
    label_field: str,
    device: Device,
    output_name: str | None,
    input_range: tuple[float, float] | None,
    on_bad_line: Callable[[BadLine], None] | None,
) -> _Setup:
    model_file = Path(model_path)
    model = load_model(str(model_file))
    model_sha256 = file_sha256(model_file)
    detector: Detector | None = None
    if detector_path is not None:
        # The model given is the one scored: the detector file only has to name the same
        # bytes (its own copy of the model may be elsewhere, or gone).
        config = DetectorConfig.load(detector_path, verify_model=False)
        if config.model_sha256 != model_sha256:
            raise ModelHashMismatchError(
                f"the detector {detector_path} was calibrated for another model "
                f"(sha256 {config.model_sha256[:12]}…), not {model_file}; give the model it "
                "was calibrated for, or calibrate a detector for this one"
            )
        detector = Detector(config, model, device=device, spin_wait=False)
        output_name = output_name or detector.config.output_name
    signature = inspect_model(model, output_name)
    num_classes = _num_classes(model, signature.num_classes, signature.input_shape)
    events = read_labelled_events(
        events_path,
        signature.input_shape,
        num_classes,
        label_field=label_field,
        on_bad_line=on_bad_line,
        value_range=detector.config.accepted_range if detector is not None else None,
    )
    if len(events.labels) == 0:
        raise ValueError(
            f"events_path: {events_path} holds no valid event with a true class in "
            f"{label_field!r} ({len(events.bad_lines)} bad lines)"
        )
    output_kind: OutputKind
    given_range = input_range
    if detector is not None:
        if given_range is not None and tuple(given_range) != tuple(detector.config.input_range):
            raise ValueError(
                f"input_range: {list(given_range)} is not the detector's "
                f"{list(detector.config.input_range)}; leave it out to use the detector's"
            )
        low, high = detector.config.input_range
        if signature.input_kind == "tabular":
            # Tabular events may leave the range seen in calibration; the attacks clip to
            # the range, which must not move the events themselves.
            seen_low, seen_high = events.observed_range
            low, high = min(low, seen_low), max(high, seen_high)
        input_range = (low, high)
        output_kind = detector.config.output_kind
    else:
        if given_range is not None:
            low, high = events.observed_range
            if low < given_range[0] or high > given_range[1]:
                raise ValueError(
                    f"input_range: the events' values span [{low:g}, {high:g}], outside "
                    f"the given range {list(given_range)}"
                )
            input_range = (float(given_range[0]), float(given_range[1]))
        else:
            input_range = default_input_range(signature.input_kind, events.observed_range)
        output_kind = signature.output_kind or detect_output_kind(
            model, signature.output_name, events.inputs[:_CHECK_ROWS]
        )
    bare = OnnxClassifier(model, output_kind, output_name, device)
    correct = bare.predict(events.inputs) == events.labels
    limit = min(samples_for(budget), len(events.labels))
    sample = np.sort(
        np.random.default_rng(seed).choice(len(events.labels), size=limit, replace=False)
    )
    return _Setup(
        model_path=model_file,
        model_sha256=model_sha256,
        model=bare,
        detector=detector,
        events=events,
        input_range=input_range,
        input_kind=signature.input_kind,
        num_classes=num_classes,
        correct=correct,
        clean=_detections(detector, events.inputs),
        sample=sample,
        budget=budget,
        seed=seed,
    )


def _check_eps_fit(setup: _Setup, eps: Mapping[Norm, Sequence[float]]) -> None:
    """Refuse an ε no perturbation inside the input range can reach: the whole range in
    every element (L∞: its width; L2: its width times √d)."""
    width = setup.input_range[1] - setup.input_range[0]
    largest = {"linf": width, "l2": width * math.sqrt(float(np.prod(setup.input_shape)))}
    for norm, values in eps.items():
        beyond = [value for value in values if value > largest[norm] * (1 + 1e-9)]
        if beyond:
            raise ValueError(
                f"eps: {norm} ε {beyond[0]:g} is larger than any perturbation inside the "
                f"input range [{setup.input_range[0]:g}, {setup.input_range[1]:g}] "
                f"({largest[norm]:.4g}); give ε in the model's input units"
            )


def _smoothing_range(setup: _Setup, eps: Mapping[Norm, Sequence[float]]) -> tuple[float, float]:
    """The range whose width scales randomized smoothing's σ and radii.

    For images, the input range. A tabular model's features share no unit, so its σ is
    the median L2 ε the user gave (the median L∞ ε times √d when only L∞ was given): the
    range is four times that wide, as σ is a quarter of the width.
    """
    if setup.input_kind != "tabular":
        return setup.input_range
    if eps.get("l2"):
        sigma = float(np.median(eps["l2"]))
    else:
        sigma = float(np.median(eps["linf"])) * math.sqrt(float(np.prod(setup.input_shape)))
    return (0.0, 4.0 * sigma)


def _median_seconds(call: Callable[[], Any], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _timing(setup: _Setup, black_box: Any, white_box: WhiteBox) -> ModelTiming:
    """Time one-row and batched calls of the classifiers the attacks query."""
    x = setup.x
    rows = min(len(x), 128)
    one = _median_seconds(lambda: black_box.predict(x[:1]), 5)
    many = _median_seconds(lambda: black_box.predict(x[:rows]), 5)
    timing = ModelTiming(one, max(many - one, 0.0) / max(rows - 1, 1))
    if white_box.classifier is not None:
        classifier = white_box.classifier
        labels = np.eye(setup.num_classes, dtype=np.float32)[setup.y]
        grad_rows = min(rows, 32)
        with torch_threads():
            grad_one = _median_seconds(lambda: classifier.loss_gradient(x[:1], labels[:1]), 3)
            grad_many = _median_seconds(
                lambda: classifier.loss_gradient(x[:grad_rows], labels[:grad_rows]), 3
            )
        timing = ModelTiming(
            timing.call_seconds,
            timing.row_seconds,
            grad_one,
            max(grad_many - grad_one, 0.0) / max(grad_rows - 1, 1),
        )
    return timing


def _attack_outcomes(
    setup: _Setup,
    attack: AttackSpec,
    classifier: Any,
    eps_values: Sequence[float],
    on_eps: Callable[[int], None],
) -> list[AttackOutcome]:
    """The attack's outcome at each ε, ascending."""
    x, y = setup.x, setup.y
    correct = setup.correct[setup.sample]
    outcomes: list[AttackOutcome] = []

    def outcome(
        eps: float, x_adv: np.ndarray, success: np.ndarray, adversarial: Detections | None
    ) -> AttackOutcome:
        return attack_outcome(
            name=attack.name,
            norm=attack.norm,
            access=attack.access,
            eps=eps,
            x=x,
            x_adv=x_adv,
            correct=correct,
            success=success,
            input_range=setup.input_range,
            adversarial=adversarial,
            clean=setup.clean,
        )

    if not attack.bounded:
        seed_everything(setup.seed)
        x_adv = run_attack(attack, classifier, x, y, setup.context(attack, None))
        fooled = setup.model.predict(x_adv) != y
        adversarial = setup.detections(x_adv)
        for eps in eps_values:
            success = success_within(x, x_adv, correct, fooled, attack.norm, eps)
            outcomes.append(outcome(eps, x_adv, success, adversarial))
        on_eps(1)
        return outcomes

    best = x.copy()
    broken = np.zeros(len(x), dtype=bool)
    for done, eps in enumerate(eps_values, start=1):
        seed_everything(setup.seed)
        x_adv = run_attack(attack, classifier, x, y, setup.context(attack, eps))
        fooled = setup.model.predict(x_adv) != y
        success = success_within(x, x_adv, correct, fooled, attack.norm, eps)
        # An event broken at a smaller ε keeps that perturbation unless this run broke it too.
        take = (success | ~broken).reshape(-1, *([1] * (x.ndim - 1)))
        best = np.where(take, x_adv, best)
        broken |= success
        outcomes.append(outcome(eps, best, broken.copy(), setup.detections(best)))
        on_eps(done)
    return outcomes


def _per_class(setup: _Setup, final: Sequence[AttackOutcome]) -> list[dict[str, Any]]:
    """Per true class: clean accuracy, worst robust accuracy over the attacks at their
    largest ε, and detection rate over those attacks' successes."""
    labels, attacked = setup.events.labels, setup.y
    rows: list[dict[str, Any]] = []
    for label in range(setup.num_classes):
        in_class = labels == label
        attacked_in_class = attacked == label
        robust = [
            float(outcome.robust[attacked_in_class].mean())
            for outcome in final
            if attacked_in_class.any()
        ]
        flagged = [
            outcome.detected.flagged[attacked[outcome.success] == label]
            for outcome in final
            if outcome.detected is not None
        ]
        detection = rate(np.concatenate(flagged)) if flagged else None
        rows.append(
            {
                "label": label,
                "n": int(in_class.sum()),
                "clean_accuracy": rate(setup.correct[in_class]),
                "robust_accuracy": min(robust) if robust else None,
                "detection_rate": detection,
            }
        )
    return rows


def _cost(setup: _Setup) -> dict[str, Any]:
    """Milliseconds per event of the bare model and of the detector's fused graph."""
    batch = setup.events.inputs[:_CHECK_ROWS]
    model_ms = setup.model.time_call(batch, _COST_REPEATS) / len(batch) * 1000
    detector_ms: float | None = None
    ratio: float | None = None
    if setup.detector is not None:
        detector = setup.detector
        detector_ms = _median_seconds(lambda: detector.score(batch), _COST_REPEATS)
        detector_ms = detector_ms / len(batch) * 1000
        ratio = detector_ms / model_ms if model_ms > 0 else None
    return {
        "provider": setup.model.provider,
        "model_ms_per_event": model_ms,
        "detector_ms_per_event": detector_ms,
        "ratio": ratio,
    }


def _plan(
    setup: _Setup,
    attacks: Sequence[AttackSpec],
    eps_values: Mapping[Norm, Sequence[float]],
    timing: ModelTiming,
    smoothing: SmoothingPlan,
) -> list[PlannedStep]:
    """The steps of the evaluation, each with its estimated seconds: the attacks in
    order, then smoothing, then the cost measurement."""
    n = len(setup.sample)
    steps: list[PlannedStep] = []
    for attack in attacks:
        runs = len(eps_values[attack.norm]) if attack.bounded else 1
        work = attack.definition.work(setup.context(attack, 1.0), n)
        seconds = runs * timing.seconds(
            work.calls,
            work.rows,
            work.gradient_calls,
            work.gradient_rows,
            work.bookkeeping_seconds,
        )
        description = f"{attack.key} ({attack.norm}, {attack.access})"
        steps.append(PlannedStep(attack.key, description, runs, seconds))
    sigmas = len(smoothing.sigmas)
    # ART draws the noise and counts votes per event: about as long again as the model.
    smoothing_seconds = 2 * timing.seconds(calls=sigmas * n * 2, rows=smoothing.rows(n))
    steps.append(PlannedStep(_SMOOTHING, "randomized smoothing", sigmas, smoothing_seconds))
    cost_rows = min(len(setup.events.labels), _CHECK_ROWS)
    cost_seconds = timing.seconds(calls=_COST_REPEATS * 2, rows=_COST_REPEATS * cost_rows * 3)
    steps.append(PlannedStep(_COST, "cost of the detector", 1, cost_seconds))
    return steps


def _report(
    setup: _Setup,
    *,
    model_path: str | os.PathLike[str],
    events_path: str | os.PathLike[str],
    detector_path: str | os.PathLike[str] | None,
    attacks: Sequence[AttackSpec],
    eps_values: Mapping[Norm, Sequence[float]],
    white_box: WhiteBox,
    command: str,
    outcomes: Sequence[AttackOutcome],
    final: Sequence[AttackOutcome],
    certified: Sequence[CertifiedAccuracy],
    cost: dict[str, Any],
) -> dict[str, Any]:
    """The content of report.json (``seconds`` still 0)."""
    detector, clean, events = setup.detector, setup.clean, setup.events
    signature = setup.model.signature
    return {
        "format": _REPORT_FORMAT,
        "format_version": _REPORT_FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "advmon_version": _advmon_version(),
        "model": {
            "path": str(model_path),
            "sha256": setup.model_sha256,
            "input_shape": [None, *signature.input_shape],
            "num_classes": setup.num_classes,
            "input_kind": signature.input_kind,
            "input_range": list(setup.input_range),
            "output_kind": setup.model.output_kind,
        },
        "events": {
            "path": str(events_path),
            "sha256": events.sha256,
            "n_valid": len(events.labels),
            "n_bad_lines": len(events.bad_lines),
            "label_field": events.label_field,
        },
        "settings": {
            "attacks": [a.key for a in attacks],
            "eps": {norm: list(eps_values[norm]) for norm in sorted({a.norm for a in attacks})},
            "budget": setup.budget,
            "seed": setup.seed,
            "samples": len(setup.sample),
            "white_box": white_box.reason,
            "command": command,
        },
        "clean": {"n": len(events.labels), "accuracy": float(setup.correct.mean())},
        "detector": None
        if detector is None or clean is None
        else {
            "path": str(detector_path),
            "squeezers": detector.config.squeezer_spec,
            "threshold": detector.threshold,
            "target_fpr": detector.config.target_fpr,
            "clean_fpr": float(clean.flagged.mean()),
        },
        "cost": cost,
        "attacks": [outcome.to_dict() for outcome in outcomes],
        "certified": [row.to_dict() for row in certified],
        "per_class": _per_class(setup, final),
        "seconds": 0.0,
    }


def evaluate(
    model_path: str | os.PathLike[str],
    events_path: str | os.PathLike[str],
    *,
    detector_path: str | os.PathLike[str] | None = None,
    attacks: str | None = None,
    eps: Mapping[str, Sequence[float]] | None = None,
    budget: BudgetName = "small",
    seed: int = 0,
    label_field: str = "label",
    device: Device = "cpu",
    output_name: str | None = None,
    input_range: tuple[float, float] | None = None,
    command: str = "",
    on_bad_line: Callable[[BadLine], None] | None = None,
    progress: EvaluationProgress | None = None,
) -> Evaluation:
    """Attack the ONNX model at ``model_path`` on the labelled events of ``events_path``.

    Parameters
    ----------
    model_path, events_path
        The model and a JSON-lines file of native inference events, each with its true
        class in ``label_field``.
    detector_path
        A detector file from ``advmon calibrate`` for this model: adds its clean
        false-positive rate, detection rates, ROC-AUCs and cost.
    attacks
        Comma-separated attack names (see :mod:`monitor.evaluate._attacks`); by default
        every attack that applies to the model and the budget.
    eps
        ε values per norm, ``{"linf": [...], "l2": [...]}`` in input units; a norm left
        out gets the defaults of :func:`monitor.evaluate._attacks.default_eps`.
    budget
        ``small`` (at most 100 events, reduced strengths: seconds to a minute on two
        cores for a small model) or ``full`` (500 events, ART's default strengths).
    seed
        Seeds the sample of events, the attacks and the smoothing noise.
    device
        ONNX Runtime's device for the model and the detector (torch follows it).
    input_range
        The model's valid input range (the attacks clip to it; ε defaults scale with it).
        By default the detector's, else for images the usual range ([0, 1], [0, 255] or
        [-1, 1]) that holds the events' values, for tabular inputs the values' range.
    command
        The command line, recorded in the report's settings.
    on_bad_line
        Called with each skipped line of the events file, in file order.
    progress
        Receives the plan and the progress of each step (:class:`EvaluationProgress`).

    Returns the report (valid against ``robustness_report.schema.json``) with the
    detector's raw scores for the plots. Raises ``ValueError`` for a bad argument or an
    events file without a valid labelled event, :class:`detectors.DetectorError` for a
    model or detector file that cannot be used.

    Examples
    --------
    >>> import tempfile
    >>> import onnx, orjson
    >>> from monitor.demo.model import load_digits_data, mlp_to_onnx, train_mlp
    >>> data = load_digits_data()
    >>> events = b"".join(
    ...     orjson.dumps({"event_id": str(i), "model_id": "digits", "input": x.tolist(),
    ...                   "label": int(y)}) + b"\\n"
    ...     for i, (x, y) in enumerate(zip(data.test_x, data.test_y))
    ... )
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     model_path, events_path = Path(folder) / "digits.onnx", Path(folder) / "events.jsonl"
    ...     onnx.save(mlp_to_onnx(train_mlp(data.train_x, data.train_y)), model_path)
    ...     _ = events_path.write_bytes(events)
    ...     report = evaluate(model_path, events_path, attacks="fgsm").report
    >>> report["clean"]["n"], report["settings"]["samples"], report["settings"]["white_box"]
    (450, 100, 'used')
    >>> [(row["eps"], round(row["robust_accuracy"], 2)) for row in report["attacks"]]
    [(0.02, 0.93), (0.05, 0.79), (0.1, 0.46), (0.2, 0.01)]
    """
    started = time.perf_counter()
    budget = check_budget(budget)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    given_eps = check_eps(eps)
    report_progress: EvaluationProgress = progress if progress is not None else NoProgress()

    setup = _load(
        model_path,
        events_path,
        detector_path=detector_path,
        budget=budget,
        seed=seed,
        label_field=label_field,
        device=device,
        output_name=output_name,
        input_range=input_range,
        on_bad_line=on_bad_line,
    )
    chosen = parse_attacks(attacks, setup.input_shape, budget)
    if setup.input_kind == "tabular":
        unset = sorted({a.norm for a in chosen} - set(given_eps))
        if unset:
            raise ValueError(
                "eps: a tabular model's features share no unit, so ε has no default; give "
                f"it in the model's input units for {' and '.join(unset)}, e.g. "
                f"--eps {unset[0]}=0.1,0.5,1"
            )
    white_box = WhiteBox(None, _NO_WHITE_BOX)
    if any(a.access == "white-box" for a in chosen):
        white_box = white_box_classifier(
            setup.model, setup.events.inputs[:_CHECK_ROWS], setup.input_range, device
        )
    chosen = [a for a in chosen if a.access == "black-box" or white_box.available]
    black_box = black_box_classifier(setup.model, setup.input_shape, setup.input_range)
    classifiers = {"black-box": black_box, "white-box": white_box.classifier}
    eps_values = default_eps(setup.input_range, int(np.prod(setup.input_shape))) | given_eps
    _check_eps_fit(setup, eps_values)
    smoothing = smoothing_plan(budget, _smoothing_range(setup, eps_values))
    steps = _plan(setup, chosen, eps_values, _timing(setup, black_box, white_box), smoothing)
    report_progress.planned(steps)

    outcomes: list[AttackOutcome] = []
    final: list[AttackOutcome] = []
    for step, attack in zip(steps, chosen, strict=False):
        report_progress.started(step)
        results = _attack_outcomes(
            setup,
            attack,
            classifiers[attack.access],
            eps_values[attack.norm],
            functools.partial(report_progress.advanced, step),
        )
        outcomes.extend(results)
        final.append(results[-1])
        report_progress.finished(step)

    smoothing_step, cost_step = steps[-2:]
    report_progress.started(smoothing_step)
    certified = certified_accuracy(
        black_box,
        setup.x,
        setup.y,
        smoothing,
        seed=seed,
        on_sigma=functools.partial(report_progress.advanced, smoothing_step),
    )
    report_progress.finished(smoothing_step)

    report_progress.started(cost_step)
    cost = _cost(setup)
    report_progress.advanced(cost_step, 1)
    report_progress.finished(cost_step)

    report = _report(
        setup,
        model_path=model_path,
        events_path=events_path,
        detector_path=detector_path,
        attacks=chosen,
        eps_values=eps_values,
        white_box=white_box,
        command=command,
        outcomes=outcomes,
        final=final,
        certified=certified,
        cost=cost,
    )
    report["seconds"] = time.perf_counter() - started
    return Evaluation(
        report=report,
        clean_scores=None if setup.clean is None else setup.clean.scores,
        clean_labels=None if setup.clean is None else setup.events.labels,
        adversarial_scores=[
            AttackScores(
                name=outcome.name,
                norm=outcome.norm,
                eps=outcome.eps,
                scores=outcome.detected.scores,
                labels=setup.y[outcome.success],
            )
            for outcome in outcomes
            if outcome.detected is not None
        ],
    )
