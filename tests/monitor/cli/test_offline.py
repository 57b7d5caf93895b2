"""``advmon calibrate`` and ``advmon score`` on the demo digit model, as a user runs them."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx
import orjson
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

from detectors import Detector, inspect_model, load_model, parse_squeezer_spec, preset_for
from monitor.cli import main
from monitor.demo.model import mlp_to_onnx
from monitor.demo.run import demo_event
from schemas import ScoreRecord
from tests.monitor.cli_support import (
    N_BENIGN,
    DemoModel,
    Traffic,
    assert_clean_failure,
    image_events,
    normalized,
    write_events,
)
from tests.monitor.test_offline_queries import QUERY_FIELDS

_SKIPPED = re.compile(r"^skipped (?P<path>\S+):(?P<line>\d+): (?P<reason>.+)$")


@dataclass(frozen=True)
class Calibrated:
    """A detector calibrated once per session by ``advmon calibrate``."""

    result: Result
    path: Path
    content: dict[str, Any]


def _calibrate(runner: CliRunner, model: Path, events: Path, out: Path, *extra: str) -> Result:
    args = ["calibrate", "--model", str(model), "--events", str(events), "--out", str(out)]
    return runner.invoke(main, [*args, "--device", "cpu", *extra])


def _score(runner: CliRunner, detector: Path, events: Path, out: Path, *extra: str) -> Result:
    args = ["score", "--detector", str(detector), "--events", str(events), "--out", str(out)]
    return runner.invoke(main, [*args, "--device", "cpu", *extra])


def _score_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _skipped(stderr: str) -> list[tuple[str, int, str]]:
    """``(path, line number, reason)`` of every bad line the run reported."""
    found = []
    for line in stderr.splitlines():
        match = _SKIPPED.match(line.strip())
        if match:
            found.append((match["path"], int(match["line"]), match["reason"]))
    return found


def _tensor_event(event_id: str, array: np.ndarray, dtype: str, **override: Any) -> bytes:
    payload: dict[str, Any] = {
        "dtype": dtype,
        "shape": list(array.shape),
        "data_b64": base64.b64encode(array.astype(dtype).tobytes()).decode(),
    }
    payload.update(override)
    return orjson.dumps({"event_id": event_id, "model_id": "digits", "input": payload})


def _list_event(event_id: str, value: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, "model_id": "digits", "input": value})


@pytest.fixture(scope="session")
def calibrated(
    demo_model: DemoModel, benign_events: Path, tmp_path_factory: pytest.TempPathFactory
) -> Calibrated:
    """``advmon calibrate --squeezers preset`` with the default FPR, into its own folder."""
    out = tmp_path_factory.mktemp("calibrated") / "detector.json"
    result = _calibrate(CliRunner(), demo_model.path, benign_events, out, "--squeezers", "preset")
    assert result.exit_code == 0, result.output
    return Calibrated(result, out, json.loads(out.read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def searched(
    demo_model: DemoModel, benign_events: Path, tmp_path_factory: pytest.TempPathFactory
) -> Calibrated:
    """``advmon calibrate`` without ``--squeezers``: the squeezers are searched for."""
    out = tmp_path_factory.mktemp("searched") / "detector.json"
    result = _calibrate(CliRunner(), demo_model.path, benign_events, out)
    assert result.exit_code == 0, result.output
    return Calibrated(result, out, json.loads(out.read_text(encoding="utf-8")))


# --- calibrate ----------------------------------------------------------------------------


def test_calibrate_writes_the_detector_file(calibrated: Calibrated, demo_model: DemoModel) -> None:
    content = calibrated.content
    model = content["model"]
    assert content["format"] == "advmon-detector"
    assert content["advmon_version"] == metadata.version("advmon")
    assert model["path"] == os.path.relpath(demo_model.path, calibrated.path.parent)
    assert not Path(model["path"]).is_absolute()
    assert (calibrated.path.parent / model["path"]).resolve() == demo_model.path.resolve()
    assert model["sha256"] == hashlib.sha256(demo_model.path.read_bytes()).hexdigest()
    assert model["input_shape"] == [1, 8, 8]
    assert model["input_kind"] == "image"
    assert model["input_range"] == [0.0, 1.0]
    assert model["output_name"] == "logits"
    assert model["output_kind"] == "logits"
    assert model["num_classes"] == 10
    assert content["target_fpr"] == 0.05
    assert content["calibration"]["n_events"] == N_BENIGN
    assert isinstance(content["threshold"], float)
    assert math.isfinite(content["threshold"])


def test_calibrate_uses_the_preset_when_asked(
    calibrated: Calibrated, demo_model: DemoModel
) -> None:
    preset = preset_for(inspect_model(load_model(str(demo_model.path))))
    squeezers = calibrated.content["squeezers"]
    assert squeezers["spec"] == preset
    assert squeezers["params"] == [s.to_dict() for s in parse_squeezer_spec(preset)]
    assert "squeezer_search" not in calibrated.content
    stderr = normalized(calibrated.result.stderr)
    assert f"{preset} (preset for image input)" in stderr
    assert "squeezer search" not in stderr
    assert f"detector written to {calibrated.path}" in stderr


def test_calibrate_prints_the_query_attack_threshold(calibrated: Calibrated) -> None:
    queries = calibrated.content["query_attacks"]
    benign = queries["benign"]
    assert benign["events"] == N_BENIGN
    assert queries["min_linked"] >= benign["max_linked"] + 1
    assert (
        f"query attacks min_linked {queries['min_linked']} (benign: {N_BENIGN} events, "
        f"max linked {benign['max_linked']})" in normalized(calibrated.result.stderr)
    )


def test_calibrate_without_squeezers_searches_and_records_the_evidence(
    searched: Calibrated, demo_model: DemoModel
) -> None:
    content = searched.content
    evidence = content["squeezer_search"]
    chosen = evidence["chosen"]
    assert content["squeezers"]["spec"] == chosen
    assert evidence["fallback_reason"] is None
    assert evidence["budget"] == "small"
    assert evidence["preset"] == preset_for(inspect_model(load_model(str(demo_model.path))))
    assert evidence["split"] == {
        "benign_events": N_BENIGN,
        "sampled_events": N_BENIGN,
        "threshold_events": N_BENIGN // 2,
        "held_back_events": N_BENIGN // 2,
        "attacked_events": 50,
    }
    assert {a["name"] for a in evidence["attacks"]} >= {"square", "simba"}
    assert all(0 < a["successful"] <= a["attempted"] == 50 for a in evidence["attacks"])
    specs = [c["spec"] for c in evidence["candidates"]]
    assert specs[0] == evidence["preset"]
    assert "bit_depth:1,median:2,median:3" in specs
    assert chosen in specs
    # The final threshold comes from every benign event, not from the search's split.
    assert content["calibration"]["n_events"] == N_BENIGN

    stderr = normalized(searched.result.stderr)
    assert f"{chosen} (chosen by search, small budget)" in stderr
    assert (
        f"{N_BENIGN} of {N_BENIGN} benign events sampled, thresholds calibrated on "
        f"{N_BENIGN // 2}, {N_BENIGN // 2} held back, attacks from 50" in stderr
    )
    best = next(c for c in evidence["candidates"] if c["spec"] == chosen)
    assert (
        f"{chosen} {best['detection_rate']:.3f} {best['held_back_fpr']:.3f} "
        f"{best['threshold']:.4g} chosen" in stderr
    )
    assert "bit_depth:1,median:2,median:3" in stderr
    assert re.search(r"calibrated in \d+\.\d s", stderr)
    Detector.from_file(searched.path, device="cpu")


def test_calibrate_falls_back_to_the_preset_when_too_few_events_to_search(
    runner: CliRunner, demo_model: DemoModel, tmp_path: Path
) -> None:
    events = write_events(
        tmp_path / "few.jsonl", image_events(demo_model.data.calibration_x[:110], "b")
    )
    out = tmp_path / "detector.json"
    result = _calibrate(runner, demo_model.path, events, out)
    assert result.exit_code == 0, result.output
    content = json.loads(out.read_text(encoding="utf-8"))
    evidence = content["squeezer_search"]
    assert content["squeezers"]["spec"] == evidence["chosen"] == evidence["preset"]
    assert evidence["fallback_reason"] == (
        "too few benign events to search: the search needs 120 (100 to calibrate "
        "candidate thresholds at FPR 0.05, 20 to hold back), got 110"
    )
    assert (evidence["attacks"], evidence["candidates"]) == ([], [])
    stderr = normalized(result.stderr)
    assert f"{evidence['preset']} (preset for image input)" in stderr
    assert f"squeezer search fell back to the preset: {evidence['fallback_reason']}" in stderr


def test_calibrate_threshold_is_the_benign_score_quantile(
    calibrated: Calibrated, demo_model: DemoModel
) -> None:
    """threshold = the ceil((1 - fpr)·n)-th smallest benign score of the saved detector."""
    detector = Detector.from_file(calibrated.path, device="cpu")
    benign = demo_model.data.calibration_x[:N_BENIGN]
    scores = np.sort(detector.score(benign).scores.score.astype(np.float64))
    rank = math.ceil((1 - 0.05) * N_BENIGN)
    assert calibrated.content["threshold"] == pytest.approx(scores[rank - 1], rel=1e-5, abs=1e-7)
    achieved = calibrated.content["calibration"]["achieved_fpr"]
    assert 0.0 < achieved <= 0.05


def test_calibrate_honours_explicit_options(
    runner: CliRunner, demo_model: DemoModel, benign_events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "detector.json"
    result = _calibrate(
        runner,
        demo_model.path,
        benign_events,
        out,
        "--squeezers",
        "bit_depth:3, median:2",
        "--fpr",
        "0.1",
        "--input-range",
        "0,2",
        "--output-kind",
        "logits",
        "--output-name",
        "logits",
        "--batch-size",
        "7",
    )
    assert result.exit_code == 0, result.output
    content = json.loads(out.read_text(encoding="utf-8"))
    assert content["squeezers"]["spec"] == "bit_depth:3,median:2"
    assert content["squeezers"]["params"] == [
        {"kind": "bit_depth", "bits": 3, "low": 0.0, "high": 2.0},
        {"kind": "median", "size": 2},
    ]
    assert content["model"]["input_range"] == [0.0, 2.0]
    assert content["target_fpr"] == 0.1
    assert content["calibration"]["n_events"] == N_BENIGN
    assert "preset" not in result.output
    assert "bit_depth:3,median:2" in normalized(result.stderr)


def test_calibrate_reports_each_bad_line_once(
    runner: CliRunner, demo_model: DemoModel, tmp_path: Path
) -> None:
    """Calibration with a search reads the file three times; each bad line is reported once."""
    images = demo_model.data.calibration_x[:120]
    lines = image_events(images, "benign")
    lines.insert(10, b"{not json")
    lines.insert(50, _list_event("short", [[0.0, 1.0]]))
    events = write_events(tmp_path / "benign.jsonl", lines)
    out = tmp_path / "detector.json"
    result = _calibrate(runner, demo_model.path, events, out)
    assert result.exit_code == 0, result.output
    assert [(n, path) for path, n, _ in _skipped(result.stderr)] == [
        (11, str(events)),
        (51, str(events)),
    ]
    assert "2 bad line(s) skipped" in normalized(result.stderr)
    content = json.loads(out.read_text(encoding="utf-8"))
    assert content["calibration"]["n_events"] == 120
    assert content["squeezer_search"]["split"]["benign_events"] == 120


# --- score --------------------------------------------------------------------------------


def test_score_writes_one_line_per_event(
    runner: CliRunner, calibrated: Calibrated, traffic: Traffic, tmp_path: Path
) -> None:
    out = tmp_path / "scores.jsonl"
    result = _score(runner, calibrated.path, traffic.path, out, "--batch-size", "7")
    assert result.exit_code == 0, result.output
    records = _score_lines(out)
    # Every traffic event names a source, so each line has the query fields too.
    assert [list(record) for record in records] == [
        ["event_id", "score", "flagged", *QUERY_FIELDS]
    ] * len(traffic.event_ids)
    assert all(ScoreRecord.model_validate(record) for record in records)
    assert [record["event_id"] for record in records] == traffic.event_ids
    threshold = calibrated.content["threshold"]
    for record in records:
        assert isinstance(record["score"], float)
        assert record["flagged"] is (record["score"] > threshold)
    flagged = sum(record["flagged"] for record in records)
    assert 0 < flagged < len(records), "the traffic should have both verdicts"
    summary = normalized(result.stderr)
    assert f"scored {len(records)} events on CPUExecutionProvider" in summary
    assert f"{flagged} flagged" in summary
    assert f"scores written to {out}" in summary


def test_score_on_the_calibration_events_flags_the_achieved_fpr(
    runner: CliRunner, calibrated: Calibrated, benign_events: Path, tmp_path: Path
) -> None:
    """A score equal to the threshold is not flagged: only scores strictly above it are."""
    out = tmp_path / "scores.jsonl"
    result = _score(runner, calibrated.path, benign_events, out)
    assert result.exit_code == 0, result.output
    records = _score_lines(out)
    assert len(records) == N_BENIGN
    threshold = calibrated.content["threshold"]
    at_threshold = [r for r in records if r["score"] == threshold]
    assert at_threshold, "the threshold is one of the benign scores"
    assert not any(r["flagged"] for r in at_threshold)
    flagged = sum(r["flagged"] for r in records)
    assert flagged == round(calibrated.content["calibration"]["achieved_fpr"] * N_BENIGN)


def test_score_matches_the_detector_library(
    runner: CliRunner, calibrated: Calibrated, traffic: Traffic, tmp_path: Path
) -> None:
    out = tmp_path / "scores.jsonl"
    result = _score(runner, calibrated.path, traffic.path, out, "--batch-size", "16")
    assert result.exit_code == 0, result.output
    records = _score_lines(out)
    expected = Detector.from_file(calibrated.path, device="cpu").score(traffic.images)
    written = np.array([record["score"] for record in records], dtype=np.float32)
    np.testing.assert_allclose(written, expected.scores.score, rtol=1e-5, atol=1e-6)
    assert [record["flagged"] for record in records] == expected.flagged.tolist()


def test_score_results_do_not_depend_on_the_batch_size(
    runner: CliRunner, calibrated: Calibrated, traffic: Traffic, tmp_path: Path
) -> None:
    by_batch = {}
    for size in ("1", "1000"):
        out = tmp_path / f"scores-{size}.jsonl"
        assert (
            _score(runner, calibrated.path, traffic.path, out, "--batch-size", size).exit_code == 0
        )
        by_batch[size] = _score_lines(out)
    assert [r["event_id"] for r in by_batch["1"]] == [r["event_id"] for r in by_batch["1000"]]
    np.testing.assert_allclose(
        [r["score"] for r in by_batch["1"]], [r["score"] for r in by_batch["1000"]], rtol=1e-5
    )


def test_score_skips_and_reports_bad_lines(
    runner: CliRunner, calibrated: Calibrated, demo_model: DemoModel, tmp_path: Path
) -> None:
    image = demo_model.data.test_x[0]
    overflow = image.tolist()
    overflow[0][3][3] = 1e39  # a valid JSON number, but inf as float32
    ragged = image.tolist()
    ragged[0][5] = ragged[0][5][:7]
    float64_overflow = image.astype(np.float64)
    float64_overflow[0, 0, 0] = 1e300
    # (line, a word the reason must contain; None for a valid event, "" for a blank line)
    lines: list[tuple[bytes, str | None]] = [
        (demo_event("ok-0", image, as_tensor=False, source="t"), None),
        (b'{"event_id": "json", "model_id": "digits", "input": [', "JSON"),
        (demo_event("ok-1", image, as_tensor=True, source="t"), None),
        (orjson.dumps({"event_id": "no-model", "input": image.tolist()}), "model_id"),
        (_list_event("short", [[0.0, 1.0]]), "shape"),
        (b"", ""),
        (_tensor_event("tensor-shape", image.reshape(8, 8), "float32"), "shape"),
        (_tensor_event("b64", image, "float32", data_b64="@@not base64@@"), "base64"),
        (demo_event("ok-2", image, as_tensor=False, source="t"), None),
        (_list_event("overflow", overflow), "finite"),
        (_tensor_event("overflow64", float64_overflow, "float64"), "finite"),
        (b"   ", ""),
        (_list_event("ragged", ragged), "ragged"),
        (_list_event("words", [[["x"] * 8] * 8]), "number"),
        (demo_event("ok-3", image, as_tensor=True, source="t"), None),
    ]
    events = write_events(tmp_path / "events.jsonl", [line for line, _ in lines])
    out = tmp_path / "scores.jsonl"
    result = _score(runner, calibrated.path, events, out, "--batch-size", "2")

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    expected = [(n, word) for n, (_, word) in enumerate(lines, start=1) if word]
    reported = _skipped(result.stderr)
    assert [(path, n) for path, n, _ in reported] == [(str(events), n) for n, _ in expected]
    for (_, n, reason), (_, word) in zip(reported, expected, strict=True):
        assert word.lower() in reason.lower(), f"line {n}: {reason!r} should mention {word!r}"
    assert f"{len(expected)} bad line(s) skipped in {events}" in normalized(result.stderr)
    assert [r["event_id"] for r in _score_lines(out)] == ["ok-0", "ok-1", "ok-2", "ok-3"]
    assert "scored 4 events" in normalized(result.stderr)


def test_score_shows_the_first_bad_lines_and_counts_all(
    runner: CliRunner, calibrated: Calibrated, demo_model: DemoModel, tmp_path: Path
) -> None:
    lines = [b"not json"] * 25 + image_events(demo_model.data.test_x[:3], "ok")
    events = write_events(tmp_path / "events.jsonl", lines)
    result = _score(runner, calibrated.path, events, tmp_path / "scores.jsonl")
    assert result.exit_code == 0, result.output
    assert [n for _, n, _ in _skipped(result.stderr)] == list(range(1, 21))
    assert "more bad lines" in result.stderr
    assert f"25 bad line(s) skipped in {events}" in normalized(result.stderr)
    assert "scored 3 events" in normalized(result.stderr)


def test_calibrate_counts_the_skipped_lines_when_too_few_are_left(
    runner: CliRunner, demo_model: DemoModel, tmp_path: Path
) -> None:
    # Every line has the wrong shape: the count says why no event was left.
    lines = [orjson.dumps({"event_id": f"e{i}", "input": [[0.5] * 3] * 3}) for i in range(30)]
    events = write_events(tmp_path / "events.jsonl", lines)
    result = _calibrate(runner, demo_model.path, events, tmp_path / "detector.json")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    text = normalized(result.stderr)
    assert f"30 bad line(s) skipped in {events}" in text
    assert text.index("bad line(s) skipped") < text.index("Error: ")
    assert "calibration needs at least" in text


def test_detector_and_model_can_move_together(
    runner: CliRunner,
    calibrated: Calibrated,
    demo_model: DemoModel,
    traffic: Traffic,
    tmp_path: Path,
) -> None:
    """The model path is relative to the detector file, so copying both keeps them paired."""
    moved = tmp_path / "elsewhere"
    relative = Path(calibrated.content["model"]["path"])
    (moved / "detectors" / relative).parent.mkdir(parents=True)
    shutil.copy(demo_model.path, moved / "detectors" / relative)
    shutil.copy(calibrated.path, moved / "detectors" / "detector.json")
    out = tmp_path / "scores.jsonl"
    result = _score(runner, moved / "detectors" / "detector.json", traffic.path, out)
    assert result.exit_code == 0, result.output
    assert len(_score_lines(out)) == len(traffic.event_ids)


def _pooling_model(path: Path) -> Path:
    """A two-class model whose input ``[N, 1, H, W]`` has symbolic spatial sides."""
    weights = numpy_helper.from_array(np.array([[4.0, -4.0]], dtype=np.float32), "w")
    bias = numpy_helper.from_array(np.array([0.0, 2.0], dtype=np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        ],
        "pooling",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _random_images(n: int, sides: list[int], seed: int) -> list[np.ndarray]:
    """``n`` square one-channel images whose sides cycle through ``sides``."""
    rng = np.random.default_rng(seed)
    return [
        rng.random((1, sides[i % len(sides)], sides[i % len(sides)]), dtype=np.float32)
        for i in range(n)
    ]


def test_score_handles_inputs_of_several_sizes(runner: CliRunner, tmp_path: Path) -> None:
    """A model with symbolic spatial sides accepts images of any size in one events file."""
    model = _pooling_model(tmp_path / "pooling.onnx")
    benign = [
        demo_event(f"b-{i}", image, as_tensor=False, source="t")
        for i, image in enumerate(_random_images(120, [8], seed=0))
    ]
    detector = tmp_path / "detector.json"
    result = _calibrate(
        runner,
        model,
        write_events(tmp_path / "benign.jsonl", benign),
        detector,
        "--squeezers",
        "bit_depth:3,median:2",
    )
    assert result.exit_code == 0, result.output

    images = _random_images(9, [8, 12, 8, 8, 6], seed=1)
    lines = [
        demo_event(f"e-{i}", image, as_tensor=i % 2 == 1, source="t")
        for i, image in enumerate(images)
    ]
    out = tmp_path / "scores.jsonl"
    result = _score(runner, detector, write_events(tmp_path / "events.jsonl", lines), out)
    assert result.exit_code == 0, result.output
    records = _score_lines(out)
    assert [record["event_id"] for record in records] == [f"e-{i}" for i in range(9)]
    # One history compares inputs of one size: query-attack detection is off, and says so.
    assert "query-attack detection is off: the model takes inputs of varying shape" in (
        normalized(result.stderr)
    )
    assert all(list(record) == ["event_id", "score", "flagged"] for record in records)
    library = Detector.from_file(detector, device="cpu")
    expected = [float(library.score(image[np.newaxis]).scores.score[0]) for image in images]
    np.testing.assert_allclose([r["score"] for r in records], expected, rtol=1e-5, atol=1e-6)


def test_calibrate_on_inputs_of_several_sizes_fails_cleanly_or_succeeds(
    runner: CliRunner, tmp_path: Path
) -> None:
    model = _pooling_model(tmp_path / "pooling.onnx")
    benign = [
        demo_event(f"b-{i}", image, as_tensor=False, source="t")
        for i, image in enumerate(_random_images(120, [8, 10], seed=0))
    ]
    events = write_events(tmp_path / "benign.jsonl", benign)
    for batch_size in ("1", "256"):
        result = _calibrate(
            runner,
            model,
            events,
            tmp_path / "detector.json",
            "--squeezers",
            "bit_depth:3",
            "--batch-size",
            batch_size,
        )
        if result.exit_code != 0:
            assert_clean_failure(result)
        else:
            assert "query attacks not calibrated: inputs of varying shape" in normalized(
                result.stderr
            )


# --- errors a user can hit ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "exit_code", "words"),
    [
        (["--fpr", "0.001"], 1, ["0.001", f"{N_BENIGN} events", "--fpr"]),
        (["--fpr", "0"], 2, ["--fpr"]),
        (["--fpr", "1.5"], 2, ["--fpr"]),
        (["--squeezers", "blur:3"], 1, ["unknown squeezer 'blur'", "bit_depth, median, quantize"]),
        (["--squeezers", "bit_depth:9"], 1, ["bit_depth", "1 to 8", "9"]),
        (["--squeezers", "median:1"], 1, ["median", "at least 2", "1"]),
        (["--squeezers", "median:3x2"], 1, ["square"]),
        (["--squeezers", "bit_depth"], 1, ["bit_depth", "parameter"]),
        (["--squeezers", "bit_depth:two"], 1, ["bit_depth", "integer", "two"]),
        (["--squeezers", " , "], 1, ["empty"]),
        (["--squeezers", "preset", "--search-budget", "full"], 2, ["--search-budget"]),
        (["--search-budget", "huge"], 2, ["--search-budget"]),
        (["--input-range", "1,0"], 2, ["--input-range", "LOW must be below HIGH"]),
        (["--input-range", "0;1"], 2, ["--input-range", "LOW,HIGH"]),
        (["--input-range", "0,1,2"], 2, ["--input-range", "LOW,HIGH"]),
        (["--input-range", "0,0.5"], 1, ["outside the given input range", "[0, 0.5]"]),
        (["--output-kind", "scores"], 2, ["--output-kind"]),
        (["--output-name", "nope"], 1, ["no output 'nope'", "logits"]),
        (["--batch-size", "0"], 2, ["--batch-size"]),
        (["--device", "tpu"], 2, ["--device"]),
    ],
)
def test_calibrate_refuses_bad_options(
    runner: CliRunner,
    demo_model: DemoModel,
    benign_events: Path,
    tmp_path: Path,
    extra: list[str],
    exit_code: int,
    words: list[str],
) -> None:
    out = tmp_path / "detector.json"
    result = _calibrate(runner, demo_model.path, benign_events, out, *extra)
    message = assert_clean_failure(result, exit_code)
    for word in words:
        assert word in message
    assert not out.exists()


def test_calibrate_needs_100_benign_events(
    runner: CliRunner, demo_model: DemoModel, tmp_path: Path
) -> None:
    events = write_events(
        tmp_path / "few.jsonl", image_events(demo_model.data.calibration_x[:99], "b")
    )
    out = tmp_path / "detector.json"
    message = assert_clean_failure(_calibrate(runner, demo_model.path, events, out))
    assert "at least 100 benign events" in message
    assert "99" in message
    assert not out.exists()


def test_calibrate_counts_only_valid_events_towards_100(
    runner: CliRunner, demo_model: DemoModel, tmp_path: Path
) -> None:
    lines = image_events(demo_model.data.calibration_x[:99], "b") + [b"{}"] * 5
    events = write_events(tmp_path / "few.jsonl", lines)
    result = _calibrate(runner, demo_model.path, events, tmp_path / "detector.json")
    assert result.exit_code == 1
    assert "got 99" in result.stderr


def test_calibrate_refuses_a_file_that_is_not_onnx(
    runner: CliRunner, benign_events: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    model.write_text("this is not a protobuf", encoding="utf-8")
    message = assert_clean_failure(
        _calibrate(runner, model, benign_events, tmp_path / "detector.json")
    )
    assert f"{model} is not a readable ONNX model" in message


@pytest.mark.parametrize("missing", ["--model", "--events"])
def test_calibrate_names_a_missing_input_file(
    runner: CliRunner, demo_model: DemoModel, benign_events: Path, tmp_path: Path, missing: str
) -> None:
    paths = {"--model": demo_model.path, "--events": benign_events}
    paths[missing] = tmp_path / "missing.file"
    result = _calibrate(runner, paths["--model"], paths["--events"], tmp_path / "d.json")
    message = assert_clean_failure(result, exit_code=2)
    assert missing in message
    assert "missing.file" in message
    assert "does not exist" in message


def test_calibrate_names_an_unwritable_output(
    runner: CliRunner, demo_model: DemoModel, benign_events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "no-such-folder" / "detector.json"
    message = assert_clean_failure(_calibrate(runner, demo_model.path, benign_events, out))
    assert str(out) in message


def test_score_refuses_a_model_changed_after_calibration(
    runner: CliRunner, demo_model: DemoModel, benign_events: Path, traffic: Traffic, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(demo_model.path, model)
    detector = tmp_path / "detector.json"
    assert (
        _calibrate(runner, model, benign_events, detector, "--squeezers", "preset").exit_code == 0
    )
    # Retrain "in place": same graph, other weights, so only the hash tells them apart.
    weights = demo_model.weights
    retrained = type(weights)(weights.w1, weights.b1 + np.float32(0.01), weights.w2, weights.b2)
    onnx.save(mlp_to_onnx(retrained), model)
    out = tmp_path / "scores.jsonl"
    message = assert_clean_failure(_score(runner, detector, traffic.path, out))
    assert f"model {model} changed since calibration" in message
    assert "re-run advmon calibrate" in message
    assert not out.exists()


def test_score_names_a_missing_model(
    runner: CliRunner, demo_model: DemoModel, benign_events: Path, traffic: Traffic, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(demo_model.path, model)
    detector = tmp_path / "detector.json"
    assert (
        _calibrate(runner, model, benign_events, detector, "--squeezers", "preset").exit_code == 0
    )
    model.unlink()
    message = assert_clean_failure(_score(runner, detector, traffic.path, tmp_path / "s.jsonl"))
    assert "model file is missing" in message
    assert str(model) in message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"format": "something-else"}', ["not an advmon detector file"]),
        ("[1, 2, 3]", ["not an advmon detector file"]),
        ("{not json", ["cannot read detector file"]),
        ('{"format": "advmon-detector", "format_version": 99}', ["format 99", "re-run"]),
    ],
)
def test_score_refuses_a_file_that_is_not_a_detector(
    runner: CliRunner, traffic: Traffic, tmp_path: Path, content: str, words: list[str]
) -> None:
    detector = tmp_path / "detector.json"
    detector.write_text(content, encoding="utf-8")
    message = assert_clean_failure(_score(runner, detector, traffic.path, tmp_path / "s.jsonl"))
    for word in words:
        assert word in message


@pytest.mark.parametrize("missing", ["--detector", "--events"])
def test_score_names_a_missing_input_file(
    runner: CliRunner, calibrated: Calibrated, traffic: Traffic, tmp_path: Path, missing: str
) -> None:
    paths = {"--detector": calibrated.path, "--events": traffic.path}
    paths[missing] = tmp_path / "missing.file"
    result = _score(runner, paths["--detector"], paths["--events"], tmp_path / "s.jsonl")
    message = assert_clean_failure(result, exit_code=2)
    assert missing in message
    assert "does not exist" in message


def test_score_names_an_unwritable_output(
    runner: CliRunner, calibrated: Calibrated, traffic: Traffic, tmp_path: Path
) -> None:
    out = tmp_path / "no-such-folder" / "scores.jsonl"
    message = assert_clean_failure(_score(runner, calibrated.path, traffic.path, out))
    assert str(out) in message


# --- help ---------------------------------------------------------------------------------

_OPTIONS = {
    "calibrate": [
        "--model",
        "--events",
        "--out",
        "--fpr",
        "--squeezers",
        "--output-kind",
        "--output-name",
        "--input-range",
        "--batch-size",
        "--device",
    ],
    "score": [
        "--detector",
        "--events",
        "--out",
        "--min-linked",
        "--no-query-attacks",
        "--batch-size",
        "--device",
    ],
}


@pytest.mark.parametrize("command", sorted(_OPTIONS))
def test_help_mentions_every_option(runner: CliRunner, command: str) -> None:
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    declared = {
        opt
        for param in main.commands[command].params
        if isinstance(param, click.Option)
        for opt in param.opts
    }
    assert set(_OPTIONS[command]) <= declared
    for option in declared | set(_OPTIONS[command]):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.output), option


# --- the real console script --------------------------------------------------------------


def _advmon(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("advmon")
    assert script.exists(), f"console script not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ADVMON_")}
    env["COLUMNS"] = "400"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_console_script_calibrates_and_scores(
    demo_model: DemoModel, benign_events: Path, traffic: Traffic, tmp_path: Path
) -> None:
    detector, out = tmp_path / "detector.json", tmp_path / "scores.jsonl"
    model = tmp_path / "model.onnx"
    shutil.copy(demo_model.path, model)
    calibrated = _advmon(
        "calibrate",
        "--model",
        str(model),
        "--events",
        str(benign_events),
        "--out",
        str(detector),
        "--squeezers",
        "preset",
    )
    assert calibrated.returncode == 0, calibrated.stderr
    assert "(preset for image input)" in calibrated.stderr
    assert json.loads(detector.read_text(encoding="utf-8"))["model"]["path"] == "model.onnx"

    scored = _advmon(
        "score", "--detector", str(detector), "--events", str(traffic.path), "--out", str(out)
    )
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout == ""
    records = _score_lines(out)
    assert [record["event_id"] for record in records] == traffic.event_ids
    expected = Detector.from_file(detector).score(traffic.images)
    np.testing.assert_allclose(
        [record["score"] for record in records], expected.scores.score, rtol=1e-5, atol=1e-6
    )

    model.write_bytes(model.read_bytes() + b"\0")
    refused = _advmon(
        "score", "--detector", str(detector), "--events", str(traffic.path), "--out", str(out)
    )
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "changed since calibration" in refused.stderr


def test_console_script_reports_overflowing_values_without_python_warnings(
    calibrated: Calibrated, demo_model: DemoModel, tmp_path: Path
) -> None:
    """A number too large for float32 is one more bad line: no RuntimeWarning on stderr."""
    image = demo_model.data.test_x[0]
    overflow = image.tolist()
    overflow[0][0][0] = 1e39
    float64_overflow = image.astype(np.float64)
    float64_overflow[0, 0, 0] = -1e300
    events = write_events(
        tmp_path / "events.jsonl",
        [
            _list_event("overflow", overflow),
            _tensor_event("overflow64", float64_overflow, "float64"),
            demo_event("ok", image, as_tensor=False, source="t"),
        ],
    )
    out = tmp_path / "scores.jsonl"
    result = _advmon(
        "score",
        "--detector",
        str(calibrated.path),
        "--events",
        str(events),
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "2 bad line(s) skipped" in result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert [record["event_id"] for record in _score_lines(out)] == ["ok"]


def test_console_script_prints_its_version() -> None:
    result = _advmon("--version")
    assert result.returncode == 0
    assert metadata.version("advmon") in result.stdout
