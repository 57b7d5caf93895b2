"""Calibrated feature-squeezing detectors and the detector file that stores them.

A detector file is JSON: which model (path and SHA-256), how its input and output look,
the squeezers (with any parameters learned from benign data), the threshold and the
false-positive rate it was calibrated for, and the advmon version that wrote it. The
model path is stored relative to the detector file, so the two can move together.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import onnx

from detectors._errors import (
    CalibrationError,
    DetectorFileError,
    ModelHashMismatchError,
    ModelValidationError,
    SqueezerSpecError,
)
from detectors.calibration import (
    MIN_CALIBRATION_EVENTS,
    Calibration,
    FeatureStats,
    calibrate_threshold,
)
from detectors.graph import (
    ModelSignature,
    OutputKind,
    build_squeeze_graph,
    check_squeezers_apply,
    inspect_model,
    load_model,
)
from detectors.queries import FingerprintSpec, QueryCalibrator, QuerySettings
from detectors.runtime import Device, SqueezeScorer, SqueezeScores, create_session
from detectors.squeezers import (
    PRESETS,
    InputKind,
    QuantileGrid,
    Quantize,
    Squeezer,
    format_squeezer_spec,
    parse_squeezer_spec,
    squeezer_from_dict,
)

__all__ = [
    "FORMAT_VERSION",
    "SEARCH_BUDGETS",
    "CalibrationSummary",
    "Detector",
    "DetectorConfig",
    "DetectorScores",
    "SearchAttack",
    "SearchBudget",
    "SearchCandidate",
    "SearchSplit",
    "SqueezerSearch",
    "calibrate_detector",
    "check_benign_inputs",
    "detect_output_kind",
    "file_sha256",
    "preset_for",
]

FORMAT_VERSION = 1
_FORMAT = "advmon-detector"


def _advmon_version() -> str:
    try:
        return metadata.version("advmon")
    except metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preset_for(signature: ModelSignature) -> str:
    """The squeezer spec used when none is given, chosen from the input's shape.

    Tabular inputs get ``quantize``; images get ``bit_depth`` (2 bits for one channel,
    as for MNIST in the NDSS paper, 4 for colour) plus a 2×2 median filter when both
    spatial sides are at least 16 pixels (on smaller images a median erases the
    content itself).
    """
    if signature.input_kind == "tabular":
        return PRESETS["tabular"]
    shape = signature.input_shape
    channels = shape[0] if len(shape) == 3 else 1
    spec = "bit_depth:2" if channels == 1 else "bit_depth:4"
    height, width = shape[-2], shape[-1]
    if height is None or width is None or min(height, width) >= 16:
        spec += ",median:2"
    return spec


@dataclass(frozen=True)
class CalibrationSummary:
    """What calibration saw: benign event count, achieved FPR, score quantiles, range."""

    n_events: int
    achieved_fpr: float
    score_quantiles: dict[str, float]
    observed_min: float
    observed_max: float
    provider: str
    """ONNX Runtime execution provider the benign events were scored on."""


SearchBudget = Literal["small", "full"]
"""How hard the squeezer search works: ``small`` (seconds) or ``full``."""

#: The search budgets, in order of cost.
SEARCH_BUDGETS: tuple[SearchBudget, ...] = ("small", "full")


@dataclass(frozen=True)
class SearchAttack:
    """One attack the squeezer search crafted, and how many of its examples fooled the model."""

    name: str
    """Unique among the search's attacks; keys :attr:`SearchCandidate.detection_by_attack`."""
    norm: str
    """The norm the attack measures its perturbation in (``linf``, ``l2``)."""
    access: str
    """``white-box`` (gradients of the model) or ``black-box`` (its outputs only)."""
    attempted: int
    """Held-back benign events the attack started from."""
    successful: int
    """Of those, how many it turned into an input the model classifies differently."""


@dataclass(frozen=True)
class SearchCandidate:
    """One candidate squeezer set and how it did on the search's held-back split."""

    spec: str
    detection_rate: float
    """Mean over the successful attacks of the fraction of their examples flagged."""
    held_back_fpr: float
    """Fraction of the held-back benign events flagged."""
    threshold: float
    """The threshold calibrated at the target FPR on the benign events not held back."""
    detection_by_attack: dict[str, float]
    """Fraction flagged per attack name (attacks that never succeeded are left out)."""
    detection_stderr: float = 0.0
    """Standard error of ``detection_rate`` from the attacks' example counts:
    ``√(Σ p(1 − p)/n) / attacks`` over each attack's fraction ``p`` of ``n`` examples."""

    @property
    def n_squeezers(self) -> int:
        """How many squeezers the candidate holds."""
        return len(parse_squeezer_spec(self.spec))


