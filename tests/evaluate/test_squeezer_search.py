"""The squeezer search of ``advmon calibrate``: candidates, scoring, choice, and the result.

The last tests attack the chosen detector with adversarial examples crafted from each
model's test split, never seen by the search, and compare it with the paper's MNIST
configuration and with the preset on the same examples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from detectors import (
    SEARCH_BUDGETS,
    CalibrationError,
    Detector,
    DetectorConfig,
    InputKind,
    ModelSignature,
    SearchCandidate,
    SqueezeScorer,
    build_squeeze_graph,
    calibrate_detector,
    calibrate_threshold,
    inspect_model,
    load_model,
    parse_squeezer_spec,
    preset_for,
)
from monitor.evaluate._attacks import craft_adversarial, samples_for
from monitor.evaluate._search import (
    PAPER_MNIST_SPEC,
    SEARCH_LIMITS,
    BenignSample,
    candidate_specs,
    choose_candidate,
    evaluate_candidates,
    held_back_fpr_limit,
    rank_candidates,
    search_squeezers,
)
from monitor.offline import calibrate_file
from tests.detectors.models import random_cnn
from tests.evaluate.models import ModelCase, digits28_cnn, digits_mlp


def _signature(shape: tuple[int, ...], kind: InputKind = "image") -> ModelSignature:
    return ModelSignature("x", shape, kind, "y", 10, "logits", 1, 17)


# --- candidates ------------------------------------------------------------------------------


def test_image_candidates_are_bit_depths_medians_and_their_combinations() -> None:
    specs = candidate_specs(_signature((1, 28, 28)))
    assert specs[0] == "bit_depth:2,median:2"  # the preset comes first
    assert len(specs) == len(set(specs)) == 27
    assert PAPER_MNIST_SPEC in specs
    for bits in range(1, 7):
        for medians in ("", ",median:2", ",median:3", ",median:2,median:3"):
            assert f"bit_depth:{bits}{medians}" in specs
    assert {"median:2", "median:3", "median:2,median:3"} <= set(specs)
    assert not any("bit_depth:7" in spec for spec in specs)
    # Every spec is canonical: what a detector file would hold.
    for spec in specs:
        assert ",".join(s.spec for s in parse_squeezer_spec(spec)) == spec


@pytest.mark.parametrize(
    ("shape", "preset"),
    [((1, 8, 8), "bit_depth:2"), ((3, 32, 32), "bit_depth:4,median:2"), ((8, 8), "bit_depth:2")],
)
def test_image_candidates_always_hold_the_preset_and_the_papers_configuration(
    shape: tuple[int, ...], preset: str
) -> None:
    for budget in SEARCH_BUDGETS:
        specs = candidate_specs(_signature(shape), budget)
        assert specs[0] == preset == preset_for(_signature(shape))
        assert PAPER_MNIST_SPEC in specs


def test_tabular_candidates_are_grids_and_hold_the_preset() -> None:
    small = candidate_specs(_signature((30,), "tabular"), "small")
    assert small == (
        "quantize:0.5",
        "quantize:0.25",
        "quantize:1",
        "quantize:2",
        "quantile:4",
        "quantile:8",
        "quantile:16",
        "quantile:32",
        "round:0",
        "round:1",
        "round:2",
    )
    full = candidate_specs(_signature((30,), "tabular"), "full")
    assert full[0] == "quantize:0.5"
    assert set(small) < set(full)
    assert "quantize:0.25,quantile:16" in full
    assert not any("bit_depth" in spec or "median" in spec for spec in full)


# --- scoring and choosing ----------------------------------------------------------------------


def test_candidates_are_scored_from_per_squeezer_distances() -> None:
    rng = np.random.default_rng(0)
    columns = ["bit_depth:1", "median:2", "median:3"]
    threshold = rng.uniform(0.0, 1.0, (200, 3))
    held_back = rng.uniform(0.0, 1.0, (120, 3))
    attacks = {
        "fgsm": rng.uniform(0.5, 2.0, (40, 3)),
        "cw": rng.uniform(0.0, 1.2, (30, 3)),
        "simba": np.empty((0, 3)),
    }
    specs = ["median:2", "bit_depth:1,median:3", "bit_depth:1,median:2,median:3"]
    candidates = evaluate_candidates(specs, columns, threshold, held_back, attacks, fpr=0.1)
    assert [c.spec for c in candidates] == specs
    for candidate, used in zip(candidates, [[1], [0, 2], [0, 1, 2]], strict=True):
        cut = np.float32(calibrate_threshold(threshold[:, used].max(axis=1), 0.1).threshold)
        assert candidate.threshold == float(cut)
        assert candidate.held_back_fpr == np.mean(held_back[:, used].max(axis=1) > cut)
        expected = {
            name: float(np.mean(d[:, used].max(axis=1) > cut))
            for name, d in attacks.items()
            if len(d)
        }
        # An attack without a single success is left out, not counted as undetected.
        assert candidate.detection_by_attack == expected
        assert candidate.detection_rate == pytest.approx(np.mean(list(expected.values())))
        fgsm, cw = expected["fgsm"], expected["cw"]
        assert candidate.detection_stderr == pytest.approx(
            np.sqrt(fgsm * (1 - fgsm) / 40 + cw * (1 - cw) / 30) / 2
        )


def test_one_fused_graph_scores_each_candidate_as_its_own_detector_would(
    tmp_path: Path,
) -> None:
    model = random_cnn(channels=1, side=12, seed=3)
    x = np.random.default_rng(1).uniform(0.0, 1.0, (40, 1, 12, 12)).astype(np.float32)
    union = parse_squeezer_spec("bit_depth:1,bit_depth:4,median:2,median:3")
    columns = [s.spec for s in union]
    distances = SqueezeScorer(
        build_squeeze_graph(model, union, output_kind="logits"), device="cpu"
    ).score(x)
    for spec in ("bit_depth:4", "bit_depth:1,median:3", "bit_depth:4,median:2,median:3"):
        alone = SqueezeScorer(
            build_squeeze_graph(model, parse_squeezer_spec(spec), output_kind="logits"),
            device="cpu",
        ).score(x)
        picked = [columns.index(item) for item in spec.split(",")]
        np.testing.assert_array_equal(
            distances.squeezer_distances[:, picked].max(axis=1), alone.score
        )


def _candidate(spec: str, detection: float, fpr: float, stderr: float = 0.0) -> SearchCandidate:
    return SearchCandidate(spec, detection, fpr, 0.5, {}, stderr)


def test_the_best_detection_rate_wins_and_ties_go_to_fewer_false_positives_then_squeezers() -> None:
    assert (
        choose_candidate(
            [_candidate("bit_depth:2", 0.6, 0.05), _candidate("bit_depth:3", 0.7, 0.06)]
        ).spec
        == "bit_depth:3"
    )
    assert (
        choose_candidate(
            [_candidate("bit_depth:2", 0.7, 0.06), _candidate("bit_depth:3", 0.7, 0.05)]
        ).spec
        == "bit_depth:3"
    )
    tied = [
        _candidate("bit_depth:1,median:2", 0.7, 0.05),
        _candidate("median:3", 0.7, 0.05),
        _candidate("median:2", 0.7, 0.05),
    ]
    assert choose_candidate(tied).spec == "median:3"  # fewer squeezers, then the earlier one


def test_detection_rates_within_one_standard_error_of_the_best_are_ties() -> None:
    best = _candidate("bit_depth:3", 0.539, 0.062, stderr=0.024)
    close = _candidate("bit_depth:1,median:3", 0.537, 0.054, stderr=0.024)
    lower = _candidate("bit_depth:1", 0.515, 0.049, stderr=0.024)
    far = _candidate("bit_depth:2", 0.5, 0.01, stderr=0.024)
    ranked = rank_candidates([best, close, lower, far], fpr_limit=0.09)
    # 0.515 is within 0.024 of 0.539: the three tie and the lowest held-back FPR wins.
    assert [c.spec for c in ranked] == [
        "bit_depth:1",
        "bit_depth:1,median:3",
        "bit_depth:3",
        "bit_depth:2",
    ]
    assert choose_candidate([best, close, far], fpr_limit=0.09).spec == "bit_depth:1,median:3"
    exact = _candidate("bit_depth:3", 0.539, 0.062)
    assert choose_candidate([exact, close, lower], fpr_limit=0.09).spec == "bit_depth:3"


def test_a_candidate_whose_threshold_lets_through_too_many_benign_events_cannot_win() -> None:
    limit = held_back_fpr_limit(0.05, 225, 224)
    assert limit == pytest.approx(0.05 + 2 * np.sqrt(0.05 * 0.95 * (1 / 225 + 1 / 224)))
    loose = _candidate("bit_depth:2,median:3", 0.59, 0.116)
    tight = _candidate("bit_depth:1,median:3", 0.53, 0.054)
    assert choose_candidate([loose, tight], limit).spec == "bit_depth:1,median:3"
    # When every candidate is above the limit they all compete.
    assert choose_candidate([loose], limit).spec == "bit_depth:2,median:3"
    with pytest.raises(ValueError, match="no candidates"):
        choose_candidate([])


# --- the bounded sample ------------------------------------------------------------------------


def test_the_sample_is_bounded_uniform_and_independent_of_batching() -> None:
    x = np.arange(5_000, dtype=np.float32).reshape(-1, 1)
    samples = []
    for batch_size in (1, 7, 256, 5_000):
        sample = BenignSample(300, seed=4)
        for start in range(0, len(x), batch_size):
            sample.update(x[start : start + batch_size])
        samples.append(sample.inputs.ravel())
        assert sample.count == 5_000
    for other in samples[1:]:
        np.testing.assert_array_equal(other, samples[0])
    kept = samples[0]
    assert len(kept) == len(np.unique(kept)) == 300
    assert np.all(np.diff(kept) > 0)  # in stream order
    # Uniform over the stream: each fifth of it holds about a fifth of the sample.
    counts = np.histogram(kept, bins=5, range=(0, 5_000))[0]
    assert counts.min() > 40, counts


def test_a_sample_smaller_than_its_capacity_keeps_every_input() -> None:
    sample = BenignSample(1_000, seed=0)
    x = np.random.default_rng(0).uniform(size=(130, 1, 4, 4)).astype(np.float32)
    sample.update(x[:100])
    sample.update(x[100:])
    np.testing.assert_array_equal(sample.inputs, x)


def test_inputs_of_another_shape_stop_the_sampling() -> None:
    sample = BenignSample(10, seed=0)
    sample.update(np.zeros((5, 1, 8, 8), np.float32))
    sample.update(np.zeros((3, 1, 6, 6), np.float32))
    sample.update(np.zeros((2, 1, 8, 8), np.float32))
    assert sample.varying_shape
    assert sample.count == 10
    assert len(sample.inputs) == 0


def test_each_budget_attacks_no_more_events_than_the_attacks_accept() -> None:
    for budget in SEARCH_BUDGETS:
        assert SEARCH_LIMITS[budget].attacked_events <= samples_for(budget)
    assert SEARCH_LIMITS["small"].sample_events < SEARCH_LIMITS["full"].sample_events


# --- the search, with attacks stubbed ----------------------------------------------------------


@dataclass(frozen=True)
class _Crafted:
    name: str
    norm: str
    access: str
    x_adv: np.ndarray


class _RecordingCraft:
    """Stands in for ``craft_adversarial``: records its call and returns fixed examples."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.calls: list[dict[str, Any]] = []

    def __call__(self, model_path: Path, x: np.ndarray, labels: Any, **options: Any) -> Any:
        self.calls.append({"model_path": model_path, "x": x, "labels": labels, **options})
        return self.make(x)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    return digits_mlp(tmp_path_factory.mktemp("mlp"))


