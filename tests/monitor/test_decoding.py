"""One decoding path: the worker, ``advmon inspect`` and the event files that ``advmon
score`` and ``calibrate`` read refuse a record for the same reason, in the same words."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from detectors import DetectorConfig
from monitor.config import load_config
from monitor.decoding import event_input
from monitor.demo.run import demo_event
from monitor.inspect import KafkaRecord, Problem, inspect_record, resolve_decoding
from monitor.offline import BadLine, read_event_batches
from monitor.worker.models import load_model_detectors
from monitor.worker.records import InputMessage
from monitor.worker.stages.scoring import ScoringPipeline
from schemas import DeadLetter, decode_event
from tests.monitor.cli_support import write_events
from tests.monitor.formats.kafka_records import Headers, binary_headers, fixture_json

_SHAPE = (1, 8, 8)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(_SHAPE, dtype=np.float32)


# --- the input of an event ----------------------------------------------------------------


def test_tensor_payload_and_nested_list_give_identical_arrays() -> None:
    image = _image(42)
    as_list = decode_event(demo_event("a", image, as_tensor=False, source="t"))
    as_tensor = decode_event(demo_event("b", image, as_tensor=True, source="t"))
    from_list = event_input(as_list, _SHAPE)
    from_tensor = event_input(as_tensor, _SHAPE)
    assert from_list.dtype == from_tensor.dtype == np.float32
    assert from_list.shape == from_tensor.shape == _SHAPE
    np.testing.assert_array_equal(from_list, from_tensor)
    np.testing.assert_array_equal(from_tensor, image)


@pytest.mark.parametrize(
    ("dtype", "values"),
    [("uint8", [0, 7, 255]), ("float64", [0.25, -1.5, 3.0]), ("int16", [-3, 0, 300])],
)
def test_tensor_payloads_of_other_dtypes_become_float32(dtype: str, values: list[float]) -> None:
    array = np.array(values, dtype=dtype)
    payload = {
        "dtype": dtype,
        "shape": [3],
        "data_b64": base64.b64encode(array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()),
    }
    event = decode_event(
        orjson.dumps({"event_id": "e", "model_id": "m", "input": payload}, default=bytes.decode)
    )
    from_tensor = event_input(event, (3,))
    from_list = event_input(
        decode_event(orjson.dumps({"event_id": "e", "model_id": "m", "input": values})), (3,)
    )
    assert from_tensor.dtype == np.float32
    np.testing.assert_array_equal(from_tensor, np.asarray(values, dtype=np.float32))
    np.testing.assert_array_equal(from_tensor, from_list)


# --- the same reasons in the same words ---------------------------------------------------

EVENTS, CAPTURES, CUSTOM, LOGS = "events", "captures", "custom", "kserve"


def _native(model_id: str, value: object) -> bytes:
    return orjson.dumps({"event_id": "e1", "model_id": model_id, "input": value})


def _tensor(payload: dict[str, object]) -> bytes:
    return json.dumps({"event_id": "e1", "model_id": "digits", "input": payload}).encode()


def nested_list(depth: int) -> object:
    value: object = 0.5
    for _ in range(depth):
        value = [value]
    return value


def _npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A capture whose npy header claims ``shape`` of float32, followed by 16 bytes."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(16)
    captured = {
        "observedContentType": "application/x-npy",
        "mode": "INPUT",
        "data": base64.b64encode(body).decode(),
        "encoding": "BASE64",
    }
    return orjson.dumps(
        {"captureData": {"endpointInput": captured}, "eventMetadata": {"eventId": "n"}}
    )


def _with_nan() -> np.ndarray:
    image = _image(1)
    image[0, 3, 3] = np.nan
    return image


#: Records of a native topic that the worker refuses: (value, reason).
NATIVE_REFUSALS = {
    "bad JSON": (b"{not json", "invalid_event"),
    "no model_id": (b'{"event_id": "x", "input": [1]}', "invalid_event"),
    "unknown model": (_native("cats", [[0.0]]), "unknown_model"),
    "model of another topic": (_native("churn", [[0.0]]), "unknown_model"),
    "wrong shape": (
        demo_event("narrow", _image(2)[:, :, :3], as_tensor=False, source="s"),
        "shape",
    ),
    "ragged": (_native("digits", [[1, 2], [3]]), "ragged"),
    "non-finite": (demo_event("nan", _with_nan(), as_tensor=True, source="s"), "non_finite"),
    "out of range": (demo_event("bright", _image(3) + 3.0, as_tensor=True, source="s"), "range"),
    # Hostile inputs (issue 12): each crashed the worker before the limits.
    "70 dimensions": (
        _tensor({"dtype": "uint8", "shape": [1] * 70, "data_b64": "AA=="}),
        "too_large",
    ),
    "0 by 2**63": (_tensor({"dtype": "uint8", "shape": [0, 2**63], "data_b64": ""}), "too_large"),
    "too deep a list": (_native("digits", nested_list(40)), "too_large"),
    "too long an id": (
        orjson.dumps({"event_id": "e" * 501, "model_id": "digits", "input": [1.0]}),
        "too_large",
    ),
}

#: Records of the other formats' topics that the worker refuses: (topic, value, headers,
#: reason).
FORMAT_REFUSALS = {
    "sagemaker garbage": (CAPTURES, b'{"captureData": {}}', [], "invalid_sagemaker"),
    "sagemaker bad JSON": (CAPTURES, b"{", [], "invalid_json"),
    "mapping without a match": (
        CUSTOM,
        orjson.dumps(fixture_json("mapped_custom.json")),
        [],
        "mapping_no_match",
    ),
    "OIP v2 bad JSON": (LOGS, b"{", binary_headers(), "invalid_json"),
    "OIP v2 without CloudEvent": (LOGS, b'{"inputs": []}', [], "invalid_cloudevent"),
    "npy header of 100000 x 100000": (CAPTURES, _npy_claiming((100_000, 100_000)), [], "too_large"),
    "OIP v2 tensor of 70 dimensions": (
        LOGS,
        orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1] * 70, "datatype": "FP32", "data": [1]}]}
        ),
        binary_headers(),
        "too_large",
    ),
}

REFUSALS = {
    **{name: (EVENTS, value, [], reason) for name, (value, reason) in NATIVE_REFUSALS.items()},
    **FORMAT_REFUSALS,
}


@pytest.fixture
def worker_config(tmp_path: Path, detector_path: Path) -> Path:
    """A worker config with a model of each format, each on its own topic."""
    detector = str(detector_path)
    models = [
        {"id": "digits", "detector": detector, "topics": [EVENTS]},
        {"id": "churn", "detector": detector, "topics": [CAPTURES], "format": "sagemaker"},
        {
            "id": "fraud",
            "detector": detector,
            "topics": [CUSTOM],
            "format": "mapped",
            "mapping": {"event_id": "$.meta.id", "input": "$.nowhere"},
        },
        {"id": "iris", "detector": detector, "topics": [LOGS], "format": "oip-v2"},
    ]
    path = tmp_path / "advmon.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def _dead_letter(config_path: Path, topic: str, value: bytes, headers: Headers) -> DeadLetter:
    """The worker's dead letter for the record."""
    config = load_config(config_path)
    pipeline = ScoringPipeline(config, load_model_detectors(config))
    message = InputMessage(topic, 0, 7, b"k", value, headers=tuple(headers))
    (letter,) = pipeline.decode([message]).dead_letters
    return DeadLetter.model_validate_json(letter.value)


