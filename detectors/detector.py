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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from detectors._errors import (
    CalibrationError,
    DetectorFileError,
    ModelHashMismatchError,
    ModelValidationError,
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
    "CalibrationSummary",
    "Detector",
    "DetectorConfig",
    "DetectorScores",
    "calibrate_detector",
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
        """JSON-ready content; the model path is made relative to ``relative_to``."""
        model_path = self.model_path
        if relative_to is not None:
            model_path = os.path.relpath(self.model_path, relative_to)
        return {
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
        try:
            model, cal = data["model"], data["calibration"]
            low, high = model["input_range"]
            return cls(
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
            )
        except KeyError as exc:
            raise DetectorFileError(f"detector file lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise DetectorFileError(f"detector file has a malformed field: {exc}") from None

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
    if stats.count < MIN_CALIBRATION_EVENTS or first_batch is None:
        raise CalibrationError(
            f"calibration needs at least {MIN_CALIBRATION_EVENTS} benign events, got {stats.count}"
        )
    event_shape = stats.input_shape
    # Checked before any squeezer is fitted to inputs the model cannot take.
    if event_shape is not None and not _shape_fits(event_shape, signature.input_shape):
        expected = [d if d is not None else "?" for d in signature.input_shape]
        raise CalibrationError(
            f"the benign inputs are shaped {list(event_shape)} per event, but the model "
            f"takes {expected}"
        )
    observed = stats.value_range
    if input_range is None:
        input_range = _default_input_range(signature.input_kind, observed)
    elif observed[0] < input_range[0] or observed[1] > input_range[1]:
        raise CalibrationError(
            f"benign values span [{observed[0]:g}, {observed[1]:g}], outside the given "
            f"input range [{input_range[0]:g}, {input_range[1]:g}]"
        )

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
    scores = np.concatenate([scorer.score(batch).score for batch in benign_batches()])
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
    )
