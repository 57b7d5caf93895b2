"""``advmon demo``: the offline loop on embedded defaults, in about a minute.

It trains a digit classifier on scikit-learn's bundled digits, exports it to ONNX,
writes benign calibration events and a traffic file (held-out clean digits, FGSM and PGD
adversarial digits, and a few malformed lines), then runs ``advmon calibrate`` and
``advmon score`` on them exactly as a user would, and reports how well the detector
separated the attacks from clean traffic. Last, ``advmon evaluate`` attacks the model on
the labelled held-out digits and writes its robustness report.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import orjson
from rich.console import Console
from rich.table import Table

from detectors import Device
from monitor.demo.attacks import fgsm, pgd, record_attack_queries
from monitor.demo.model import (
    DigitsData,
    MLPClassifierWeights,
    load_digits_data,
    mlp_to_onnx,
    train_mlp,
)
from monitor.offline import calibrate_file, score_file

__all__ = ["MALFORMED_LINES", "DemoArtifacts", "demo_event", "run_demo"]

DEMO_MODEL_ID = "digits"
ATTACK_EPS = 0.1
#: The held-out digit the streaming demo's query attacker probes, and its queries.
PROBED_DIGIT = 10
PROBE_QUERIES = 120
#: The attacks of the demo's robustness report: every default but CW-L2, the slowest.
REPORT_ATTACKS = "square,hopskipjump,simba,fgsm,pgd,deepfool"

#: Lines of the demo traffic that must be reported and skipped, never stop a run.
MALFORMED_LINES: tuple[bytes, ...] = (
    b'{"event_id": "bad-1", "input": [[0.0]]}',
    b'{"event_id": "bad-2", "model_id": "digits", "input": [[0.0, 1.0]]}',
    b'{"event_id": "bad-3", "model_id": "digits", "input": "not a tensor"}',
    b"this line is not JSON",
    b'{"event_id": "bad-5", "model_id": "digits", "input": {"dtype": "float32", '
    b'"shape": [1, 8, 8], "data_b64": "AAAA"}}',
)


def demo_event(
    event_id: str,
    image: np.ndarray,
    *,
    as_tensor: bool,
    source: str | None,
    model_id: str = DEMO_MODEL_ID,
    request_id: str | None = None,
    label: int | None = None,
) -> bytes:
    """One native inference event for ``image``, as a nested list or a tensor payload;
    ``label``, the true class, is the field ``advmon evaluate`` reads."""
    value: object
    if as_tensor:
        raw = np.ascontiguousarray(image, dtype="<f4").tobytes()
        value = {
            "dtype": "float32",
            "shape": list(image.shape),
            "data_b64": base64.b64encode(raw).decode(),
        }
    else:
        value = image.tolist()
    event: dict[str, object] = {
        "event_id": event_id,
        "model_id": model_id,
        "model_version": "1",
        "input": value,
    }
    if source is not None:
        event["source"] = source
    if request_id is not None:
        event["request_id"] = request_id
    if label is not None:
        event["label"] = label
    return orjson.dumps(event)


def _roc_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    return float(roc_auc_score(labels, np.r_[negatives, positives]))


@dataclass(frozen=True)
class DemoArtifacts:
    """What the offline demo built, for the streaming demo to reuse."""

    data: DigitsData
    weights: MLPClassifierWeights
    adversarial: np.ndarray
    """PGD digits from the test split that fool the model."""
    adversarial_labels: np.ndarray
    detector_path: Path
    probe_queries: np.ndarray
    """ART's HopSkipJump's first queries against one held-out digit, in order: a query
    attacker's traffic."""


