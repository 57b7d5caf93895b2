"""The demo digit detector and inference events built from it, with their offline verdicts.

The detector is calibrated once per session exactly as a user would (``calibrate_file``
on benign events), and every image pool is scored offline with the same detector file,
so a test can pick events whose verdict it knows before any worker sees them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import orjson

from detectors import Detector
from monitor.demo.attacks import fgsm, pgd
from monitor.demo.model import load_digits_data, mlp_to_onnx, train_mlp
from monitor.demo.run import ATTACK_EPS, demo_event
from monitor.offline import calibrate_file

__all__ = [
    "DemoDetector",
    "ImagePool",
    "OfflineVerdict",
    "calibrate_demo_detector",
    "inference_event",
    "score_offline",
]


@dataclass(frozen=True)
class ImagePool:
    """Images of one kind and the offline verdict of the demo detector on each."""

    images: np.ndarray
    scores: np.ndarray
    flagged: np.ndarray

    def pick(self, count: int, *, flagged: bool) -> np.ndarray:
        """The first ``count`` images whose offline verdict is ``flagged``."""
        chosen: np.ndarray = self.images[self.flagged == flagged][:count]
        assert len(chosen) == count, f"only {len(chosen)} images with flagged={flagged}"
        return chosen


@dataclass(frozen=True)
class DemoDetector:
    """A calibrated detector for the demo digit classifier, and traffic to score."""

    path: Path
    threshold: float
    clean: ImagePool
    pgd: ImagePool
    fgsm: ImagePool


def _pool(detector: Detector, images: np.ndarray) -> ImagePool:
    verdict = detector.score(images)
    return ImagePool(images, verdict.scores.score.copy(), verdict.flagged.copy())


def calibrate_demo_detector(folder: Path) -> DemoDetector:
    """Train the demo MLP, calibrate its detector on CPU in ``folder``, score the pools."""
    data = load_digits_data()
    weights = train_mlp(data.train_x, data.train_y)
    onnx.save(mlp_to_onnx(weights), folder / "model.onnx")
    benign = folder / "benign.jsonl"
    benign.write_bytes(
        b"".join(
            demo_event(f"benign-{i}", image, as_tensor=i % 2 == 1, source="calibration") + b"\n"
            for i, image in enumerate(data.calibration_x)
        )
    )
    path = folder / "detector.json"
    report = calibrate_file(folder / "model.onnx", benign, path, device="cpu")
    detector = Detector.from_file(path, device="cpu")
    return DemoDetector(
        path=path,
        threshold=report.config.threshold,
        clean=_pool(detector, data.test_x),
        pgd=_pool(detector, pgd(weights, data.test_x, data.test_y, ATTACK_EPS)),
        fgsm=_pool(detector, fgsm(weights, data.test_x, data.test_y, ATTACK_EPS)),
    )


def inference_event(
    event_id: str,
    image: np.ndarray,
    *,
    model_id: str = "digits",
    source: str | None = None,
    request_id: str | None = None,
    as_tensor: bool = False,
) -> bytes:
    """A native inference event for ``image``: a nested list or a float32 tensor payload."""
    return demo_event(
        event_id,
        image,
        as_tensor=as_tensor,
        source=source,
        model_id=model_id,
        request_id=request_id,
    )


@dataclass(frozen=True)
class OfflineVerdict:
    """One line of ``advmon score`` output."""

    score: float
    flagged: bool


def score_offline(detector: Path, events: Path, out: Path) -> dict[str, OfflineVerdict]:
    """Run ``advmon score`` on CPU, as a user would; return its verdicts by event id."""
    command = [sys.executable, "-m", "monitor", "score", "--device", "cpu"]
    command += ["--detector", str(detector), "--events", str(events), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ADVMON_")}
    result = subprocess.run(command, env=env, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    verdicts: dict[str, OfflineVerdict] = {}
    for line in out.read_bytes().splitlines():
        record = orjson.loads(line)
        assert record["event_id"] not in verdicts, f"scored twice: {record}"
        verdicts[record["event_id"]] = OfflineVerdict(record["score"], record["flagged"])
    return verdicts
