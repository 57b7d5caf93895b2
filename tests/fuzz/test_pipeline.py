"""The worker's decode path, fed batches of good events mixed with hostile messages.

:meth:`ScoringPipeline.decode` runs with the demo detector on four topics, one per format.
Whatever a batch holds, every message ends as events to score, an OIP v2 half to join, or
dead letters with a reason (never ``decode_error``), and every good event of the batch is
still accepted. Bounds as in :mod:`tests.fuzz.bounds`, per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import MonitorConfig
from monitor.decoding import DECODE_ERROR
from monitor.demo.run import demo_event
from monitor.worker.models import load_model_detectors
from monitor.worker.records import InputMessage
from monitor.worker.stages.scoring import DecodedMessages, ScoringPipeline
from schemas import DeadLetter
from tests.fuzz.bounds import examples, outcome
from tests.fuzz.mutations import (
    capture,
    dumps,
    hostile_values,
    mutated_bytes,
    mutated_json,
    npy_bodies,
)
from tests.fuzz.seeds import KSERVE, MAPPED, NATIVE, SAGEMAKER

TOPICS = {"native": "inference-events", "sagemaker": "sm-capture", "mapped": "custom-log"}
OIP_TOPIC = "kserve-log"


@pytest.fixture(scope="module")
def pipeline(detector_path: Path) -> ScoringPipeline:
    config = MonitorConfig.model_validate(
        {
            "models": [
                {"id": "digits", "detector": str(detector_path), "topics": [TOPICS["native"]]},
                {
                    "id": "digits-sm",
                    "detector": str(detector_path),
                    "topics": [TOPICS["sagemaker"]],
                    "format": "sagemaker",
                },
                {
                    "id": "digits-mapped",
                    "detector": str(detector_path),
                    "topics": [TOPICS["mapped"]],
                    "format": "mapped",
                    "mapping": {"event_id": "$.meta.id", "input": "$.payload.features"},
                },
                {
                    "id": "digits-oip",
                    "detector": str(detector_path),
                    "topics": [OIP_TOPIC],
                    "format": "oip-v2",
                },
            ]
        }
    )
    return ScoringPipeline(config, load_model_detectors(config))


def _good(index: int) -> bytes:
    image = np.random.default_rng(index).random((1, 8, 8), dtype=np.float32)
    return demo_event(f"good-{index}", image, as_tensor=index % 2 == 0, source="s")


Message = tuple[str, bytes, list[tuple[str, bytes]]]


@st.composite
def hostile_messages(draw: st.DrawFn) -> Message:
    """One message of any format, mutated, on its format's topic (or a wrong one)."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        value = dumps(draw(mutated_json(draw(st.sampled_from(NATIVE)))))
        return TOPICS["native"], value, []
    if kind == 1:
        value = draw(mutated_bytes(orjson.dumps(draw(st.sampled_from(NATIVE)))))
        return TOPICS["native"], value, []
    if kind == 2:
        value = dumps(draw(mutated_json(draw(st.sampled_from(SAGEMAKER)))))
        return TOPICS["sagemaker"], value, []
    if kind == 3:
        body = draw(st.sampled_from([draw(npy_bodies()), dumps(draw(hostile_values))]))
        content_type = draw(st.sampled_from(["application/x-npy", "application/json"]))
        return TOPICS["sagemaker"], capture(body, content_type), []
    if kind == 4:
        return TOPICS["mapped"], dumps(draw(mutated_json(MAPPED))), []
    body, headers = draw(st.sampled_from(KSERVE))
    return OIP_TOPIC, dumps(draw(mutated_json(body))), headers


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Message], set[int]]:
    """Hostile messages with good native events among them; also the good ones' offsets."""
    hostile = draw(st.lists(hostile_messages(), min_size=1, max_size=8))
    good_at = draw(st.sets(st.integers(0, len(hostile)), min_size=1, max_size=3))
    messages: list[Message] = []
    good: set[int] = set()
    for index, message in enumerate(hostile):
        if index in good_at:
            good.add(len(messages))
            messages.append((TOPICS["native"], _good(index), []))
        messages.append(message)
    return messages, good


def _input(offset: int, message: Message) -> InputMessage:
    topic, value, headers = message
    return InputMessage(topic, 0, offset, b"k", value, 1_700_000_000.0, tuple(headers))


@settings(max_examples=examples(300))
@given(batches())
def test_every_message_of_a_batch_is_decoded_joined_or_dead_lettered(
    pipeline: ScoringPipeline, batch: tuple[list[Message], set[int]]
) -> None:
    messages, good = batch
    inputs = [_input(offset, message) for offset, message in enumerate(messages)]
    size = sum(len(m.value) for m in inputs)
    decoded = outcome(lambda: pipeline.decode(inputs), size)
    assert isinstance(decoded, DecodedMessages)
    accepted = {m.offset for b in decoded.batches for m in b.messages}
    assert good <= accepted
    letters = [DeadLetter.model_validate_json(r.value) for r in decoded.dead_letters]
    assert all(reason and reason != DECODE_ERROR for reason in decoded.invalid_reasons)
    assert len(decoded.invalid_reasons) == len(letters)
    halves = sum(1 for m in inputs if m.topic == OIP_TOPIC) - sum(
        1 for letter in letters if letter.topic == OIP_TOPIC
    )
    assert len(decoded.halves) == halves
    assert accepted | {letter.offset for letter in letters} | {
        m.offset for m in inputs if m.topic == OIP_TOPIC
    } == {m.offset for m in inputs}
