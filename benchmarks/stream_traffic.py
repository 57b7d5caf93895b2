"""The two event streams of :mod:`benchmarks.worker_throughput`, built in code.

* **digits** (stream a): the demo — 8×8 digits scored by the demo MLP, every 20th event a
  PGD digit that fools the model;
* **mnist** (stream b): 28×28 uint8 images (the digits upscaled ×3 and padded, as MNIST
  ships them: pixel values 0–255) scored by a random-weight CNN with the NDSS paper's
  MNIST squeezers, every 20th event the image with a lattice of saturated pixels that the
  detector flags.

Each stream trains or builds its model, calibrates its detector with
:func:`monitor.offline.calibrate_file` and turns an index into an event:
:meth:`Stream.event`. Nothing is downloaded.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import orjson

from benchmarks.models import impulse_lattice, mnist_like_cnn, mnist_like_images, to_pixels
from benchmarks.stream_results import ADVERSARIAL_EVERY, ATTACKERS, USERS, StreamInfo
from detectors import Detector
from monitor.demo.attacks import pgd
from monitor.demo.model import DigitsData, load_digits_data, mlp_to_onnx, train_mlp
from monitor.demo.run import ATTACK_EPS, DEMO_MODEL_ID, demo_event
from monitor.offline import calibrate_file

__all__ = [
    "LATTICE_STRIDE",
    "MNIST_MODEL_ID",
    "Stream",
    "build_streams",
    "digits_stream",
    "mnist_event",
    "mnist_stream",
    "with_ts",
]

MNIST_MODEL_ID = "mnist"
#: Stream (b)'s perturbation: every LATTICE_STRIDE-th pixel of every LATTICE_STRIDE-th row
#: set to 255.
LATTICE_STRIDE = 3

#: (event id, input, as a tensor payload, source) → the event's JSON value.
Encoder = Callable[[str, np.ndarray, bool, str], bytes]


@dataclass(frozen=True)
class Stream:
    """A stream's events, the model they are for and its calibrated detector."""

    info: StreamInfo
    model_id: str
    detector_path: Path
    input_shape: tuple[int, ...]
    benign: np.ndarray
    """Benign inputs, as sent (float32 or uint8), cycled through."""
    perturbed: np.ndarray
    """Perturbed inputs, as sent, cycled through."""
    encode: Encoder

    @property
    def key(self) -> str:
        return self.info.key

    def event(self, prefix: str, i: int) -> bytes:
        """Event ``i``: benign inputs from 20 users, even ``i`` as tensor payloads and odd
        ``i`` as nested lists; every 20th (``i % 20 == 19``) a perturbed input as a tensor
        payload from one of 2 attackers. The value has no ``ts``; :func:`with_ts` adds one.
        """
        if i % ADVERSARIAL_EVERY == ADVERSARIAL_EVERY - 1:
            k = i // ADVERSARIAL_EVERY
            image = self.perturbed[k % len(self.perturbed)]
            return self.encode(f"{prefix}{i}", image, True, ATTACKERS[k % len(ATTACKERS)])
        image = self.benign[i % len(self.benign)]
        return self.encode(f"{prefix}{i}", image, i % 2 == 0, USERS[i % len(USERS)])


def with_ts(event: bytes, ts: str) -> bytes:
    """The event with a ``ts`` field (``ts``: RFC 3339 with offset) appended."""
    return event[:-1] + b',"ts":"' + ts.encode() + b'"}'


def _write_calibration(path: Path, images: np.ndarray, encode: Encoder) -> None:
    """Benign calibration events, half as tensor payloads, half as nested lists."""
    with path.open("wb") as out:
        for i, image in enumerate(images):
            out.write(encode(f"cal-{i}", image, i % 2 == 1, "cal") + b"\n")


def _flagged(detector: Detector, images: np.ndarray) -> np.ndarray:
    flagged: np.ndarray = detector.score(images.astype(np.float32)).flagged
    return flagged


def _demo_encode(event_id: str, image: np.ndarray, as_tensor: bool, source: str) -> bytes:
    return demo_event(event_id, image, as_tensor=as_tensor, source=source)


