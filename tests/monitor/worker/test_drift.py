"""The drift stage without a broker: real scoring, signals records, checkpoints, replays."""

from __future__ import annotations

import asyncio
import io
import pickle
import pickletools
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detectors import (
    DriftConfigError,
    DriftDetector,
    DriftDetectorSpec,
    DriftMonitor,
    SignalSpec,
)
from monitor.config import MonitorConfig
from monitor.demo.run import demo_event
from monitor.errors import UnsafeStateError
from monitor.worker.metrics import Metrics
from monitor.worker.models import load_model_detectors
from monitor.worker.records import InputMessage, OutputRecord
from monitor.worker.signals import drift_plans
from monitor.worker.stages.drift import (
    SIGNED,
    UNSIGNED,
    DriftStage,
    DriftState,
    StateUnpickler,
    seal_checkpoint,
)
from monitor.worker.stages.scoring import ScoringStage
from schemas import Detection, DetectionKind, SignalBatch
from tests.monitor.cli_support import DemoModel

SHIFT_AT = 3000
N_EVENTS = 4000
KEY = bytes(range(32))


def config_for(detector_path: Path, drift: dict[str, Any] | None = None) -> MonitorConfig:
    model: dict[str, Any] = {"id": "digits", "detector": str(detector_path)}
    if drift is not None:
        model["drift"] = drift
    return MonitorConfig.model_validate({"models": [model]})


def shifting_digits(demo_model: DemoModel, seed: int = 0) -> list[np.ndarray]:
    """Held-out digits drawn at random; from SHIFT_AT on, 0.25 brighter (clipped)."""
    rng = np.random.default_rng(seed)
    pool = demo_model.data.test_x
    picks = pool[rng.integers(0, len(pool), N_EVENTS)]
    picks[SHIFT_AT:] = np.clip(picks[SHIFT_AT:] + 0.25, 0.0, 1.0)
    return list(picks)


async def signal_records(config: MonitorConfig, images: Sequence[np.ndarray]) -> list[bytes]:
    """Score the images with the real scoring stage; the signals records it publishes."""
    published: list[OutputRecord] = []

    async def publish(records: Sequence[OutputRecord]) -> None:
        published.extend(records)

    models = load_model_detectors(config)
    stage = ScoringStage(
        config,
        models,
        Metrics.create(CollectorRegistry()),
        publish,
        device="cpu",
        drift=drift_plans(models),
    )
    await stage.on_start()
    try:
        for start in range(0, len(images), 64):
            messages = [
                InputMessage(
                    "inference-events",
                    0,
                    i,
                    None,
                    demo_event(f"e{i}", images[i], as_tensor=True, source="s"),
                    1_700_000_000.0 + i,
                )
                for i in range(start, min(start + 64, len(images)))
            ]
            await stage.process(messages)
    finally:
        await stage.on_stop()
    return [r.value for r in published if r.topic == config.topics.signals]


class Run:
    """A drift stage over a dict table, publishing into a list."""

    def __init__(
        self, config: MonitorConfig, table: dict[str, bytes], key: bytes | None = None
    ) -> None:
        self.records: list[OutputRecord] = []
        self.registry = CollectorRegistry()

        async def publish(records: Sequence[OutputRecord]) -> None:
            self.records.extend(records)

        models = load_model_detectors(config)
        self.stage = DriftStage(
            config,
            drift_plans(models),
            table,
            Metrics.create(self.registry),
            publish,
            checkpoint_key=key,
        )

    def feed(self, raw: Sequence[bytes], per_take: int = 7) -> None:
        for start in range(0, len(raw), per_take):
            asyncio.run(self.stage.process(raw[start : start + per_take]))

    def detections(self) -> list[Detection]:
        return [Detection.model_validate_json(r.value) for r in self.records]

    def resets(self, reason: str, model: str = "digits") -> float:
        value = self.registry.get_sample_value(
            "advmon_drift_resets_total", {"model": model, "reason": reason}
        )
        return value or 0.0

    def all_resets(self) -> float:
        return sum(
            sample.value
            for metric in self.registry.collect()
            if metric.name == "advmon_drift_resets"
            for sample in metric.samples
            if sample.name == "advmon_drift_resets_total"
        )


