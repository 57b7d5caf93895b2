"""Drift detectors over seeded synthetic streams with known change points.

Like River's own tests, the expectations are exact: a seeded stream, the index at which
each detector signals. A stream changes at index 5,000; the documented detection delays
in docs/drift.md are these indices minus 5,000.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest

from detectors import DriftConfigError
from detectors.drift import (
    DriftDetectorSpec,
    DriftMonitor,
    SignalSpec,
    default_signals,
    signal_columns,
)

CHANGE = 5000


def gaussian_step(seed: int, n: int = 7000, mu0: float = 0.5, mu1: float = 0.7) -> np.ndarray:
    """N(mu0, 0.1) for CHANGE values, then N(mu1, 0.1)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(mu0, 0.1, CHANGE), rng.normal(mu1, 0.1, n - CHANGE)])


def bernoulli_step(seed: int, n: int = 7000, p0: float = 0.1, p1: float = 0.3) -> np.ndarray:
    """Bernoulli(p0) for CHANGE values, then Bernoulli(p1), as 0.0/1.0."""
    rng = np.random.default_rng(seed)
    ones = np.concatenate([rng.random(CHANGE) < p0, rng.random(n - CHANGE) < p1])
    return ones.astype(np.float64)


STEPS: dict[str, tuple[DriftDetectorSpec, Callable[[int], np.ndarray], dict[int, list[int]]]] = {
    "adwin": (
        DriftDetectorSpec("adwin"),
        gaussian_step,
        {1: [5055], 2: [5055], 3: [5055]},
    ),
    "page_hinkley": (
        DriftDetectorSpec("page_hinkley", {"threshold": 5.0, "delta": 0.05}),
        gaussian_step,
        {1: [5030], 2: [5034], 3: [5025]},
    ),
    "kswin": (
        DriftDetectorSpec("kswin", {"alpha": 0.0001}),
        gaussian_step,
        {1: [5023], 2: [5020], 3: [5015, 5780]},
    ),
    "hddm_a": (DriftDetectorSpec("hddm_a"), bernoulli_step, {1: [5141], 2: [5096], 3: [5057]}),
    "hddm_w": (
        DriftDetectorSpec("hddm_w"),
        bernoulli_step,
        {1: [5166, 6753], 2: [5051, 6543], 3: [5057]},
    ),
}