def digits_stream(workdir: Path, data: DigitsData) -> Stream:
    """Stream (a): train the demo MLP, export it, calibrate its detector, make PGD digits."""
    weights = train_mlp(data.train_x, data.train_y)
    model_path, benign_path = workdir / "digits.onnx", workdir / "digits-benign.jsonl"
    detector_path = workdir / "digits-detector.json"
    onnx.save(mlp_to_onnx(weights), model_path)
    _write_calibration(benign_path, data.calibration_x, _demo_encode)
    calibrate_file(model_path, benign_path, detector_path, device="cpu")
    adversarial = pgd(weights, data.test_x, data.test_y, ATTACK_EPS)
    fooled = weights.logits(adversarial).argmax(axis=1) != data.test_y
    perturbed = adversarial[fooled]
    detector = Detector.from_file(detector_path, device="cpu")
    info = StreamInfo(
        key="digits",
        name="(a) demo digits",
        model="the demo's MLP 64→64→10 (`monitor.demo.model.train_mlp` → `mlp_to_onnx`), "
        "trained on scikit-learn's 8×8 digits",
        squeezers=detector.config.squeezer_spec,
        detector=f"`calibrate_file` on {len(data.calibration_x)} benign digits (half tensor "
        "payloads, half nested lists; FPR 5 %), the preset squeezers for its input",
        threshold=detector.threshold,
        benign="scikit-learn's 8×8 digits (test split), values 0–1",
        payloads="`float32` tensor payloads (`data_b64`) and nested lists of floats",
        perturbed=f"PGD adversarial digits against the MLP (L∞ ε={ATTACK_EPS}, 20 steps), "
        f"only those that fool it ({len(perturbed)} of {len(data.test_x)}), as float32 "
        "tensor payloads",
        perturbed_pool=len(perturbed),
        benign_flagged_share=float(_flagged(detector, data.test_x).mean()),
        perturbed_flagged_share=float(_flagged(detector, perturbed).mean()),
    )
    shape = data.test_x.shape[1:]
    return Stream(info, DEMO_MODEL_ID, detector_path, shape, data.test_x, perturbed, _demo_encode)


def mnist_event(event_id: str, image: np.ndarray, as_tensor: bool, source: str) -> bytes:
    """A native event for a uint8 image: a ``uint8`` tensor payload or nested lists of
    ints 0–255."""
    value: object
    if as_tensor:
        raw = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
        value = {
            "dtype": "uint8",
            "shape": list(image.shape),
            "data_b64": base64.b64encode(raw).decode(),
        }
    else:
        value = image.tolist()
    event = {
        "event_id": event_id,
        "model_id": MNIST_MODEL_ID,
        "model_version": "1",
        "input": value,
        "source": source,
    }
    return orjson.dumps(event)


def mnist_stream(workdir: Path, data: DigitsData) -> Stream:
    """Stream (b): the random-weight MNIST-like CNN on pixels, its detector calibrated on
    the calibration digits as 28×28 images, and the lattice-perturbed test images that
    the detector flags."""
    model = mnist_like_cnn(pixels=True)
    model_path, benign_path = workdir / "mnist.onnx", workdir / "mnist-benign.jsonl"
    detector_path = workdir / "mnist-detector.json"
    onnx.save(model.model, model_path)
    calibration = to_pixels(mnist_like_images(data.calibration_x))
    _write_calibration(benign_path, calibration, mnist_event)
    calibrate_file(
        model_path, benign_path, detector_path, squeezer_spec=model.squeezer_spec, device="cpu"
    )
    detector = Detector.from_file(detector_path, device="cpu")
    benign = to_pixels(mnist_like_images(data.test_x))
    candidates = impulse_lattice(benign, stride=LATTICE_STRIDE, value=255, seed=0)
    flagged = _flagged(detector, candidates)
    perturbed = candidates[flagged]
    if not len(perturbed):
        raise RuntimeError("the MNIST-like detector flags none of the perturbed images")
    stride = LATTICE_STRIDE
    info = StreamInfo(
        key="mnist",
        name="(b) MNIST-sized",
        model=f"{model.description} (`benchmarks.models.mnist_like_cnn(pixels=True)`)",
        squeezers=model.squeezer_spec,
        detector=f"`calibrate_file` on {len(calibration)} benign images (the calibration "
        "digits made the same way; half tensor payloads, half nested lists; FPR 5 %), "
        "the NDSS paper's MNIST squeezers, input range 0–255 (detected)",
        threshold=detector.threshold,
        benign="scikit-learn's 8×8 digits (test split) upscaled ×3 and padded to 28×28 "
        "(`mnist_like_images`), as pixel values 0–255 (`to_pixels`)",
        payloads="**`uint8`** tensor payloads (`data_b64`, 784 bytes a tensor) and nested "
        "lists of ints 0–255",
        perturbed=f"**not adversarial examples**: the benign images with impulse noise — "
        f"every {stride}rd pixel of every {stride}rd row (a lattice at a random offset, "
        f"1/{stride * stride} of the pixels) set to 255 (L∞ distance up to 255; "
        "median 2×2 and 3×3 smoothing replaces each such pixel with its neighbourhood's "
        "value). The CNN has random weights, so there is nothing to attack; of the "
        f"{len(candidates)} perturbed test images, the {len(perturbed)} the detector "
        "flags were kept; as uint8 tensor payloads",
        perturbed_pool=len(perturbed),
        benign_flagged_share=float(_flagged(detector, benign).mean()),
        perturbed_flagged_share=float(flagged[flagged].mean()),
    )
    return Stream(
        info, MNIST_MODEL_ID, detector_path, benign.shape[1:], benign, perturbed, mnist_event
    )


def build_streams(workdir: Path) -> list[Stream]:
    """Both streams, their models and detectors written under ``workdir``."""
    data = load_digits_data()
    return [digits_stream(workdir, data), mnist_stream(workdir, data)]