@pytest.fixture(scope="module")
def signals(demo_model: DemoModel, detector_path: Path) -> list[bytes]:
    return asyncio.run(signal_records(config_for(detector_path), shifting_digits(demo_model)))


def identity(detection: Detection) -> tuple[Any, ...]:
    return (detection.event_id, detection.signal, detection.offset)


def same_detections(got: list[Detection], expected: list[Detection]) -> None:
    """Same events and signals; same statistics up to the order of float sums across
    batches (a take groups events differently after a restart)."""
    assert [identity(d) for d in got] == [identity(d) for d in expected]
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.details == pytest.approx(theirs.details, rel=1e-12)


def test_scoring_publishes_one_signals_record_per_batch_keyed_by_model(
    signals: list[bytes], demo_model: DemoModel
) -> None:
    batches = [SignalBatch.model_validate_json(raw) for raw in signals]
    assert len(batches) == N_EVENTS // 64 + 1
    assert [o for b in batches for o in b.offsets] == list(range(N_EVENTS))
    first = batches[0]
    assert set(first.columns) == {
        "top1",
        "entropy",
        "score",
        "prediction",
        "input_mean",
        "input_std",
    }
    assert first.times[0] == 1_700_000_000.0
    image = shifting_digits(demo_model)[0]
    assert first.columns["input_mean"][0] == pytest.approx(float(image.mean()), rel=1e-6)
    assert 0.0 < first.columns["top1"][0] <= 1.0


def test_brightening_is_detected_after_the_shift_and_never_before(
    detector_path: Path, signals: list[bytes]
) -> None:
    run = Run(config_for(detector_path), {})
    run.feed(signals)
    detections = run.detections()
    assert detections
    assert all(d.kind is DetectionKind.DRIFT for d in detections)
    assert all(d.offset is not None and d.offset >= SHIFT_AT for d in detections)
    earliest = min(d.offset or 0 for d in detections)
    assert earliest - SHIFT_AT < 100  # the documented delay for this shift
    (first,) = [d for d in detections if d.offset == earliest and d.signal == "input_mean"]
    assert first.details["mean_recent"] > first.details["mean_before"]
    assert first.score == pytest.approx(abs(first.details["shift"]))
    assert first.event_id == f"drift:input_mean:e{first.offset}"
    assert first.detector == "adwin"
    assert run.registry.get_sample_value(
        "advmon_drift_detections_total", {"model": "digits", "signal": "input_mean"}
    ) == sum(1 for d in detections if d.signal == "input_mean")
    assert run.registry.get_sample_value("advmon_drift_state_events", {"model": "digits"}) == (
        N_EVENTS
    )


@pytest.mark.parametrize("key", [None, KEY], ids=["unsigned", "signed"])
def test_a_restart_from_the_checkpoint_detects_exactly_like_an_uninterrupted_run(
    detector_path: Path, signals: list[bytes], key: bytes | None
) -> None:
    config = config_for(detector_path)
    uninterrupted = Run(config, {})
    uninterrupted.feed(signals)
    expected = [identity(d) for d in uninterrupted.detections()]
    assert expected

    table: dict[str, bytes] = {}
    before = Run(config, table, key)
    before.feed(signals[:40])  # 2,560 events: the baseline, no drift yet
    assert before.detections() == []
    assert table["digits"].startswith(SIGNED if key else UNSIGNED)
    after = Run(config, dict(table), key)  # a new worker, recovering the table
    # At-least-once: the new worker is handed some records the old one already applied.
    after.feed(signals[35:])
    same_detections(after.detections(), uninterrupted.detections())
    assert after.all_resets() == 0

    cold = Run(config, {})
    cold.feed(signals[40:])
    assert [identity(d) for d in cold.detections()] != expected


