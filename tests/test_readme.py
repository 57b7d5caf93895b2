"""The README's "Connect to your topics" examples, and those of docs/formats.md, work.

Every YAML block must be a valid worker config; every JSON block after it must be a
message that config's format decodes into events of its model (an OIP v2 request is
joined with the response that follows it). The ``advmon inspect`` example is exercised
by ``tests/monitor/test_inspect.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
import yaml

from monitor.config import ModelConfig, MonitorConfig
from monitor.formats import OipMessage, decode_oip_v2, mapped_event, oip_v2_events, sagemaker_events
from schemas import InferenceEvent, decode_event

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(text: str) -> list[tuple[str, str]]:
    return [(match[1], match[2]) for match in BLOCK.finditer(text)]


def decode(model: ModelConfig, raw: bytes, requests: list[OipMessage]) -> list[InferenceEvent]:
    """The events of one example message (none yet for an OIP v2 request: it waits)."""
    if model.format == "native":
        return [decode_event(raw)]
    if model.format == "sagemaker":
        return sagemaker_events(raw, model_id=model.id)
    if model.format == "mapped":
        assert model.mapping is not None
        return [mapped_event(raw, model.mapping, model_id=model.id)]
    half = decode_oip_v2(raw, [])
    if half.kind == "request":
        requests.append(half)
        return []
    (request,) = [r for r in requests if r.id == half.id]
    return oip_v2_events(
        request,
        half,
        model_id=model.id,
        input_name=model.oip_v2.input_name,
        output_name=model.oip_v2.output_name,
    )


def test_every_readme_topic_example_loads_and_decodes() -> None:
    examples = blocks(section((ROOT / "README.md").read_text(), "## Connect to your topics"))
    formats_seen: set[str] = set()
    events_seen = 0
    model: ModelConfig | None = None
    requests: list[OipMessage] = []
    for language, body in examples:
        if language == "yaml":
            (model,) = MonitorConfig.model_validate(yaml.safe_load(body)).models
            formats_seen.add(model.format)
        elif language == "json":
            assert model is not None, "a message example comes before any config"
            events = decode(model, orjson.dumps(orjson.loads(body)), requests)
            assert all(e.model_id == model.id for e in events)
            events_seen += len(events)
    assert formats_seen == {"native", "oip-v2", "sagemaker", "mapped"}
    # native 1, OIP v2 2 (a request of two rows, joined), SageMaker 1, mapped 1
    assert events_seen == 5


@pytest.mark.parametrize("document", ["README.md", "docs/formats.md", "docs/drift.md"])
def test_every_config_example_is_a_valid_worker_config(document: str) -> None:
    configs = [
        body for language, body in blocks((ROOT / document).read_text()) if language == "yaml"
    ]
    assert configs
    for body in configs:
        data = yaml.safe_load(body)
        if "models" in data:
            MonitorConfig.model_validate(data)