@pytest.mark.parametrize("kind", sorted(STEPS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_detectors_flag_a_step_change_at_the_seeded_index(kind: str, seed: int) -> None:
    spec, stream, expected = STEPS[kind]
    detector = spec.build()
    verdicts = detector.update_many(stream(seed))
    assert [v.index for v in verdicts] == expected[seed]
    first = verdicts[0]
    assert first.index >= CHANGE  # nothing on the stationary prefix
    assert first.statistics["events_seen"] == first.index + 1
    assert first.statistics["mean_recent"] > first.statistics["mean_before"]


@pytest.mark.parametrize(
    ("spec", "binary"),
    [
        (DriftDetectorSpec("adwin"), False),
        (DriftDetectorSpec("page_hinkley", {"threshold": 5.0, "delta": 0.05}), False),
        (DriftDetectorSpec("hddm_a"), True),
        (DriftDetectorSpec("hddm_w"), True),
    ],
    ids=["adwin", "page_hinkley", "hddm_a", "hddm_w"],
)
@pytest.mark.parametrize("seed", [11, 12])
def test_no_drift_on_a_stationary_stream_of_20000_events(
    spec: DriftDetectorSpec, binary: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    values = (rng.random(20_000) < 0.1).astype(float) if binary else rng.normal(0.5, 0.1, 20_000)
    assert spec.build().update_many(values) == []


def toggling(seed: int, n: int = 30_000, period: int = 700) -> np.ndarray:
    """A mean that jumps between 0.3 and 0.7 every ``period`` values: many drifts."""
    rng = np.random.default_rng(seed)
    means = np.where((np.arange(n) // period) % 2 == 0, 0.3, 0.7)
    return means + rng.normal(0.0, 0.1, n)


@pytest.mark.parametrize("kind", ["adwin", "page_hinkley", "kswin", "hddm_w"])
def test_verdicts_fall_exactly_where_river_raises_its_self_resetting_flag(kind: str) -> None:
    known: dict[str, dict[str, float | int | str | bool]] = {
        "page_hinkley": {"threshold": 5.0, "delta": 0.05},
        "kswin": {"alpha": 0.0001, "seed": 0},
    }
    params = known.get(kind, {})
    values = toggling(4, n=6000 if kind == "kswin" else 30_000)
    if kind == "hddm_w":
        values = (values > 0.5).astype(np.float64)
    spec = DriftDetectorSpec(kind, params)
    river_detector = spec.build().river  # a fresh River detector, driven directly
    flagged = []
    for i, x in enumerate(values.tolist()):
        river_detector.update(x > 0.5 if kind == "hddm_w" else x)
        if river_detector.drift_detected:
            flagged.append(i)
    assert len(flagged) > 5  # the stream drifts again and again
    ours = spec.build()
    one_by_one = [i for i, x in enumerate(values.tolist()) if ours.update(x) is not None]
    assert one_by_one == flagged
    in_batches = spec.build()
    batched = [
        start + v.index
        for start in range(0, len(values), 100)
        for v in in_batches.update_many(values[start : start + 100])
    ]
    assert batched == flagged


def test_warmup_withholds_verdicts_but_the_detector_still_learns() -> None:
    values = np.concatenate([np.full(200, 0.1), np.full(300, 0.9), np.full(2000, 0.1)])
    plain = [v.index for v in DriftDetectorSpec("adwin").build().update_many(values)]
    assert plain
    assert plain[0] < 400
    warm = DriftDetectorSpec("adwin", warmup=400).build()
    verdicts = [v.index for v in warm.update_many(values)]
    assert all(i >= 400 for i in verdicts)
    assert [i for i in plain if i >= 400] == verdicts
    assert warm.n_seen == len(values)


def test_statistics_describe_the_shift() -> None:
    values = np.concatenate([np.full(1000, 0.2), np.full(1000, 0.8)])
    (verdict,) = DriftDetectorSpec("adwin").build().update_many(values)
    stats = verdict.statistics
    assert stats["value"] == 0.8
    assert stats["events_before"] == verdict.index + 1
    assert stats["mean_before"] == pytest.approx(
        (1000 * 0.2 + (verdict.index - 999) * 0.8) / (verdict.index + 1)
    )
    tail = np.concatenate([np.full(1000, 0.2), np.full(verdict.index - 999, 0.8)])[-100:]
    assert stats["mean_recent"] == pytest.approx(tail.mean())
    assert verdict.shift == pytest.approx(stats["mean_recent"] - stats["mean_before"])
    assert 0 < stats["window_width"] <= verdict.index + 1


def test_none_never_signals() -> None:
    assert DriftDetectorSpec("none").build().update_many(gaussian_step(1, mu1=5.0)) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DriftDetectorSpec("cusum"), "unknown drift detector 'cusum'"),
        (lambda: DriftDetectorSpec("adwin", {"deltta": 0.1}), "unknown parameter(s) deltta"),
        (lambda: DriftDetectorSpec("adwin", warmup=-1), "warmup must be >= 0"),
        (lambda: DriftDetectorSpec("adwin", {"delta": "x"}), "adwin: invalid parameters"),
        (lambda: SignalSpec("score", DriftDetectorSpec("ddm")), "signal 'score' is not 0/1"),
        (lambda: SignalSpec("brightness", DriftDetectorSpec("adwin")), "unknown drift signal"),
        (lambda: SignalSpec("feature:x", DriftDetectorSpec("adwin")), "expected feature:J"),
        (
            lambda: DriftMonitor([SignalSpec("predicted_class", DriftDetectorSpec("adwin"))]),
            "needs a classifier",
        ),
    ],
)
def test_misconfiguration_is_refused_with_a_clear_message(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(DriftConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


# --- signals ------------------------------------------------------------------------------


def test_signal_columns_match_numpy() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.random((5, 2, 3)).astype(np.float32)
    probabilities = np.array(
        [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, 0.0], [1 / 3] * 3],
        dtype=np.float32,
    )
    scores = rng.random(5).astype(np.float32)
    predictions = probabilities.argmax(axis=1)
    columns = signal_columns(
        ["top1", "entropy", "score", "prediction", "input_mean", "input_std", "feature:4"],
        inputs,
        probabilities,
        scores,
        predictions,
    )
    p = probabilities.astype(np.float64)
    expected_entropy = [-sum(q * np.log(q) for q in row if q > 0) for row in p]
    np.testing.assert_allclose(columns["entropy"], expected_entropy, atol=1e-7)
    assert columns["entropy"][0] == 0.0
    np.testing.assert_allclose(columns["entropy"][4], np.log(3), atol=1e-6)
    np.testing.assert_array_equal(columns["top1"], p.max(axis=1))
    np.testing.assert_array_equal(columns["prediction"], [0, 0, 2, 1, 0])
    flat = inputs.reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(columns["input_mean"], flat.mean(axis=1))
    np.testing.assert_allclose(columns["input_std"], flat.std(axis=1))
    np.testing.assert_array_equal(columns["feature:4"], flat[:, 4])
    np.testing.assert_array_equal(columns["score"], scores.astype(np.float64))
    with pytest.raises(DriftConfigError, match="the input has 6 features"):
        signal_columns(["feature:6"], inputs, probabilities, scores, predictions)


def test_default_signals() -> None:
    image = [s.name for s in default_signals("image", 10)]
    assert image == ["top1", "entropy", "score", "predicted_class", "input_mean", "input_std"]
    many = [s.name for s in default_signals("image", 1000)]
    assert "predicted_class" not in many
    tabular = [s.name for s in default_signals("tabular", 3, n_features=20)]
    assert tabular[:4] == ["top1", "entropy", "score", "predicted_class"]
    assert tabular[4:] == [f"feature:{j}" for j in range(16)]
    assert all(s.detector.kind == "adwin" for s in default_signals("image", 10))


# --- a model's monitor ----------------------------------------------------------------


def synthetic_batch(
    rng: np.random.Generator, n: int, brightness: float = 0.0
) -> dict[str, np.ndarray]:
    """Scored events of a 10-class image model: confident predictions, benign scores."""
    logits = rng.normal(0.0, 1.0, (n, 10))
    logits[np.arange(n), rng.integers(0, 10, n)] += 4.0
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    inputs = np.clip(rng.random((n, 8, 8)) * 0.6 + brightness, 0.0, 1.0)
    scores = rng.gamma(2.0, 0.05, n)
    columns = ["top1", "entropy", "score", "prediction", "input_mean", "input_std"]
    return signal_columns(columns, inputs, probabilities, scores, probabilities.argmax(axis=1))


def run_monitor(
    monitor: DriftMonitor, rng: np.random.Generator, batches: int, start: int, brightness: float
) -> list[tuple[str, int]]:
    alarms = []
    for b in range(batches):
        first = start + 64 * b
        columns = synthetic_batch(rng, 64, brightness)
        times = np.arange(first, first + 64, dtype=np.float64)
        alarms += [(a.stream, first + a.index) for a in monitor.update(columns, times)]
    return alarms


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_signals_stay_quiet_on_20000_stationary_events_and_catch_brightening(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    monitor = DriftMonitor(default_signals("image", 10), num_classes=10)
    assert len(monitor.streams) == 15  # 10 class streams
    quiet = run_monitor(monitor, rng, 313, 0, 0.0)  # 20,032 events
    assert quiet == []
    shifted = run_monitor(monitor, rng, 10, 20_032, 0.15)
    assert shifted[0] == ("input_mean", 20_095)


def test_a_checkpointed_monitor_continues_exactly_like_an_uninterrupted_one() -> None:
    def fresh() -> DriftMonitor:
        return DriftMonitor(default_signals("image", 10), num_classes=10, cooldown_seconds=0)

    uninterrupted = fresh()
    expected = run_monitor(uninterrupted, np.random.default_rng(5), 100, 0, 0.0)
    expected += run_monitor(uninterrupted, np.random.default_rng(6), 40, 6400, 0.2)
    first = fresh()
    got = run_monitor(first, np.random.default_rng(5), 100, 0, 0.0)
    restored = pickle.loads(pickle.dumps(first))
    got += run_monitor(restored, np.random.default_rng(6), 40, 6400, 0.2)
    assert expected  # the brightening was detected
    assert got == expected
    cold = run_monitor(fresh(), np.random.default_rng(6), 40, 6400, 0.2)
    assert cold != expected  # a cold start would not have matched


def test_cooldown_reports_a_stream_once_per_period_in_event_time() -> None:
    values = np.tile(np.concatenate([np.full(300, 0.1), np.full(300, 0.9)]), 6)
    times = np.arange(len(values), dtype=np.float64)
    spec = SignalSpec("score", DriftDetectorSpec("adwin"))
    every = DriftMonitor([spec]).update({"score": values}, times)
    cooled_monitor = DriftMonitor([spec], cooldown_seconds=1000.0)
    cooled = cooled_monitor.update({"score": values}, times)
    assert len(every) > 3
    kept = []
    quiet_until = -1.0
    for alarm in every:
        if alarm.index >= quiet_until:
            kept.append(alarm.index)
            quiet_until = alarm.index + 1000.0
    assert [a.index for a in cooled] == kept
    assert cooled_monitor.suppressed() == {"score": len(every) - len(kept)}


def test_update_checks_its_inputs() -> None:
    monitor = DriftMonitor([SignalSpec("score", DriftDetectorSpec("adwin"))])
    with pytest.raises(DriftConfigError, match="missing signal column 'score'"):
        monitor.update({"top1": np.zeros(3)}, np.zeros(3))
    with pytest.raises(ValueError, match="has 2 values for 3 events"):
        monitor.update({"score": np.zeros(2)}, np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        monitor.update({"score": np.array([0.0, np.nan, 1.0])}, np.zeros(3))