def test_replayed_signals_update_no_detector_twice(
    detector_path: Path, signals: list[bytes]
) -> None:
    table: dict[str, bytes] = {}
    run = Run(config_for(detector_path), table)
    run.feed(signals)
    state = run.stage.load("digits")
    seen, published = state.monitor.n_seen, len(run.records)
    run.feed(signals)  # the whole topic again
    assert run.stage.load("digits").monitor.n_seen == seen == N_EVENTS
    assert len(run.records) == published


def toggling_signals(n: int = 6000, period: int = 600) -> list[bytes]:
    """input_mean alternating between 0.2 and 0.8 every ``period`` events, one per second."""
    values = np.where((np.arange(n) // period) % 2 == 0, 0.2, 0.8)
    values = values + np.random.default_rng(3).normal(0.0, 0.02, n)
    return [
        SignalBatch(
            model_id="digits",
            event_ids=[f"e{i}" for i in range(start, start + 100)],
            times=[float(i) for i in range(start, start + 100)],
            topics=["inference-events"] * 100,
            partitions=[0] * 100,
            offsets=list(range(start, start + 100)),
            columns={"input_mean": values[start : start + 100].tolist()},
        )
        .model_dump_json()
        .encode()
        for start in range(0, n, 100)
    ]


def test_cooldown_keeps_one_detection_per_signal_within_the_period(detector_path: Path) -> None:
    signals = toggling_signals()
    drift = {"signals": {"input_mean": "adwin"}, "warmup": 0}
    free = Run(config_for(detector_path, {**drift, "cooldown_seconds": 0}), {})
    free.feed(signals)
    cooled = Run(config_for(detector_path, {**drift, "cooldown_seconds": 2000}), {})
    cooled.feed(signals)
    every = [d.offset or 0 for d in free.detections()]
    assert len(every) >= 9  # one per toggle at least
    kept, quiet_until = [], -1
    for offset in every:  # event time = offset seconds
        if offset >= quiet_until:
            kept.append(offset)
            quiet_until = offset + 2000
    assert [d.offset for d in cooled.detections()] == kept
    assert cooled.registry.get_sample_value(
        "advmon_drift_suppressed", {"model": "digits", "stream": "input_mean"}
    ) == len(every) - len(kept)


def test_a_changed_configuration_starts_afresh(detector_path: Path, signals: list[bytes]) -> None:
    table: dict[str, bytes] = {}
    Run(config_for(detector_path), table).feed(signals[:10])
    other = Run(config_for(detector_path, {"signals": {"top1": "adwin"}}), table)
    assert other.stage.load("digits").monitor.n_seen == 0
    same = Run(config_for(detector_path), table)
    assert same.stage.load("digits").monitor.n_seen == 640


def every_kind_state() -> DriftState:
    kinds = ["adwin", "kswin", "page_hinkley", "none"]
    binary = ["ddm", "eddm", "hddm_a", "hddm_w", "fhddm"]
    signals = [SignalSpec("top1", DriftDetectorSpec(k)) for k in kinds]
    signals += [SignalSpec("predicted_class", DriftDetectorSpec(k)) for k in binary]
    monitor = DriftMonitor(signals, num_classes=3, cooldown_seconds=5)
    rng = np.random.default_rng(0)
    for _ in range(40):
        columns = {"top1": rng.random(64), "prediction": rng.integers(0, 3, 64).astype(float)}
        monitor.update(columns, np.arange(64.0))
    return DriftState("fingerprint", monitor, {"t/0": (5, 0)}, 1.0)


def test_states_of_every_detector_kind_round_trip_through_the_restricted_unpickler() -> None:
    state = every_kind_state()
    restored = StateUnpickler.loads(state.dumps())
    assert isinstance(restored, DriftState)
    columns = {"top1": np.full(500, 0.99), "prediction": np.zeros(500)}
    assert [a.stream for a in restored.monitor.update(columns, np.arange(500.0))] == [
        a.stream for a in state.monitor.update(columns, np.arange(500.0))
    ]


def test_states_checkpointed_before_the_worker_package_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A changelog written by a worker whose stage module was ``monitor.drift_stage``."""
    earlier = types.ModuleType("monitor.drift_stage")
    earlier.DriftState = DriftState  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "monitor.drift_stage", earlier)
    monkeypatch.setattr(DriftState, "__module__", "monitor.drift_stage")
    state = every_kind_state()
    old = state.dumps()
    monkeypatch.undo()
    assert b"monitor.drift_stage" in old
    restored = StateUnpickler.loads(old)
    assert isinstance(restored, DriftState)
    assert restored.applied == state.applied


class RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


class ReachesGlobals:
    """``getattr(DriftMonitor, "__init__")``: the first step to its module's globals."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (getattr, (DriftMonitor, "__init__"))


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(RunsCode()),
        pickle.dumps(ReachesGlobals()),
    ],
    ids=["foreign-global", "getattr-escape"],
)
def test_the_unpickler_refuses_anything_but_state(payload: bytes) -> None:
    with pytest.raises(UnsafeStateError):
        StateUnpickler.loads(payload)


