"""Online drift detection over per-event signals, with River's detectors.

A *signal* is one number per scored event: the top-1 probability, the prediction entropy,
the squeeze score, an indicator of the predicted class, a summary of the input. Each
signal stream gets one River detector (ADWIN, KSWIN, Page-Hinkley, or for 0/1 streams
DDM, EDDM, HDDM-A, HDDM-W, FHDDM) behind :class:`DriftDetector`, whose ``update`` returns
a :class:`DriftVerdict` when the detector signals drift and ``None`` otherwise, so River's
flag, which resets itself on the next update, cannot be missed.

:class:`DriftMonitor` holds one model's detectors and applies a cooldown per stream. It
is plain picklable state: the worker checkpoints it and a restart continues from the
learned baseline.

>>> import numpy as np
>>> monitor = DriftMonitor([SignalSpec("score", DriftDetectorSpec("adwin"))])
>>> rng = np.random.default_rng(7)
>>> before = rng.normal(0.2, 0.05, 3000)
>>> after = rng.normal(0.6, 0.05, 1000)
>>> alarms = monitor.update({"score": np.concatenate([before, after])}, np.arange(4000.0))
>>> [(a.stream, a.index) for a in alarms]
[('score', 3039)]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import drift
from river.drift import binary

from detectors._errors import DriftConfigError

__all__ = [
    "BINARY_DETECTORS",
    "DRIFT_DETECTORS",
    "SIGNALS",
    "DriftAlarm",
    "DriftDetector",
    "DriftDetectorSpec",
    "DriftMonitor",
    "DriftVerdict",
    "SignalSpec",
    "default_signals",
    "signal_columns",
]

DRIFT_DETECTORS: dict[str, type[Any]] = {
    "adwin": drift.ADWIN,
    "kswin": drift.KSWIN,
    "page_hinkley": drift.PageHinkley,
    "ddm": binary.DDM,
    "eddm": binary.EDDM,
    "hddm_a": binary.HDDMA,
    "hddm_w": binary.HDDMW,
    "fhddm": binary.FHDDM,
    "none": drift.NoDrift,
}
"""River detector class for each detector name."""

BINARY_DETECTORS = frozenset({"ddm", "eddm", "hddm_a", "hddm_w", "fhddm"})
"""Detectors defined for 0/1 streams only."""

SIGNALS: dict[str, str] = {
    "top1": "probability of the predicted class",
    "entropy": "entropy of the predicted class distribution, in nats",
    "score": "the squeeze score",
    "predicted_class": "one 0/1 stream per class: whether the event was predicted that class",
    "input_mean": "mean of the input's elements",
    "input_std": "standard deviation of the input's elements",
    "feature:J": "value of input feature J (tabular inputs)",
}
"""The signals a model can be monitored on, and what each one is."""

_BINARY_SIGNALS = ("predicted_class",)
_DEFAULT_MAX_CLASSES = 20
_DEFAULT_MAX_FEATURES = 16


@dataclass(frozen=True)
class DriftDetectorSpec:
    """Which River detector watches a stream, with what parameters.

    Parameters
    ----------
    kind
        A key of :data:`DRIFT_DETECTORS`.
    params
        Keyword arguments of the River class (e.g. ``delta`` for ADWIN). KSWIN's ``seed``
        defaults to 0 so that runs are reproducible.
    warmup
        No verdict before the detector has seen this many values; it learns from them.
    """

    kind: str
    params: Mapping[str, float | int | str | bool] = field(default_factory=dict)
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_DETECTORS:
            known = ", ".join(sorted(DRIFT_DETECTORS))
            raise DriftConfigError(f"unknown drift detector {self.kind!r} (known: {known})")
        if self.warmup < 0:
            raise DriftConfigError(f"{self.kind}: warmup must be >= 0, got {self.warmup}")
        accepted = set(inspect.signature(DRIFT_DETECTORS[self.kind]).parameters)
        unknown = sorted(set(self.params) - accepted)
        if unknown:
            raise DriftConfigError(
                f"{self.kind}: unknown parameter(s) {', '.join(unknown)} "
                f"(accepted: {', '.join(sorted(accepted)) or 'none'})"
            )
        self.build()  # Let River reject bad values now, not at the first event.

    @property
    def binary(self) -> bool:
        """Whether the detector only takes 0/1 values."""
        return self.kind in BINARY_DETECTORS

    def build(self) -> DriftDetector:
        """A fresh detector."""
        params = dict(self.params)
        if self.kind == "kswin":
            params.setdefault("seed", 0)
        try:
            river_detector = DRIFT_DETECTORS[self.kind](**params)
        except (TypeError, ValueError) as exc:
            raise DriftConfigError(f"{self.kind}: invalid parameters {params}: {exc}") from None
        return DriftDetector(self.kind, river_detector, self.warmup)


@dataclass(frozen=True)
class DriftVerdict:
    """What a detector saw when it signalled drift.

    ``index`` is the position of the triggering value in the values passed to
    :meth:`DriftDetector.update_many` (0 for :meth:`DriftDetector.update`).
    ``statistics`` holds the value, the mean of the stream since the previous drift
    (``mean_before``), the mean of the last values (``mean_recent``), their difference
    (``shift``), the counts, and what the River detector reports (ADWIN's window mean and
    width, KSWIN's p-value).
    """

    index: int
    statistics: dict[str, float]

    @property
    def shift(self) -> float:
        """``mean_recent − mean_before``."""
        return self.statistics["shift"]


class DriftDetector:
    """One River detector over one stream; ``update`` returns a verdict on drift.

    Besides the River detector it keeps the sum of the values since the previous drift
    and the last ``recent`` values, to describe each drift in numbers.
    """

    def __init__(self, kind: str, river_detector: Any, warmup: int = 0, recent: int = 100):
        self.kind = kind
        self.river = river_detector
        self.warmup = warmup
        self.n_seen = 0
        self.n_detections = 0
        self._since_reset = 0
        self._sum_since_reset = 0.0
        self._recent = np.zeros(0, dtype=np.float64)
        self._recent_size = recent

    @property
    def recent_mean(self) -> float | None:
        """Mean of the last values seen (up to 100), ``None`` before the first."""
        return float(self._recent.mean()) if len(self._recent) else None

    def update(self, value: float) -> DriftVerdict | None:
        """Learn one value; a verdict when the detector signals drift, else ``None``."""
        verdicts = self.update_many(np.asarray([value], dtype=np.float64))
        return verdicts[0] if verdicts else None

    def update_many(self, values: np.ndarray) -> list[DriftVerdict]:
        """Learn values in order; one verdict per value on which drift was signalled."""
        values = _checked(values)
        return self._learn(values)

    def _learn(self, values: np.ndarray) -> list[DriftVerdict]:
        """:meth:`update_many` on values already checked (1-D, float64, finite)."""
        binary_input = self.kind in BINARY_DETECTORS
        items: list[Any] = (values > 0.5).tolist() if binary_input else values.tolist()
        hits = self._learn_adwin(items) if self.kind == "adwin" else self._learn_any(items)
        first_seen = self.n_seen
        self.n_seen += len(items)
        verdicts: list[DriftVerdict] = []
        start = 0
        for i, own in hits:
            if first_seen + i + 1 <= self.warmup:
                continue  # learned from, but no verdict during the warm-up
            verdicts.append(self._verdict(values, start, i, first_seen, own))
            start = i + 1
        tail = values[start:]
        self._since_reset += len(tail)
        self._sum_since_reset += float(tail.sum())
        self._recent = np.concatenate([self._recent, values])[-self._recent_size :]
        return verdicts

    def _learn_any(self, items: list[Any]) -> list[tuple[int, dict[str, float]]]:
        river = self.river
        update = river.update
        hits: list[tuple[int, dict[str, float]]] = []
        for i, x in enumerate(items):
            update(x)
            if river.drift_detected:
                hits.append((i, self._detector_statistics()))
        return hits

    def _learn_adwin(self, items: list[Any]) -> list[tuple[int, dict[str, float]]]:
        """River's ``ADWIN.update`` inlined: the window's own update, and a reset after a
        drift. River resets on the update after the drift; resetting right away is the
        same for every later value and saves the wrapper's cost, most of ADWIN's time.
        A test checks the verdicts against River's own ``update`` and flag."""
        river = self.river
        if river.drift_detected:
            river._reset()
        update = river._helper.update
        hits: list[tuple[int, dict[str, float]]] = []
        for i, x in enumerate(items):
            if update(x):
                hits.append((i, self._detector_statistics()))
                river._reset()
                update = river._helper.update
        return hits

    def _detector_statistics(self) -> dict[str, float]:
        river = self.river
        if self.kind == "adwin":
            return {"window_mean": float(river.estimation), "window_width": float(river.width)}
        if self.kind == "kswin" and river.p_value is not None:
            return {"p_value": float(river.p_value)}
        return {}

    def _verdict(
        self, values: np.ndarray, start: int, i: int, first_seen: int, own: dict[str, float]
    ) -> DriftVerdict:
        segment = values[start : i + 1]
        count = self._since_reset + len(segment)
        mean_before = (self._sum_since_reset + float(segment.sum())) / count
        recent = np.concatenate([self._recent, values[: i + 1]])[-self._recent_size :]
        self._recent = recent
        mean_recent = float(recent.mean())
        self.n_detections += 1
        statistics = {
            "value": float(values[i]),
            "mean_before": mean_before,
            "mean_recent": mean_recent,
            "shift": mean_recent - mean_before,
            "events_before": float(count),
            "events_seen": float(first_seen + i + 1),
            **own,
        }
        self._since_reset = 0
        self._sum_since_reset = 0.0
        return DriftVerdict(i, statistics)


def _checked(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D array of values, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("drift detectors take finite values only")
    return values


@dataclass(frozen=True)
class SignalSpec:
    """One monitored signal and the detector for each of its streams."""

    name: str
    detector: DriftDetectorSpec

    def __post_init__(self) -> None:
        base, _, arg = self.name.partition(":")
        if base == "feature":
            if not arg.isdigit():
                raise DriftConfigError(
                    f"signal {self.name!r}: expected feature:J with J a feature index"
                )
        elif self.name not in SIGNALS:
            known = ", ".join(SIGNALS)
            raise DriftConfigError(f"unknown drift signal {self.name!r} (known: {known})")
        if self.detector.binary and self.name not in _BINARY_SIGNALS:
            raise DriftConfigError(
                f"signal {self.name!r} is not 0/1: detector {self.detector.kind!r} only takes "
                f"0/1 streams ({', '.join(_BINARY_SIGNALS)}); use adwin, kswin or page_hinkley"
            )

    @property
    def column(self) -> str:
        """The per-event column the signal is computed from (see :func:`signal_columns`)."""
        return "prediction" if self.name == "predicted_class" else self.name


def default_signals(
    input_kind: str, num_classes: int | None, n_features: int | None = None
) -> list[SignalSpec]:
    """The default signal set: ADWIN on the model's outputs and a summary of its inputs.

    Every model: ``top1``, ``entropy``, ``score``, and ``predicted_class`` when it has at
    most 20 classes. Images: ``input_mean`` and ``input_std``. Tabular inputs: the first
    16 features (``feature:0`` …).
    """
    adwin = DriftDetectorSpec("adwin")
    names = ["top1", "entropy", "score"]
    if num_classes is not None and 1 < num_classes <= _DEFAULT_MAX_CLASSES:
        names.append("predicted_class")
    if input_kind == "tabular" and n_features:
        names += [f"feature:{j}" for j in range(min(n_features, _DEFAULT_MAX_FEATURES))]
    else:
        names += ["input_mean", "input_std"]
    return [SignalSpec(name, adwin) for name in names]


def signal_columns(
    columns: Sequence[str],
    inputs: np.ndarray,
    probabilities: np.ndarray,
    scores: np.ndarray,
    predictions: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-event values of the named columns for a batch of ``N`` scored events.

    ``columns`` are signal names, with ``prediction`` standing for ``predicted_class``.
    Every column is a float64 array of length ``N``.
    """
    n = len(inputs)
    flat = inputs.reshape(n, -1)
    out: dict[str, np.ndarray] = {}
    moments: tuple[np.ndarray, np.ndarray] | None = None
    for column in columns:
        if column == "top1":
            out[column] = probabilities.max(axis=1).astype(np.float64)
        elif column == "entropy":
            p = probabilities.astype(np.float64)
            log_p = np.log(p, out=np.zeros_like(p), where=p > 0)  # 0·log 0 = 0
            out[column] = np.maximum(-np.einsum("ij,ij->i", p, log_p), 0.0)
        elif column == "score":
            out[column] = scores.astype(np.float64)
        elif column == "prediction":
            out[column] = predictions.astype(np.float64)
        elif column in ("input_mean", "input_std"):
            if moments is None:
                wide = flat.astype(np.float64)
                mean = wide.mean(axis=1)
                deviation = wide - mean[:, None]
                variance = np.einsum("ij,ij->i", deviation, deviation) / max(wide.shape[1], 1)
                moments = (mean, np.sqrt(variance))
            out[column] = moments[0] if column == "input_mean" else moments[1]
        elif column.startswith("feature:"):
            j = int(column.partition(":")[2])
            if j >= flat.shape[1]:
                raise DriftConfigError(f"signal {column!r}: the input has {flat.shape[1]} features")
            out[column] = flat[:, j].astype(np.float64)
        else:
            raise DriftConfigError(f"unknown signal column {column!r}")
    return out


@dataclass(frozen=True)
class DriftAlarm:
    """A drift verdict on one stream of a model, at position ``index`` of the update."""

    stream: str
    signal: str
    detector: str
    index: int
    statistics: dict[str, float]


@dataclass
class _Stream:
    name: str
    signal: str
    column: str
    match: float | None
    detector: DriftDetector
    quiet_until: float = -math.inf
    suppressed: int = 0


class DriftMonitor:
    """One model's drift detectors: one stream per signal (per class for predicted_class).

    Parameters
    ----------
    signals
        The monitored signals.
    num_classes
        Number of classes, for ``predicted_class`` (one 0/1 stream per class).
    cooldown_seconds
        After a drift on a stream, further drifts on that stream are counted but not
        reported for this long, in event time.
    """

    def __init__(
        self,
        signals: Sequence[SignalSpec],
        num_classes: int | None = None,
        cooldown_seconds: float = 0.0,
    ) -> None:
        if cooldown_seconds < 0:
            raise DriftConfigError(f"cooldown_seconds must be >= 0, got {cooldown_seconds}")
        self.cooldown_seconds = cooldown_seconds
        self.signals = list(signals)
        self.streams: list[_Stream] = []
        for spec in self.signals:
            if spec.name == "predicted_class":
                if not num_classes or num_classes < 2:
                    raise DriftConfigError(
                        "signal 'predicted_class' needs a classifier with 2 or more classes"
                    )
                for c in range(num_classes):
                    self.streams.append(
                        _Stream(
                            f"predicted_class:{c}",
                            spec.name,
                            "prediction",
                            float(c),
                            spec.detector.build(),
                        )
                    )
            else:
                self.streams.append(
                    _Stream(spec.name, spec.name, spec.column, None, spec.detector.build())
                )
        self.n_seen = 0

    @property
    def columns(self) -> list[str]:
        """The per-event columns :meth:`update` needs."""
        return list(dict.fromkeys(s.column for s in self.streams))

    def update(self, columns: Mapping[str, np.ndarray], times: np.ndarray) -> list[DriftAlarm]:
        """Learn a batch of events in order; the alarms past their streams' cooldown.

        ``columns`` maps each of :attr:`columns` to ``N`` values; ``times`` holds the
        ``N`` event times in seconds. Alarms are ordered by event, then by stream.
        """
        times = np.asarray(times, dtype=np.float64)
        checked: dict[str, np.ndarray] = {}
        for name in self.columns:
            try:
                values = _checked(columns[name])
            except KeyError:
                raise DriftConfigError(f"missing signal column {name!r}") from None
            if len(values) != len(times):
                raise ValueError(
                    f"column {name!r} has {len(values)} values for {len(times)} events"
                )
            checked[name] = values
        alarms: list[DriftAlarm] = []
        for stream in self.streams:
            values = checked[stream.column]
            if stream.match is not None:
                values = (values == stream.match).astype(np.float64)
            for verdict in stream.detector._learn(values):
                when = float(times[verdict.index])
                if when < stream.quiet_until:
                    stream.suppressed += 1
                    continue
                stream.quiet_until = when + self.cooldown_seconds
                alarms.append(
                    DriftAlarm(
                        stream.name,
                        stream.signal,
                        stream.detector.kind,
                        verdict.index,
                        verdict.statistics,
                    )
                )
        self.n_seen += len(times)
        alarms.sort(key=lambda a: a.index)
        return alarms

    def suppressed(self) -> dict[str, int]:
        """Drifts not reported because of the cooldown, by stream."""
        return {s.name: s.suppressed for s in self.streams}