def _inspected(config_path: Path, topic: str, value: bytes, headers: Headers) -> Problem:
    """Why ``advmon inspect --config`` says the worker would refuse the record."""
    decoding, _notes = resolve_decoding(topic, None, config_path=config_path)
    report = inspect_record(KafkaRecord(0, 7, b"k", value, tuple(headers)), decoding)
    if report.error is not None:
        return report.error
    (event,) = report.events
    assert event.input_problem is not None, event
    return event.input_problem


def _bad_lines(path: Path, detector_path: Path, lines: Sequence[bytes]) -> list[BadLine]:
    """The bad lines ``advmon score`` skips in an events file of ``lines``."""
    detector = DetectorConfig.load(detector_path)
    bad: list[BadLine] = []
    batches = read_event_batches(
        write_events(path, lines), detector.input_shape, 8, bad.append, detector.accepted_range
    )
    assert list(batches) == []
    return bad


@pytest.mark.parametrize(("topic", "value", "headers", "reason"), REFUSALS.values(), ids=REFUSALS)
def test_inspect_gives_the_reason_and_words_of_the_worker_s_dead_letter(
    worker_config: Path, topic: str, value: bytes, headers: Headers, reason: str
) -> None:
    letter = _dead_letter(worker_config, topic, value, headers)
    assert letter.reason == reason
    problem = _inspected(worker_config, topic, value, headers)
    assert (problem.reason, problem.message) == (letter.reason, letter.error)


def test_the_unknown_models_are_refused_in_the_worker_s_words(worker_config: Path) -> None:
    """Worded as the worker words them: inspect expects only the topic's model, but names
    every model of the config, and a model that reads another topic."""
    unknown = _inspected(worker_config, EVENTS, _native("cats", [[0.0]]), [])
    elsewhere = _inspected(worker_config, EVENTS, _native("churn", [[0.0]]), [])
    assert (
        unknown.message
        == "model_id 'cats' is not monitored (configured: churn, digits, fraud, iris)"
    )
    assert elsewhere.message == "model 'churn' is not configured for topic 'events'"


_FILE_REFUSALS = {
    name: refusal for name, refusal in NATIVE_REFUSALS.items() if refusal[1] != "unknown_model"
}


@pytest.mark.parametrize(("value", "reason"), _FILE_REFUSALS.values(), ids=_FILE_REFUSALS)
def test_an_events_file_skips_a_line_in_the_words_of_the_worker_s_dead_letter(
    tmp_path: Path, worker_config: Path, detector_path: Path, value: bytes, reason: str
) -> None:
    """An events file holds native events of one model: no model is checked."""
    letter = _dead_letter(worker_config, EVENTS, value, [])
    assert letter.reason == reason
    bad = _bad_lines(tmp_path / "events.jsonl", detector_path, [value])
    assert bad == [BadLine(1, letter.error)]