def test_getattr_is_limited_to_page_hinkley_tests() -> None:
    state = every_kind_state()
    data = state.dumps()
    assert any(
        op.name in {"STACK_GLOBAL", "GLOBAL"} for op, _, _ in pickletools.genops(io.BytesIO(data))
    )
    lookup = StateUnpickler(io.BytesIO(b"")).find_class("builtins", "getattr")
    with pytest.raises(UnsafeStateError, match=r"may not look up DriftMonitor\.__init__"):
        lookup(state.monitor, "__init__")


def test_a_forged_checkpoint_is_ignored_not_executed(
    detector_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Run(config_for(detector_path), {"digits": pickle.dumps(RunsCode())})
    assert run.stage.load("digits").monitor.n_seen == 0
    assert "this must never run" not in capsys.readouterr().out


def test_plans_follow_the_config(detector_path: Path) -> None:
    models = load_model_detectors(config_for(detector_path, {"enabled": False}))
    assert drift_plans(models) == {}
    models = load_model_detectors(config_for(detector_path, {"signals": {"feature:64": "adwin"}}))
    with pytest.raises(DriftConfigError, match="model 'digits': drift: signal 'feature:64'"):
        drift_plans(models)
    (plan,) = drift_plans(load_model_detectors(config_for(detector_path))).values()
    assert [s.name for s in plan.signals][:4] == ["top1", "entropy", "score", "predicted_class"]
    assert all(s.detector.warmup == 100 for s in plan.signals)


def test_held_states_are_reported_before_new_signals_arrive(
    detector_path: Path, signals: list[bytes]
) -> None:
    table: dict[str, bytes] = {}
    Run(config_for(detector_path), table).feed(signals[:10])
    restarted = Run(config_for(detector_path), table)  # recovered table, no signals yet
    assert (
        restarted.registry.get_sample_value("advmon_drift_state_events", {"model": "digits"})
        is None
    )
    restarted.stage.report_held()
    assert (
        restarted.registry.get_sample_value("advmon_drift_state_events", {"model": "digits"}) == 640
    )
    elsewhere = Run(config_for(detector_path), table)
    elsewhere.stage.owns = lambda _model: False  # the partition went to another worker
    elsewhere.stage.report_held()
    assert (
        elsewhere.registry.get_sample_value("advmon_drift_state_events", {"model": "digits"})
        is None
    )


# --- Damaged and forged checkpoints ---------------------------------------------------


def learned_checkpoint(detector_path: Path, signals: list[bytes], key: bytes | None) -> bytes:
    """The table record after the first 640 events, written with ``key``."""
    table: dict[str, bytes] = {}
    Run(config_for(detector_path), table, key).feed(signals[:10])
    return table["digits"]


class Unpickled:
    """Counts the restricted unpickler's lookups: none means nothing was unpickled."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lookups: list[tuple[str, str]] = []
        find_class = StateUnpickler.find_class

        def spy(unpickler: StateUnpickler, module: str, name: str) -> Any:
            self.lookups.append((module, name))
            return find_class(unpickler, module, name)

        monkeypatch.setattr(StateUnpickler, "find_class", spy)


def flip(record: bytes, at: int) -> bytes:
    return record[:at] + bytes([record[at] ^ 0x01]) + record[at + 1 :]


TAMPERED: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "payload-byte-flipped": (lambda good: flip(good, len(good) - 200), "bad_signature"),
    "tag-byte-flipped": (lambda good: flip(good, len(SIGNED) + 5), "bad_signature"),
    "code-under-a-wrong-tag": (
        lambda _good: SIGNED + bytes(32) + pickle.dumps(RunsCode()),
        "bad_signature",
    ),
    "cut-short": (lambda good: good[: len(SIGNED) + 10], "bad_signature"),
    "signed-for-another-model": (
        lambda good: seal_checkpoint(good[len(SIGNED) + 32 :], "other", KEY),
        "bad_signature",
    ),
    "unsigned-code": (lambda _good: UNSIGNED + pickle.dumps(RunsCode()), "unauthenticated"),
    "bare-pickle-of-an-earlier-version": (
        lambda good: good[len(SIGNED) + 32 :],
        "unauthenticated",
    ),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_checkpoint_that_does_not_verify_is_never_unpickled_and_resets_the_model(
    detector_path: Path,
    signals: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    good = learned_checkpoint(detector_path, signals, KEY)
    tamper, reason = TAMPERED[name]
    table = {"digits": tamper(good)}
    unpickled = Unpickled(monkeypatch)
    run = Run(config_for(detector_path), table, KEY)
    run.stage.report_held()  # at start: nothing to report, nothing unpickled
    run.feed(signals[10:14])  # one take: the reset, then the fresh detectors learn it
    assert unpickled.lookups == []
    assert "this must never run" not in capsys.readouterr().out
    assert run.stage.load("digits").monitor.n_seen == 4 * 64
    assert run.resets(reason) == 1 == run.all_resets()
    (warning,) = [r.getMessage() for r in caplog.records if "start afresh" in r.getMessage()]
    assert warning.startswith("model digits: ")
    assert warning.endswith(f"({reason})")
    assert table["digits"].startswith(SIGNED)


def test_without_a_key_checkpoints_are_unsigned_and_earlier_ones_are_read(
    detector_path: Path, signals: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    table: dict[str, bytes] = {}
    run = Run(config_for(detector_path), table)
    assert [r.getMessage() for r in caplog.records if "not authenticated" in r.getMessage()]
    run.feed(signals[:10])
    unsigned = table["digits"]
    assert unsigned.startswith(UNSIGNED)
    earlier = unsigned[len(UNSIGNED) :]  # a bare pickle, as versions before signing wrote
    assert earlier.startswith(b"\x80")
    for record in (unsigned, earlier):
        restored = Run(config_for(detector_path), {"digits": record})
        assert restored.stage.load("digits").monitor.n_seen == 640
        assert restored.all_resets() == 0
    signed = Run(config_for(detector_path), {"digits": seal_checkpoint(earlier, "digits", KEY)})
    assert signed.stage.load("digits").monitor.n_seen == 0  # no key to verify it with
    assert signed.resets("unauthenticated") == 1


def test_a_checkpoint_key_shorter_than_32_bytes_is_refused(detector_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_key must have at least 32 bytes, got 31"):
        Run(config_for(detector_path), {}, KEY[:31])


def first_adwin(state: DriftState) -> DriftDetector:
    return next(s.detector for s in state.monitor.streams if s.detector.kind == "adwin")


def adwin_helper(state: DriftState) -> Any:
    """The Rust core of the state's first ADWIN detector."""
    return first_adwin(state).river._helper


def with_impossible_adwin(state: DriftState) -> DriftState:
    """The state with its first ADWIN's bucket limit (``max_buckets``, 5) set to 0 in its
    serialised Rust state, which River restores without a check."""
    helper = adwin_helper(state)
    raw = bytearray(helper.__getstate__())
    # Layout of river 0.26's AdaptiveWindowing state: delta (f64), clock (u32), max_buckets.
    assert raw[8:16] == (32).to_bytes(4, "little") + (5).to_bytes(4, "little")
    raw[12:16] = bytes(4)
    helper.__setstate__(bytes(raw))
    return state


def two_models(detector_path: Path) -> MonitorConfig:
    model = {"detector": str(detector_path)}
    return MonitorConfig.model_validate(
        {"models": [{"id": "digits", **model}, {"id": "other", **model}]}
    )


def as_model(raw: bytes, model_id: str) -> bytes:
    batch = SignalBatch.model_validate_json(raw)
    return batch.model_copy(update={"model_id": model_id}).model_dump_json().encode()


def test_a_detector_that_panics_on_update_resets_its_model_and_the_others_go_on(
    detector_path: Path, signals: list[bytes]
) -> None:
    good = learned_checkpoint(detector_path, signals, KEY)
    state = StateUnpickler.loads(good[len(SIGNED) + 32 :])
    damaged = with_impossible_adwin(state).dumps()

    # What the stage meets: River's Rust core panics, and a panic is no Exception.
    probe = first_adwin(StateUnpickler.loads(damaged))
    with pytest.raises(BaseException, match="index out of bounds") as caught:
        probe.update_many(np.full(64, 0.5))
    assert type(caught.value).__name__ == "PanicException"
    assert not isinstance(caught.value, Exception)

    table = {
        "digits": seal_checkpoint(damaged, "digits", KEY),
        "other": seal_checkpoint(good[len(SIGNED) + 32 :], "other", KEY),
    }
    run = Run(two_models(detector_path), table, KEY)
    take = [as_model(raw, model) for raw in signals[10:17] for model in ("digits", "other")]
    run.feed(take, per_take=len(take))
    assert run.resets("update_failed") == 1 == run.all_resets()
    assert run.stage.load("digits").monitor.n_seen == 7 * 64  # fresh, learned the take
    assert run.stage.load("other").monitor.n_seen == 640 + 7 * 64  # went on from its state
    run.feed([as_model(raw, "digits") for raw in signals[17:20]])
    assert run.stage.load("digits").monitor.n_seen == 10 * 64
    assert run.all_resets() == 1  # the fresh state's checkpoint restores


def test_a_checkpoint_that_panics_while_restoring_resets_its_model(
    detector_path: Path, signals: list[bytes]
) -> None:
    good = learned_checkpoint(detector_path, signals, KEY)
    state = StateUnpickler.loads(good[len(SIGNED) + 32 :])
    helper_type = type(adwin_helper(state))

    class CutShort(pickle.Pickler):
        """Writes every ADWIN core with its serialised state cut short."""

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is not helper_type:
                return NotImplemented
            make, args, raw = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)[:3]
            return make, args, raw[:100]

    out = io.BytesIO()
    CutShort(out, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    with pytest.raises(BaseException, match="UnexpectedEof") as caught:
        StateUnpickler.loads(out.getvalue())
    assert type(caught.value).__name__ == "PanicException"

    run = Run(
        config_for(detector_path), {"digits": seal_checkpoint(out.getvalue(), "digits", KEY)}, KEY
    )
    run.feed(signals[10:12])
    assert run.resets("unreadable") == 1 == run.all_resets()
    assert run.stage.load("digits").monitor.n_seen == 2 * 64


def test_a_take_that_fresh_detectors_fail_on_too_is_skipped(
    detector_path: Path, signals: list[bytes]
) -> None:
    def without_input_mean(raw: bytes) -> bytes:
        batch = SignalBatch.model_validate_json(raw)
        columns = {k: v for k, v in batch.columns.items() if k != "input_mean"}
        return batch.model_copy(update={"columns": columns}).model_dump_json().encode()

    table: dict[str, bytes] = {}
    run = Run(config_for(detector_path), table, KEY)
    run.feed(signals[:10])
    run.feed([without_input_mean(raw) for raw in signals[10:12]])
    assert run.resets("update_failed") == 2  # the learned detectors, then fresh ones
    skipped = run.stage.load("digits")
    assert skipped.monitor.n_seen == 0
    assert skipped.applied == {"inference-events/0": (12 * 64 - 1, 0)}
    run.feed(signals[10:14])  # the skipped events are not offered again
    assert run.stage.load("digits").monitor.n_seen == 2 * 64
    assert run.all_resets() == 2