def _sample(x: np.ndarray, capacity: int = 2_000) -> BenignSample:
    sample = BenignSample(capacity, seed=0)
    sample.update(x)
    return sample


def _noisy(x: np.ndarray) -> list[_Crafted]:
    noise = np.random.default_rng(0).uniform(-0.4, 0.4, x.shape)
    return [
        _Crafted("noise", "linf", "black-box", np.clip(x + noise, 0, 1).astype(np.float32)),
        _Crafted("nothing", "l2", "white-box", x[:0]),
    ]


def test_the_search_attacks_held_back_events_labelled_by_the_model(mlp: ModelCase) -> None:
    craft = _RecordingCraft(_noisy)
    benign = mlp.calibration.x
    found = search_squeezers(
        mlp.model_path,
        _sample(benign),
        fpr=0.05,
        input_range=(0.0, 1.0),
        output_kind="logits",
        seed=2,
        device="cpu",
        craft=craft,
    )
    (call,) = craft.calls
    attacked = call["x"]
    assert len(attacked) == SEARCH_LIMITS["small"].attacked_events
    assert call["attacks"] == "square,simba,fgsm,pgd,deepfool"
    assert (call["budget"], call["seed"], call["input_range"]) == ("small", 2, (0.0, 1.0))
    # The model's own predictions are the labels: benign events carry no ground truth.
    session_labels = Detector(
        calibrate_detector(
            mlp.model_path, lambda: [benign], squeezer_spec="bit_depth:2", device="cpu"
        ),
        onnx.load(mlp.model_path),
        device="cpu",
    ).score(attacked)
    np.testing.assert_array_equal(call["labels"], session_labels.scores.prediction)
    # The attacked events are the first of the held-back part of the seeded shuffle.
    held_back = benign[np.random.default_rng(2).permutation(len(benign))[: len(benign) // 2]]
    np.testing.assert_array_equal(attacked, held_back[:50])

    assert found.searched
    assert found.split.benign_events == found.split.sampled_events == len(benign)
    assert found.split.threshold_events + found.split.held_back_events == len(benign)
    assert found.split.held_back_events == len(benign) // 2
    assert [(a.name, a.successful, a.attempted) for a in found.attacks] == [
        ("noise", 50, 50),
        ("nothing", 0, 50),
    ]
    assert [c.spec for c in found.candidates] == list(
        candidate_specs(inspect_model(onnx.load(mlp.model_path)))
    )
    assert all(set(c.detection_by_attack) == {"noise"} for c in found.candidates)
    best = choose_candidate(found.candidates, held_back_fpr_limit(0.05, 225, 224))
    assert found.chosen == best.spec
    assert found.held_back_fpr_limit == pytest.approx(held_back_fpr_limit(0.05, 225, 224))


def test_the_search_falls_back_to_the_preset_when_no_attack_succeeds(mlp: ModelCase) -> None:
    craft = _RecordingCraft(lambda x: [_Crafted("square", "linf", "black-box", x[:0])])
    found = search_squeezers(
        mlp.model_path,
        _sample(mlp.calibration.x),
        fpr=0.05,
        input_range=(0.0, 1.0),
        output_kind="logits",
        device="cpu",
        craft=craft,
    )
    assert (found.chosen, found.preset) == ("bit_depth:2", "bit_depth:2")
    assert found.fallback_reason == (
        "no attack fooled the model on 50 held-back events (attacks tried: square)"
    )
    assert found.candidates == ()
    assert found.attacks[0].successful == 0


@pytest.mark.parametrize(
    ("events", "fpr", "reason"),
    [
        (119, 0.05, "the search needs 120 (100 to calibrate candidate thresholds at FPR 0.05"),
        (500, 0.002, "the search needs 520 (500 to calibrate candidate thresholds at FPR 0.002"),
    ],
)
def test_the_search_falls_back_to_the_preset_with_too_few_events(
    mlp: ModelCase, events: int, fpr: float, reason: str
) -> None:
    x = np.concatenate([mlp.calibration.x, mlp.test.x])[:events]
    craft = _RecordingCraft(_noisy)
    found = search_squeezers(
        mlp.model_path,
        _sample(x),
        fpr=fpr,
        input_range=(0.0, 1.0),
        output_kind="logits",
        device="cpu",
        craft=craft,
    )
    assert not craft.calls
    assert found.chosen == "bit_depth:2"
    assert found.fallback_reason is not None
    assert found.fallback_reason.startswith("too few benign events to search: " + reason)
    assert found.fallback_reason.endswith(f"got {events}")


def test_the_search_falls_back_when_inputs_differ_in_shape(mlp: ModelCase) -> None:
    sample = BenignSample(100)
    sample.update(np.zeros((3, 1, 8, 8), np.float32))
    sample.update(np.zeros((3, 1, 9, 9), np.float32))
    found = search_squeezers(
        mlp.model_path,
        sample,
        fpr=0.05,
        input_range=(0.0, 1.0),
        output_kind="logits",
        device="cpu",
        craft=_RecordingCraft(_noisy),
    )
    assert found.fallback_reason == (
        "the benign inputs differ in shape; the search needs inputs of one shape"
    )


# --- the chosen detector against attacks it never saw --------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """Detection of adversarial examples crafted from the test split, per squeezer spec."""

    config: DetectorConfig
    detection: dict[str, float]
    """Mean over attacks of the fraction flagged, at thresholds calibrated as advmon does
    (on the calibration split)."""
    test_fpr: dict[str, float]
    """Fraction of the clean test split flagged at those thresholds."""
    equal_fpr_detection: dict[str, float]
    """Mean over attacks of the fraction scored above the threshold that flags 5 % of the
    clean test split: every spec compared at the same false-positive rate."""


def _detection(scores: Sequence[np.ndarray], threshold: float) -> float:
    return float(np.mean([np.mean(s > np.float32(threshold)) for s in scores]))


def _search_and_attack(case: ModelCase, folder: Path, baselines: Sequence[str]) -> _Outcome:
    """Calibrate with a search on the calibration split; attack the test split."""
    events = case.write_events(folder / "benign.jsonl", *case.calibration)
    detector_path = folder / "detector.json"
    report = calibrate_file(
        case.model_path, events, detector_path, search="small", seed=0, device="cpu"
    )
    signature = inspect_model(load_model(str(case.model_path)))
    attacks = [
        a
        for a in craft_adversarial(
            case.model_path,
            case.test.x[:100],
            None,
            input_range=case.input_range,
            output_kind=case.output_kind,
            attacks=SEARCH_LIMITS["small"].attacks_for(signature),
            seed=1,
        )
        if len(a.x_adv)
    ]
    assert len(attacks) == 5
    chosen = Detector.from_file(detector_path, device="cpu")
    detectors = {report.config.squeezer_spec: chosen}
    for spec in baselines:
        config = calibrate_detector(
            case.model_path,
            lambda: [case.calibration.x],
            squeezer_spec=spec,
            input_range=case.input_range,
            device="cpu",
        )
        detectors.setdefault(spec, Detector(config, load_model(str(case.model_path)), device="cpu"))
    outcome = _Outcome(report.config, {}, {}, {})
    for spec, detector in detectors.items():
        scores = [detector.score(a.x_adv).scores.score for a in attacks]
        clean = detector.score(case.test.x).scores.score
        outcome.detection[spec] = _detection(scores, detector.threshold)
        outcome.test_fpr[spec] = float(np.mean(clean > np.float32(detector.threshold)))
        equal = calibrate_threshold(clean, 0.05).threshold
        outcome.equal_fpr_detection[spec] = _detection(scores, equal)
    return outcome


def test_on_the_demo_model_the_search_is_never_worse_than_the_preset(
    mlp: ModelCase, tmp_path: Path
) -> None:
    preset = "bit_depth:2"
    outcome = _search_and_attack(mlp, tmp_path, [preset])
    chosen = outcome.config.squeezer_spec
    evidence = outcome.config.squeezer_search
    assert evidence is not None
    assert evidence.searched
    assert evidence.preset == preset
    assert outcome.detection[chosen] >= outcome.detection[preset], outcome
    assert outcome.equal_fpr_detection[chosen] >= outcome.equal_fpr_detection[preset], outcome
    assert outcome.test_fpr[chosen] <= 0.1, outcome
    content = json.loads((tmp_path / "detector.json").read_text(encoding="utf-8"))
    assert content["squeezer_search"]["chosen"] == chosen


def test_on_28x28_digits_the_search_beats_the_papers_mnist_configuration(
    tmp_path: Path,
) -> None:
    case = digits28_cnn(tmp_path)
    preset = "bit_depth:2,median:2"
    outcome = _search_and_attack(case, tmp_path, [PAPER_MNIST_SPEC, preset])
    chosen = outcome.config.squeezer_spec
    for baseline in (PAPER_MNIST_SPEC, preset):
        assert outcome.detection[chosen] >= outcome.detection[baseline], outcome
        assert outcome.equal_fpr_detection[chosen] >= outcome.equal_fpr_detection[baseline], outcome
    assert outcome.test_fpr[chosen] <= 0.1, outcome


def test_the_search_refuses_a_false_positive_rate_outside_0_and_1(mlp: ModelCase) -> None:
    for fpr in (0.0, 1.0):
        with pytest.raises(CalibrationError, match="between 0 and 1"):
            search_squeezers(
                mlp.model_path,
                _sample(mlp.calibration.x),
                fpr=fpr,
                input_range=(0.0, 1.0),
                output_kind="logits",
                device="cpu",
                craft=_RecordingCraft(_noisy),
            )


def test_calibrate_file_takes_squeezers_or_a_search_not_both(
    mlp: ModelCase, tmp_path: Path
) -> None:
    events = mlp.write_events(tmp_path / "benign.jsonl", *mlp.calibration)
    with pytest.raises(ValueError, match="not both"):
        calibrate_file(
            mlp.model_path, events, tmp_path / "d.json", squeezer_spec="bit_depth:2", search="small"
        )