@dataclass(frozen=True)
class SearchSplit:
    """How the search divided the benign events."""

    benign_events: int
    """Valid benign events read."""
    sampled_events: int
    """The bounded random sample of them the search used."""
    threshold_events: int
    """Part of the sample the candidates' thresholds were calibrated on."""
    held_back_events: int
    """Part of the sample held back to measure false positives and to attack."""
    attacked_events: int
    """Held-back events the attacks started from."""


@dataclass(frozen=True)
class SqueezerSearch:
    """Why a detector holds its squeezers: the evidence of ``advmon calibrate``'s search.

    The search holds back part of a bounded sample of the benign events, crafts attacks
    against the model from the held-back part, and keeps the candidate with the best
    detection rate at the target FPR among those whose held-back FPR stays within
    ``held_back_fpr_limit``; rates within one standard error of the best are ties, won by
    the lower held-back FPR, then by fewer squeezers. When it cannot decide (too few
    events, no attack succeeded) the preset is taken and ``fallback_reason`` says why.
    """

    chosen: str
    """The spec the detector was calibrated with."""
    preset: str
    """The preset for the model's input (:func:`preset_for`), always a candidate."""
    fallback_reason: str | None
    """``None`` when the evidence chose; otherwise why the preset was taken instead."""
    budget: SearchBudget
    seed: int
    seconds: float
    """Wall-clock time of the search (sampling excluded: it shares the first file pass)."""
    split: SearchSplit
    attacks: tuple[SearchAttack, ...]
    candidates: tuple[SearchCandidate, ...]
    held_back_fpr_limit: float | None = None
    """The highest held-back FPR a candidate could show and be chosen (unless none stayed
    within it); ``None`` when no candidate was scored."""

    @property
    def searched(self) -> bool:
        """Whether the evidence chose the squeezers (rather than falling back to the preset)."""
        return self.fallback_reason is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content, as stored under ``squeezer_search`` in the detector file."""
        return {
            "chosen": self.chosen,
            "preset": self.preset,
            "fallback_reason": self.fallback_reason,
            "budget": self.budget,
            "seed": self.seed,
            "seconds": self.seconds,
            "held_back_fpr_limit": self.held_back_fpr_limit,
            "split": {
                "benign_events": self.split.benign_events,
                "sampled_events": self.split.sampled_events,
                "threshold_events": self.split.threshold_events,
                "held_back_events": self.split.held_back_events,
                "attacked_events": self.split.attacked_events,
            },
            "attacks": [
                {
                    "name": a.name,
                    "norm": a.norm,
                    "access": a.access,
                    "attempted": a.attempted,
                    "successful": a.successful,
                }
                for a in self.attacks
            ],
            "candidates": [
                {
                    "spec": c.spec,
                    "detection_rate": c.detection_rate,
                    "held_back_fpr": c.held_back_fpr,
                    "threshold": c.threshold,
                    "detection_by_attack": dict(c.detection_by_attack),
                    "detection_stderr": c.detection_stderr,
                }
                for c in self.candidates
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> SqueezerSearch:
        """Parse and check ``squeezer_search`` content; :class:`DetectorFileError` if malformed.

        Unknown fields are refused, so a misspelt key fails loudly.
        """
        root = _Fields(data, "squeezer_search")
        split_fields = root.section("split")
        split = SearchSplit(
            benign_events=split_fields.count("benign_events"),
            sampled_events=split_fields.count("sampled_events"),
            threshold_events=split_fields.count("threshold_events"),
            held_back_events=split_fields.count("held_back_events"),
            attacked_events=split_fields.count("attacked_events"),
        )
        split_fields.done()
        if split.threshold_events + split.held_back_events > split.sampled_events:
            split_fields.fail("threshold_events + held_back_events exceeds sampled_events")
        if split.sampled_events > split.benign_events:
            split_fields.fail("sampled_events exceeds benign_events")
        if split.attacked_events > split.held_back_events:
            split_fields.fail("attacked_events exceeds held_back_events")

        attacks = []
        for item in root.sections("attacks"):
            attack = SearchAttack(
                name=item.text("name"),
                norm=item.text("norm"),
                access=item.choice("access", ("white-box", "black-box")),
                attempted=item.count("attempted"),
                successful=item.count("successful"),
            )
            item.done()
            if attack.successful > attack.attempted:
                item.fail("successful exceeds attempted")
            attacks.append(attack)
        names = [a.name for a in attacks]
        if len(set(names)) != len(names):
            root.fail("attack names repeat")

        candidates = []
        for item in root.sections("candidates"):
            by_attack = item.section("detection_by_attack")
            rates = {name: by_attack.rate(name) for name in by_attack.names()}
            unknown = sorted(set(rates) - set(names))
            if unknown:
                by_attack.fail(f"names attacks the search did not run: {', '.join(unknown)}")
            candidates.append(
                SearchCandidate(
                    spec=item.spec("spec"),
                    detection_rate=item.rate("detection_rate"),
                    held_back_fpr=item.rate("held_back_fpr"),
                    threshold=item.number("threshold"),
                    detection_by_attack=rates,
                    detection_stderr=item.rate("detection_stderr"),
                )
            )
            item.done()

        fallback_reason = root.optional_text("fallback_reason")
        chosen, preset = root.spec("chosen"), root.spec("preset")
        specs = {c.spec for c in candidates}
        if fallback_reason is None and chosen not in specs:
            root.fail(f"chosen {chosen!r} is none of the candidates")
        if fallback_reason is not None and chosen != preset:
            root.fail(f"the search fell back, but chose {chosen!r}, not the preset {preset!r}")
        if candidates and preset not in specs:
            root.fail(f"the preset {preset!r} is none of the candidates")
        search = cls(
            chosen=chosen,
            preset=preset,
            fallback_reason=fallback_reason,
            budget=root.choice("budget", SEARCH_BUDGETS),
            seed=root.count("seed"),
            seconds=root.number("seconds", minimum=0.0),
            held_back_fpr_limit=root.optional_rate("held_back_fpr_limit"),
            split=split,
            attacks=tuple(attacks),
            candidates=tuple(candidates),
        )
        root.done()
        return search


class _Fields:
    """Reads one JSON object of a detector file field by field, naming the bad field.

    Every error is a :class:`DetectorFileError` naming the field's path, e.g.
    ``squeezer_search.candidates[2].held_back_fpr``.
    """

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise DetectorFileError(f"detector file field {path!r} must be an object")
        self._data: Mapping[str, Any] = data
        self._path = path
        self._read: set[str] = set()

    def fail(self, problem: str, key: str | None = None) -> NoReturn:
        where = self._path if key is None else f"{self._path}.{key}"
        raise DetectorFileError(f"detector file field {where!r} is malformed: {problem}")

    def names(self) -> list[str]:
        self._read.update(self._data)
        return [str(key) for key in self._data]

    def _get(self, key: str) -> Any:
        if key not in self._data:
            raise DetectorFileError(f"detector file lacks the field '{self._path}.{key}'")
        self._read.add(key)
        return self._data[key]

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            self.fail(f"expected a non-empty string, got {value!r}", key)
        return str(value)

    def optional_text(self, key: str) -> str | None:
        return None if self._get(key) is None else self.text(key)

    def choice(self, key: str, allowed: tuple[str, ...]) -> Any:
        value = self._get(key)
        if value not in allowed:
            self.fail(f"expected one of {', '.join(allowed)}, got {value!r}", key)
        return value

    def spec(self, key: str) -> str:
        value = self.text(key)
        try:
            parse_squeezer_spec(value)
        except SqueezerSpecError as exc:
            self.fail(str(exc), key)
        return value

    def count(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(f"expected a count (an integer ≥ 0), got {value!r}", key)
        return int(value)

    def number(self, key: str, minimum: float = -math.inf) -> float:
        value = self._get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < minimum
        ):
            bound = "" if minimum == -math.inf else f" ≥ {minimum:g}"
            self.fail(f"expected a finite number{bound}, got {value!r}", key)
        return float(value)

    def rate(self, key: str) -> float:
        value = self.number(key)
        if not 0.0 <= value <= 1.0:
            self.fail(f"expected a rate between 0 and 1, got {value!r}", key)
        return value

    def optional_rate(self, key: str) -> float | None:
        return None if self._get(key) is None else self.rate(key)

    def section(self, key: str) -> _Fields:
        return _Fields(self._get(key), f"{self._path}.{key}")

    def sections(self, key: str) -> list[_Fields]:
        items = self._get(key)
        if not isinstance(items, list):
            self.fail(f"expected a list, got {type(items).__name__}", key)
        return [_Fields(item, f"{self._path}.{key}[{i}]") for i, item in enumerate(items)]

    def done(self) -> None:
        """Refuse any field that was not read."""
        unknown = sorted(str(key) for key in self._data if key not in self._read)
        if unknown:
            raise DetectorFileError(
                f"detector file field {self._path!r} has unknown fields: {', '.join(unknown)}"
            )


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a calibrated detector (the detector file's content).

    ``model_path`` is absolute in memory and relative to the detector file on disk.
    """

    model_path: str
    model_sha256: str
    input_name: str
    input_shape: tuple[int | None, ...]
    input_kind: InputKind
    input_range: tuple[float, float]
    output_name: str
    output_kind: OutputKind
    num_classes: int | None
    squeezers: tuple[Squeezer, ...]
    threshold: float
    target_fpr: float
    calibration: CalibrationSummary
    advmon_version: str = field(default_factory=_advmon_version)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    squeezer_search: SqueezerSearch | None = None
    """The evidence the squeezers were chosen on; ``None`` when they were given."""
    query_attacks: QuerySettings | None = None
    """How the model's queries are fingerprinted, and the per-source threshold measured
    on the benign events (:mod:`detectors.queries`); ``None`` in files written before
    query-attack detection (images then get the defaults)."""

    @property
    def query_settings(self) -> QuerySettings | None:
        """The stored query-attack settings, else the defaults for images; ``None`` for a
        tabular model calibrated without them (re-run calibrate)."""
        if self.query_attacks is not None:
            return self.query_attacks
        return QuerySettings.default_for(self.input_kind, self.input_range)

    @property
    def query_match_bits(self) -> int | None:
        """Fingerprint bits two of this model's queries must share to match; ``None`` when
        its queries cannot be watched: no :attr:`query_settings`, or inputs of varying
        shape (one history compares inputs of one size)."""
        settings = self.query_settings
        if settings is None or None in self.input_shape:
            return None
        elements = math.prod(d for d in self.input_shape if d is not None)
        return settings.fingerprint.match_bits(elements) if elements > 0 else None

    @property
    def accepted_range(self) -> tuple[float, float] | None:
        """The range events' input values must lie in: the input range for images; none
        for tabular inputs, whose features legitimately leave the range seen in
        calibration (only their shape and finiteness are checked)."""
        return self.input_range if self.input_kind == "image" else None

    @property
    def squeezer_spec(self) -> str:
        """The canonical spec string of the squeezers."""
        return format_squeezer_spec(self.squeezers)

    def to_dict(self, relative_to: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """JSON-ready content; the model path is made relative to ``relative_to``.

        ``squeezer_search`` is present only when the squeezers were chosen by a search.
        """
        model_path = self.model_path
        if relative_to is not None:
            model_path = os.path.relpath(self.model_path, relative_to)
        content: dict[str, Any] = {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "advmon_version": self.advmon_version,
            "created_at": self.created_at,
            "model": {
                "path": model_path,
                "sha256": self.model_sha256,
                "input_name": self.input_name,
                "input_shape": list(self.input_shape),
                "input_kind": self.input_kind,
                "input_range": list(self.input_range),
                "output_name": self.output_name,
                "output_kind": self.output_kind,
                "num_classes": self.num_classes,
            },
            "squeezers": {
                "spec": self.squeezer_spec,
                "params": [s.to_dict() for s in self.squeezers],
            },
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "calibration": {
                "n_events": self.calibration.n_events,
                "achieved_fpr": self.calibration.achieved_fpr,
                "score_quantiles": self.calibration.score_quantiles,
                "observed_min": self.calibration.observed_min,
                "observed_max": self.calibration.observed_max,
                "provider": self.calibration.provider,
            },
        }
        if self.squeezer_search is not None:
            content["squeezer_search"] = self.squeezer_search.to_dict()
        if self.query_attacks is not None:
            content["query_attacks"] = self.query_attacks.to_dict()
        return content

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the detector file (the model path relative to its folder)."""
        target = Path(path)
        content = self.to_dict(relative_to=target.resolve().parent)
        target.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | os.PathLike[str]) -> DetectorConfig:
        """Parse detector-file content; relative model paths resolve against ``base_dir``."""
        if data.get("format") != _FORMAT:
            raise DetectorFileError("not an advmon detector file (missing 'format')")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise DetectorFileError(
                f"detector file format {version} is not supported by this advmon "
                f"(it reads format {FORMAT_VERSION}); re-run advmon calibrate"
            )
        search = data.get("squeezer_search")
        queries = data.get("query_attacks")
        try:
            model, cal = data["model"], data["calibration"]
            low, high = model["input_range"]
            config = cls(
                model_path=str((Path(base_dir) / model["path"]).resolve()),
                model_sha256=str(model["sha256"]),
                input_name=str(model["input_name"]),
                input_shape=tuple(None if d is None else int(d) for d in model["input_shape"]),
                input_kind=model["input_kind"],
                input_range=(float(low), float(high)),
                output_name=str(model["output_name"]),
                output_kind=model["output_kind"],
                num_classes=model["num_classes"],
                squeezers=tuple(squeezer_from_dict(p) for p in data["squeezers"]["params"]),
                threshold=float(data["threshold"]),
                target_fpr=float(data["target_fpr"]),
                calibration=CalibrationSummary(
                    n_events=int(cal["n_events"]),
                    achieved_fpr=float(cal["achieved_fpr"]),
                    score_quantiles={k: float(v) for k, v in cal["score_quantiles"].items()},
                    observed_min=float(cal["observed_min"]),
                    observed_max=float(cal["observed_max"]),
                    provider=str(cal.get("provider", "")),
                ),
                advmon_version=str(data.get("advmon_version", "unknown")),
                created_at=str(data.get("created_at", "")),
                squeezer_search=None if search is None else SqueezerSearch.from_dict(search),
                query_attacks=None if queries is None else QuerySettings.from_dict(queries),
            )
        except KeyError as exc:
            raise DetectorFileError(f"detector file lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise DetectorFileError(f"detector file has a malformed field: {exc}") from None
        chosen = config.squeezer_search.chosen if config.squeezer_search is not None else None
        if chosen is not None and chosen != config.squeezer_spec:
            raise DetectorFileError(
                f"the detector file's squeezer search chose {chosen!r} but its squeezers "
                f"are {config.squeezer_spec!r}"
            )
        return config

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify_model: bool = True) -> DetectorConfig:
        """Read a detector file; with ``verify_model`` check the model's SHA-256."""
        source = Path(path)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DetectorFileError(f"detector file not found: {source}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DetectorFileError(f"cannot read detector file {source}: {exc}") from None
        if not isinstance(data, dict):
            raise DetectorFileError(f"{source} is not an advmon detector file")
        config = cls.from_dict(data, source.resolve().parent)
        if verify_model:
            config.verify_model()
        return config

    def verify_model(self) -> None:
        """Raise :class:`ModelHashMismatchError` unless the model file is the calibrated one."""
        try:
            actual = file_sha256(self.model_path)
        except FileNotFoundError:
            raise DetectorFileError(
                f"the detector's model file is missing: {self.model_path}"
            ) from None
        if actual != self.model_sha256:
            raise ModelHashMismatchError(
                f"model {self.model_path} changed since calibration (sha256 {actual[:12]}…, "
                f"calibrated {self.model_sha256[:12]}…); re-run advmon calibrate"
            )


@dataclass(frozen=True)
class DetectorScores:
    """Scores of a batch plus the verdict ``flagged = score > threshold``."""

    scores: SqueezeScores
    flagged: np.ndarray


class Detector:
    """A calibrated detector ready to score batches.

    >>> detector = Detector.from_file("detector.json")  # doctest: +SKIP
    >>> detector.score(batch).flagged  # doctest: +SKIP
    """

    def __init__(
        self,
        config: DetectorConfig,
        model: onnx.ModelProto,
        *,
        device: Device = "auto",
        intra_op_threads: int | None = None,
        spin_wait: bool = True,
    ) -> None:
        self.config = config
        self.graph = build_squeeze_graph(
            model, config.squeezers, output_kind=config.output_kind, output_name=config.output_name
        )
        self._scorer = SqueezeScorer(
            self.graph, device=device, intra_op_threads=intra_op_threads, spin_wait=spin_wait
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        device: Device = "auto",
        intra_op_threads: int | None = None,
    ) -> Detector:
        """Load a detector file, check the model hash and build the fused graph."""
        config = DetectorConfig.load(path)
        return cls(
            config, load_model(config.model_path), device=device, intra_op_threads=intra_op_threads
        )

    @property
    def threshold(self) -> float:
        """Scores above this are flagged."""
        return self.config.threshold

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider in use."""
        return self._scorer.provider

    def score(self, batch: np.ndarray) -> DetectorScores:
        """Score a batch shaped ``[N, *input_shape]``."""
        scores = self._scorer.score(batch)
        return DetectorScores(scores, scores.score > np.float32(self.config.threshold))


def detect_output_kind(model: onnx.ModelProto, output_name: str, sample: np.ndarray) -> OutputKind:
    """Tell logits from probabilities by running the bare model on a benign sample.

    Probabilities are non-negative and sum to 1 per row; anything else is logits.
    """
    session = create_session(model, "cpu")
    (values,) = session.run([output_name], {session.get_inputs()[0].name: sample})
    values = np.asarray(values, dtype=np.float64)
    rows_sum_to_one = np.allclose(values.sum(axis=1), 1.0, atol=1e-3)
    return "probabilities" if rows_sum_to_one and values.min() >= 0.0 else "logits"


def _default_input_range(kind: InputKind, observed: tuple[float, float]) -> tuple[float, float]:
    low, high = observed
    if kind == "tabular":
        return observed
    for candidate in ((0.0, 1.0), (0.0, 255.0), (-1.0, 1.0)):
        if candidate[0] <= low and high <= candidate[1]:
            return candidate
    raise CalibrationError(
        f"benign image values span [{low:g}, {high:g}], which is not one of the usual "
        "ranges [0, 1], [0, 255] or [-1, 1]; give the model's input range explicitly"
    )


def _shape_fits(event_shape: tuple[int, ...], model_shape: tuple[int | None, ...]) -> bool:
    """Whether one input of ``event_shape`` fits the model (``None`` axes take any size)."""
    return len(event_shape) == len(model_shape) and all(
        d is None or d == e for d, e in zip(model_shape, event_shape, strict=True)
    )


def check_benign_inputs(
    stats: FeatureStats,
    signature: ModelSignature,
    input_range: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Check that the benign inputs can calibrate the model's detector; return the input range.

    Raises :class:`CalibrationError` for fewer than :data:`MIN_CALIBRATION_EVENTS` inputs,
    inputs the model cannot take, or values outside ``input_range``. Without
    ``input_range``, images get the usual range containing the benign values ([0, 1],
    [0, 255] or [-1, 1]) and tabular inputs the range of the benign values.
    """
    if stats.count < MIN_CALIBRATION_EVENTS:
        raise CalibrationError(
            f"calibration needs at least {MIN_CALIBRATION_EVENTS} benign events, got {stats.count}"
        )
    event_shape = stats.input_shape
    if event_shape is not None and not _shape_fits(event_shape, signature.input_shape):
        expected = [d if d is not None else "?" for d in signature.input_shape]
        raise CalibrationError(
            f"the benign inputs are shaped {list(event_shape)} per event, but the model "
            f"takes {expected}"
        )
    observed = stats.value_range
    if input_range is None:
        return _default_input_range(signature.input_kind, observed)
    if observed[0] < input_range[0] or observed[1] > input_range[1]:
        raise CalibrationError(
            f"benign values span [{observed[0]:g}, {observed[1]:g}], outside the given "
            f"input range [{input_range[0]:g}, {input_range[1]:g}]"
        )
    return input_range


def _fit_to_benign(squeezer: Squeezer, stats: FeatureStats) -> Squeezer:
    """Learn a squeezer's per-feature grid from the benign inputs, when it has one."""
    if isinstance(squeezer, Quantize):
        return squeezer.fit(stats.mean, stats.std)
    if isinstance(squeezer, QuantileGrid):
        return squeezer.fit(stats.sample)
    return squeezer


def calibrate_detector(
    model_path: str | os.PathLike[str],
    benign_batches: Callable[[], Iterable[np.ndarray]],
    *,
    fpr: float = 0.05,
    squeezer_spec: str | None = None,
    output_kind: OutputKind | Literal["auto"] = "auto",
    output_name: str | None = None,
    input_range: tuple[float, float] | None = None,
    device: Device = "auto",
) -> DetectorConfig:
    """Calibrate a detector for the model at ``model_path`` on benign inputs.

    ``benign_batches`` is called twice and must yield the same batches each time
    (``[N, *input_shape]`` float32 arrays): once to learn input statistics (the value
    range, and the grids of ``quantize`` and ``quantile`` squeezers), once to score.
    Without ``squeezer_spec`` the preset for the input's shape is used
    (:func:`preset_for`). A ``quantile`` squeezer needs exact quantiles, so the benign
    inputs are then kept in memory during calibration (float32, ``4 · events ·
    features`` bytes).
    """
    model_file = Path(model_path).resolve()
    model = load_model(str(model_file))
    signature = inspect_model(model, output_name)
    spec = squeezer_spec if squeezer_spec is not None else preset_for(signature)
    # Checked before reading any data: a bad spec fails at once, and the spec says
    # whether the benign sample must be kept.
    requested = parse_squeezer_spec(spec)
    check_squeezers_apply(requested, signature)

    stats = FeatureStats(keep_sample=any(isinstance(s, QuantileGrid) for s in requested))
    first_batch: np.ndarray | None = None
    for batch in benign_batches():
        if first_batch is None and len(batch):
            first_batch = batch
        stats.update(batch)
    # Checked before any squeezer is fitted to inputs the model cannot take.
    input_range = check_benign_inputs(stats, signature, input_range)
    assert first_batch is not None  # at least MIN_CALIBRATION_EVENTS inputs were seen
    observed = stats.value_range

    squeezers = tuple(
        _fit_to_benign(s, stats) for s in parse_squeezer_spec(spec, input_range=input_range)
    )
    kind: OutputKind
    if output_kind == "auto":
        kind = signature.output_kind or detect_output_kind(
            model, signature.output_name, first_batch
        )
    else:
        kind = output_kind

    graph = build_squeeze_graph(model, squeezers, output_kind=kind, output_name=output_name)
    scorer = SqueezeScorer(graph, device=device)
    queries = _query_calibrator(signature.input_kind, input_range, stats)
    scores_by_batch = []
    for batch in benign_batches():
        scores_by_batch.append(scorer.score(batch).score)
        if queries is not None:
            queries.update(batch)
    scores = np.concatenate(scores_by_batch)
    if len(scores) != stats.count:
        raise CalibrationError(
            "the benign events changed between the two calibration passes "
            f"({stats.count} then {len(scores)} events)"
        )
    calibration: Calibration = calibrate_threshold(scores, fpr)
    if not math.isfinite(calibration.threshold):
        raise ModelValidationError("the model produced non-finite scores")
    return DetectorConfig(
        model_path=str(model_file),
        model_sha256=file_sha256(model_file),
        input_name=signature.input_name,
        input_shape=signature.input_shape,
        input_kind=signature.input_kind,
        input_range=input_range,
        output_name=signature.output_name,
        output_kind=kind,
        num_classes=signature.num_classes,
        squeezers=squeezers,
        threshold=calibration.threshold,
        target_fpr=fpr,
        calibration=CalibrationSummary(
            n_events=calibration.n_events,
            achieved_fpr=calibration.achieved_fpr,
            score_quantiles=calibration.score_quantiles,
            observed_min=observed[0],
            observed_max=observed[1],
            provider=scorer.provider,
        ),
        query_attacks=None if queries is None else queries.result(),
    )


def _query_calibrator(
    input_kind: InputKind, input_range: tuple[float, float], stats: FeatureStats
) -> QueryCalibrator | None:
    """What measures the benign events' query links; ``None`` when inputs vary in shape."""
    shape = stats.input_shape
    if shape is None:
        return None
    elements = int(np.prod(shape))
    if input_kind == "image":
        spec = FingerprintSpec.for_image(input_range)
    else:
        spec = FingerprintSpec.for_tabular(stats.mean, stats.std)
    return QueryCalibrator(spec, elements)
