"""The worker's YAML config."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import MonitorConfig, load_config
from monitor.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "advmon.yaml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "models:\n  - id: digits\n    detector: d/digits.json\n"))
    (model,) = config.models
    assert model.detector == (tmp_path / "d" / "digits.json").resolve()
    assert model.topics == ["inference-events"]
    assert model.policy == "observe"
    assert config.topics.decisions == "advmon-decisions"
    assert config.topics.dead_letter == "advmon-dead-letter"
    assert (config.batching.max_events, config.batching.max_wait_ms) == (64, 5)
    assert config.inference_topics == ["inference-events"]


def test_inference_topics_are_listed_once(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
models:
  - {id: a, detector: a.json, topics: [t1, t2]}
  - {id: b, detector: b.json, topics: [t2, t3], policy: enforce}
""",
        )
    )
    assert config.inference_topics == ["t1", "t2", "t3"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: []", "models: List should have at least 1 item"),
        ("modles: []", "modles: Extra inputs are not permitted"),
        ("models:\n  - {id: a, detector: a.json, policy: block}", "models.0.policy"),
        ("models:\n  - {id: a, detector: a.json}\n  - {id: a, detector: b.json}", "repeated: a"),
        (
            "models:\n  - {id: a, detector: a.json, topics: [advmon-decisions]}",
            "must differ from advmon's own",
        ),
        (
            "batching: {max_events: 0}\nmodels:\n  - {id: a, detector: a.json}",
            "batching.max_events",
        ),
        ("- just a list", "must hold a mapping"),
        ("models: [", "cannot read config file"),
    ],
)
def test_bad_configs_say_where_and_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_internal_topics_not_named_in_the_config_carry_the_app_id() -> None:
    config = MonitorConfig.model_validate(
        {"topics": {"signals": "shared-signals"}, "models": [{"id": "m", "detector": "d.json"}]}
    )
    staging = config.for_app("staging").topics
    assert (staging.source_flags, staging.oip_halves, staging.joined) == (
        "staging-source-flags",
        "staging-oip-halves",
        "staging-joined-events",
    )
    assert staging.signals == "shared-signals"  # named in the config: kept
    assert (staging.decisions, staging.detections) == ("advmon-decisions", "advmon-detections")
    assert config.for_app("advmon").topics == config.topics