def run_demo(
    out_dir: Path, *, device: Device = "auto", console: Console | None = None
) -> DemoArtifacts:
    """Build the demo files in ``out_dir``, calibrate, score and print the results."""
    console = console or Console(stderr=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.onnx"
    benign_path = out_dir / "benign.jsonl"
    traffic_path = out_dir / "traffic.jsonl"
    detector_path = out_dir / "detector.json"
    scores_path = out_dir / "scores.jsonl"

    console.rule("advmon demo: feature squeezing on a digit classifier")
    data = load_digits_data()
    weights = train_mlp(data.train_x, data.train_y)
    accuracy = float(np.mean(weights.logits(data.test_x).argmax(axis=1) == data.test_y))
    onnx.save(mlp_to_onnx(weights), model_path)
    console.print(f"1. trained an MLP on 8×8 digits (test accuracy {accuracy:.1%}) -> {model_path}")

    with open(benign_path, "wb") as out:
        for i, image in enumerate(data.calibration_x):
            out.write(
                demo_event(f"benign-{i}", image, as_tensor=i % 2 == 1, source="calibration") + b"\n"
            )
    attacks = {
        "fgsm": fgsm(weights, data.test_x, data.test_y, ATTACK_EPS),
        "pgd": pgd(weights, data.test_x, data.test_y, ATTACK_EPS),
    }
    truth: dict[str, str] = {}
    with open(traffic_path, "wb") as out:
        for i, image in enumerate(data.test_x):
            truth[f"clean-{i}"] = "clean"
            out.write(demo_event(f"clean-{i}", image, as_tensor=False, source="users") + b"\n")
        for name, adversarial in attacks.items():
            fooled = weights.logits(adversarial).argmax(axis=1) != data.test_y
            for j in np.flatnonzero(fooled).tolist():
                truth[f"{name}-{j}"] = name
                out.write(
                    demo_event(f"{name}-{j}", adversarial[j], as_tensor=True, source="attacker")
                    + b"\n"
                )
        out.write(b"\n".join(MALFORMED_LINES) + b"\n")
    counts = {kind: sum(1 for t in truth.values() if t == kind) for kind in ("clean", *attacks)}
    console.print(
        f"2. wrote {len(data.calibration_x)} benign events -> {benign_path}\n"
        f"   and traffic -> {traffic_path}: {counts['clean']} clean, "
        f"{counts['fgsm']} FGSM and {counts['pgd']} PGD adversarial digits "
        f"(L∞ ε={ATTACK_EPS}, only those that fool the model), "
        f"{len(MALFORMED_LINES)} malformed lines"
    )

    console.print(
        f"3. advmon calibrate --model {model_path} --events {benign_path} --squeezers preset "
        f"--out {detector_path}"
    )
    calibration = calibrate_file(model_path, benign_path, detector_path, device=device)
    config = calibration.config
    console.print(
        f"   squeezers {config.squeezer_spec} (preset for {config.input_kind} "
        f"input), threshold {config.threshold:.4f} at FPR {config.target_fpr:g}"
    )

    console.print(
        f"4. advmon score --detector {detector_path} --events {traffic_path} --out {scores_path}"
    )
    report = score_file(
        detector_path,
        traffic_path,
        scores_path,
        device=device,
        on_bad_line=lambda bad: console.print(
            f"   [yellow]skipped[/] line {bad.line_number}: {bad.reason}"
        ),
    )

    scores: dict[str, list[float]] = {kind: [] for kind in counts}
    flagged: dict[str, int] = dict.fromkeys(counts, 0)
    with open(scores_path, "rb") as handle:
        for line in handle:
            record = orjson.loads(line)
            kind = truth[record["event_id"]]
            scores[kind].append(record["score"])
            flagged[kind] += int(bool(record["flagged"]))

    table = Table(title="detector on held-out traffic")
    table.add_column("traffic")
    table.add_column("events", justify="right")
    table.add_column("flagged", justify="right")
    table.add_column("ROC-AUC vs clean", justify="right")
    clean = np.asarray(scores["clean"])
    for kind, values in scores.items():
        auc = "" if kind == "clean" else f"{_roc_auc(clean, np.asarray(values)):.3f}"
        rate = flagged[kind] / len(values) if values else 0.0
        table.add_row(kind, str(len(values)), f"{flagged[kind]} ({rate:.1%})", auc)
    console.print(table)
    console.print(
        f"scored {report.scored} events on {report.provider}, skipped "
        f"{len(report.bad_lines)} malformed lines. The clean row's flagged share is the "
        "false-positive rate on unseen benign traffic; feature squeezing is a cheap signal "
        "against non-adaptive attacks, not a guarantee."
    )
    _robustness_report(out_dir, data, model_path, detector_path, device, console)
    fooled = weights.logits(attacks["pgd"]).argmax(axis=1) != data.test_y
    from monitor.evaluate._estimators import OnnxClassifier

    probes = record_attack_queries(
        "hopskipjump",
        OnnxClassifier(onnx.load(model_path), "logits"),
        data.test_x[PROBED_DIGIT],
        (0.0, 1.0),
        limit=PROBE_QUERIES,
    )
    return DemoArtifacts(
        data, weights, attacks["pgd"][fooled], data.test_y[fooled], detector_path, probes
    )


def _robustness_report(
    out_dir: Path,
    data: DigitsData,
    model_path: Path,
    detector_path: Path,
    device: Device,
    console: Console,
) -> None:
    """Step 5: ``advmon evaluate`` on the labelled held-out digits, small budget."""
    from monitor.cli.evaluate import headline_table
    from monitor.evaluate import evaluate, write_outputs

    labelled_path = out_dir / "labelled.jsonl"
    report_dir = out_dir / "report"
    with open(labelled_path, "wb") as out:
        for i, (image, label) in enumerate(zip(data.test_x, data.test_y, strict=True)):
            out.write(
                demo_event(f"test-{i}", image, as_tensor=False, source="users", label=int(label))
                + b"\n"
            )
    command = (
        f"advmon evaluate --model {model_path} --events {labelled_path} "
        f"--detector {detector_path} --attacks {REPORT_ATTACKS} --out {report_dir}"
    )
    console.print(f"5. {command}")
    evaluation = evaluate(
        model_path,
        labelled_path,
        detector_path=detector_path,
        attacks=REPORT_ATTACKS,
        device=device,
        command=command,
    )
    files = write_outputs(evaluation, report_dir)
    console.print(headline_table(evaluation.report))
    console.print(
        f"   robustness report ({evaluation.report['seconds']:.0f} s) -> {files.html} "
        f"(open it in a browser), {files.md.name}, {files.json.name}"
    )
