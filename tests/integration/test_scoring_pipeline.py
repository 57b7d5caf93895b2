"""One worker, mixed traffic: decisions agree with ``advmon score``, bad input is dead-lettered.

A single run is shared by the module: the worker monitors two models with the same
detector on one inference topic, one under ``enforce`` and one under ``observe``, and is
sent clean and adversarial digits mixed with malformed messages of every kind. The
events file the offline scorer reads holds the very same bytes, in the same order.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import orjson
import pytest
import pytest_asyncio

from schemas import Action, DeadLetter, Decision, Detection, Scope
from tests.integration.kafka_io import (
    OutputTopics,
    Produced,
    Record,
    create_topics,
    produce,
    read_topic,
    unique_name,
)
from tests.integration.traffic import DemoDetector, OfflineVerdict, inference_event, score_offline
from tests.integration.workers import (
    MetricSamples,
    ModelEntry,
    WorkerLauncher,
    WorkerProcess,
    write_worker_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.embedded_broker]

ENFORCED = "digits"
OBSERVED = "digits-observe"
POLICIES = {ENFORCED: "enforce", OBSERVED: "observe"}
INFERENCE_PARTITIONS = 2
WAIT_S = 90.0


@dataclass(frozen=True)
class Malformed:
    """A message the worker must dead-letter, and the reason it must give."""

    label: str
    value: bytes
    reason: str
    key: bytes | None


def _tensor(event_id: str, dtype: str, shape: list[int], raw: bytes) -> bytes:
    payload = {"dtype": dtype, "shape": shape, "data_b64": base64.b64encode(raw).decode()}
    return orjson.dumps({"event_id": event_id, "model_id": ENFORCED, "input": payload})


def _malformed(image: np.ndarray) -> list[Malformed]:
    nan_image = image.copy()
    nan_image[0, 3, 3] = np.nan
    cases = [
        (
            "invalid JSON",
            b'{"event_id": "bad-json", "model_id": "digits", "input": [[0.',
            "invalid_event",
        ),
        ("JSON that is not an object", b"[1, 2, 3]", "invalid_event"),
        ("empty message", b"", "invalid_event"),
        (
            "missing input",
            orjson.dumps({"event_id": "bad-no-input", "model_id": ENFORCED}),
            "invalid_event",
        ),
        (
            "missing model_id",
            orjson.dumps({"event_id": "bad-no-model", "input": image.tolist()}),
            "invalid_event",
        ),
        (
            "wrong shape",
            inference_event("bad-shape", np.zeros((1, 4, 4), np.float32)),
            "shape",
        ),
        (
            "tensor bytes that do not fill its shape",
            _tensor("bad-bytes", "float32", [1, 8, 8], b"\0\0\0"),
            "invalid_event",
        ),
        (
            "tensor of the wrong shape",
            _tensor("bad-tensor-shape", "float32", [8, 8], image.astype("<f4").tobytes()),
            "shape",
        ),
        (
            "ragged nested list",
            orjson.dumps(
                {"event_id": "bad-ragged", "model_id": ENFORCED, "input": [[0.0, 1.0], [2.0]]}
            ),
            "ragged",
        ),
        (
            "unknown model_id",
            inference_event("bad-model", image, model_id="resnet-50"),
            "unknown_model",
        ),
        # Serving forgot to scale the 0..16 digits to [0, 1].
        ("pixels above the range", inference_event("bad-range-high", image * 16), "range"),
        ("pixels below the range", inference_event("bad-range-low", image - 0.5), "range"),
        (
            "NaN pixel",
            _tensor("bad-nan", "float32", [1, 8, 8], nan_image.astype("<f4").tobytes()),
            "non_finite",
        ),
    ]
    return [
        Malformed(label, value, reason, None if i == 0 else f"bad-{i}".encode())
        for i, (label, value, reason) in enumerate(cases)
    ]


@dataclass(frozen=True)
class ValidEvent:
    """A valid event as sent."""

    event_id: str
    model_id: str
    source: str
    request_id: str | None
    produced: Produced


@dataclass
class MixedRun:
    """What was sent, what the offline scorer said, and what the worker wrote."""

    inference_topic: str
    topics: OutputTopics
    worker: WorkerProcess
    detector: DemoDetector
    valid: dict[str, ValidEvent]
    malformed: list[tuple[Malformed, Produced]]
    offline: dict[str, OfflineVerdict]
    decisions: list[Record]
    dead_letters: list[Record]
    detections: list[Record]

    def flagged_offline(self) -> set[str]:
        return {e for e in self.valid if self.offline[e].flagged}


def _valid_events(detector: DemoDetector) -> list[tuple[str, bytes, str, str, str | None]]:
    """(event id, value, model, source, request id) for clean and adversarial digits."""
    kinds = [
        ("clean", detector.clean.images[:30], "users"),
        ("pgd", detector.pgd.images[:30], "attacker"),
        ("fgsm", detector.fgsm.images[:15], "attacker"),
    ]
    events = []
    for kind, images, source in kinds:
        for i, image in enumerate(images):
            event_id = f"{kind}-{i}"
            model = ENFORCED if i % 2 == 0 else OBSERVED
            request_id = f"req-{event_id}" if i % 3 == 0 else None
            value = inference_event(
                event_id,
                image,
                model_id=model,
                source=source,
                request_id=request_id,
                as_tensor=i % 4 == 1,
            )
            events.append((event_id, value, model, source, request_id))
    return events


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mixed_run(
    kafka_bootstrap: str,
    demo_detector: DemoDetector,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[MixedRun]:
    folder = tmp_path_factory.mktemp("mixed")
    inference = unique_name("mixed-inference")
    await create_topics(kafka_bootstrap, {inference: INFERENCE_PARTITIONS})
    topics = await OutputTopics.create(kafka_bootstrap, "mixed")
    config = write_worker_config(
        folder / "worker.yaml",
        detector=demo_detector.path,
        models=[ModelEntry(model, [inference], policy) for model, policy in POLICIES.items()],
        topics=topics,
        quarantine={"limit": 10_000},  # no source decisions in this run
        batching={"max_events": 16, "max_wait_ms": 50},
    )
    launcher = WorkerLauncher(kafka_bootstrap, folder)
    try:
        worker = launcher.start("mixed", config)
        await worker.wait_consuming(inference, set(range(INFERENCE_PARTITIONS)))

        valid = _valid_events(demo_detector)
        malformed = _malformed(demo_detector.clean.images[0])
        # Interleave the malformed messages with the valid ones, reproducibly.
        order = np.random.default_rng(7).permutation(len(valid) + len(malformed)).tolist()
        messages: list[tuple[bytes | None, bytes]] = [
            (event_id.encode(), value) for event_id, value, *_ in valid
        ] + [(bad.key, bad.value) for bad in malformed]
        ordered = [messages[i] for i in order]
        produced = await produce(
            kafka_bootstrap,
            inference,
            [value for _, value in ordered],
            keys=[key for key, _ in ordered],
        )
        by_position = dict(zip(order, produced, strict=True))

        events_file = folder / "events.jsonl"
        events_file.write_bytes(b"".join(value + b"\n" for _, value in ordered))
        offline = score_offline(demo_detector.path, events_file, folder / "scores.jsonl")

        valid_events = {
            event_id: ValidEvent(event_id, model, source, request_id, by_position[i])
            for i, (event_id, _, model, source, request_id) in enumerate(valid)
        }
        bad = [(m, by_position[len(valid) + i]) for i, m in enumerate(malformed)]
        flagged = {e for e in valid_events if offline[e].flagged}

        def all_decided(records: list[Record]) -> bool:
            return set(valid_events) <= {orjson.loads(r.value)["event_id"] for r in records}

        decisions = await read_topic(
            kafka_bootstrap, topics.decisions, all_decided, timeout_s=WAIT_S
        )
        dead = await read_topic(
            kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= len(bad), timeout_s=WAIT_S
        )
        detections = await read_topic(
            kafka_bootstrap, topics.detections, lambda r: len(r) >= len(flagged), timeout_s=WAIT_S
        )
        yield MixedRun(
            inference,
            topics,
            worker,
            demo_detector,
            valid_events,
            bad,
            offline,
            decisions,
            dead,
            detections,
        )
    finally:
        launcher.stop_all()


def test_the_traffic_mixes_flagged_and_unflagged_events_of_both_policies(
    mixed_run: MixedRun,
) -> None:
    """Guard the scenario itself: each policy sees flagged and unflagged events."""
    for model in POLICIES:
        verdicts = {
            mixed_run.offline[e].flagged for e, v in mixed_run.valid.items() if v.model_id == model
        }
        assert verdicts == {True, False}, model
    assert set(mixed_run.valid) <= set(mixed_run.offline), "the offline scorer skipped valid events"


def test_every_valid_event_gets_one_decision_matching_the_offline_verdict(
    mixed_run: MixedRun,
) -> None:
    decisions = [Decision.model_validate_json(r.value) for r in mixed_run.decisions]
    keys = [r.key for r in mixed_run.decisions]
    assert [d for d in decisions if d.scope is not Scope.REQUEST] == []
    per_event = Counter(d.event_id for d in decisions)
    missing = sorted(set(mixed_run.valid) - set(per_event))
    unexpected = sorted(set(per_event) - set(mixed_run.valid))
    repeated = sorted(e for e, n in per_event.items() if n > 1)
    assert (missing, unexpected, repeated) == ([], [], [])

    mismatches = []
    for decision, key in zip(decisions, keys, strict=True):
        event = mixed_run.valid[decision.event_id]
        verdict = mixed_run.offline[decision.event_id]
        if not verdict.flagged:
            expected = Action.ALLOW
        elif POLICIES[event.model_id] == "enforce":
            expected = Action.QUARANTINE
        else:
            expected = Action.FLAG
        if decision.action is not expected:
            mismatches.append(
                f"{decision.event_id}: {decision.action} but offline score {verdict.score:.6g} "
                f"(flagged={verdict.flagged}) under {POLICIES[event.model_id]} wants {expected}"
            )
        assert key == (event.request_id or event.event_id).encode()
        assert (decision.model_id, decision.source, decision.request_id) == (
            event.model_id,
            event.source,
            event.request_id,
        )
        assert decision.model_version == "1"
        assert decision.expires_at is None
        [reason] = decision.reasons
        assert reason.detector == "feature_squeezing"
        assert reason.threshold == pytest.approx(mixed_run.detector.threshold)
        assert reason.score == pytest.approx(verdict.score, rel=1e-5, abs=1e-6)
    assert mismatches == []


def test_every_malformed_message_is_dead_lettered_with_its_reason_and_bytes(
    mixed_run: MixedRun,
) -> None:
    letters = [(r, DeadLetter.model_validate_json(r.value)) for r in mixed_run.dead_letters]
    by_offset = {(d.topic, d.partition, d.offset): (r, d) for r, d in letters}
    assert len(by_offset) == len(letters), "a message was dead-lettered twice"
    assert len(letters) == len(mixed_run.malformed)
    for bad, produced in mixed_run.malformed:
        where = (produced.topic, produced.partition, produced.offset)
        assert where in by_offset, f"{bad.label}: not dead-lettered (sent to {where})"
        record, letter = by_offset[where]
        assert letter.reason == bad.reason, f"{bad.label}: {letter.error}"
        assert letter.error.strip(), bad.label
        assert base64.b64decode(letter.value_b64) == bad.value, bad.label
        if bad.key is None:
            assert letter.key_b64 is None, bad.label
        else:
            assert letter.key_b64 is not None, bad.label
            assert base64.b64decode(letter.key_b64) == bad.key, bad.label
            assert record.key == bad.key, bad.label


def test_the_dead_letters_name_the_event_when_it_could_be_read(mixed_run: MixedRun) -> None:
    letters = [DeadLetter.model_validate_json(r.value) for r in mixed_run.dead_letters]
    named = {letter.event_id: letter.model_id for letter in letters if letter.event_id}
    assert named.get("bad-model") == "resnet-50"
    assert named.get("bad-range-high") == ENFORCED
    assert all(letter.event_id is None for letter in letters if letter.reason == "invalid_event")


def test_detections_are_exactly_the_flagged_events_keyed_by_model(mixed_run: MixedRun) -> None:
    detections = [(r, Detection.model_validate_json(r.value)) for r in mixed_run.detections]
    ids = Counter(d.event_id for _, d in detections)
    assert set(ids) == mixed_run.flagged_offline()
    assert [e for e, n in ids.items() if n > 1] == []
    sha256 = hashlib.sha256(mixed_run.detector.path.read_bytes()).hexdigest()
    for record, detection in detections:
        event = mixed_run.valid[detection.event_id]
        assert record.key == event.model_id.encode()
        assert detection.model_id == event.model_id
        assert detection.source == event.source
        assert detection.request_id == event.request_id
        assert detection.kind == "adversarial"
        assert detection.detector_sha256 == sha256
        assert detection.score > detection.threshold
        assert (detection.topic, detection.partition, detection.offset) == (
            event.produced.topic,
            event.produced.partition,
            event.produced.offset,
        )


async def test_metrics_agree_with_the_counts(mixed_run: MixedRun) -> None:
    valid = mixed_run.valid
    flagged = mixed_run.flagged_offline()
    total = len(valid) + len(mixed_run.malformed)

    def settled(metrics: MetricSamples) -> bool:
        # The counters move just after the outputs are acknowledged.
        decided = sum(metrics.by_label("advmon_decisions_total", "action").values())
        consumed = metrics.value("advmon_events_consumed_total", topic=mixed_run.inference_topic)
        return consumed == total and decided >= len(valid)

    metrics = await mixed_run.worker.wait_for_metrics(settled, timeout_s=10.0)
    assert metrics.value("advmon_events_consumed_total", topic=mixed_run.inference_topic) == total
    assert metrics.by_label("advmon_events_invalid_total", "reason") == Counter(
        bad.reason for bad, _ in mixed_run.malformed
    )
    for model in POLICIES:
        of_model = {e for e, v in valid.items() if v.model_id == model}
        assert metrics.value("advmon_events_decoded_total", model=model) == len(of_model)
        assert metrics.value("advmon_events_scored_total", model=model) == len(of_model)
        assert metrics.value("advmon_events_flagged_total", model=model) == len(of_model & flagged)
    expected_actions = Counter(
        "allow"
        if e not in flagged
        else "quarantine"
        if POLICIES[v.model_id] == "enforce"
        else "flag"
        for e, v in valid.items()
    )
    for action in Action:
        assert (
            metrics.value("advmon_decisions_total", action=action.value, scope="request")
            == expected_actions[action.value]
        ), action
        assert metrics.value("advmon_decisions_total", action=action.value, scope="source") == 0
