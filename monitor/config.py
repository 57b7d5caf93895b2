"""The worker's YAML config: which models to monitor, where their events are, and the policy.

Example::

    topics:                      # all optional; these are the defaults
      decisions: advmon-decisions
      dead_letter: advmon-dead-letter
      detections: advmon-detections
      source_flags: advmon-source-flags   # internal, keyed by source
    batching:
      max_events: 64             # events scored per run of the fused graph, at most
      max_wait_ms: 50            # how long a partial batch waits for more events
    quarantine:
      limit: 20                  # flagged events from one source within the window ...
      window_seconds: 60
      ttl_seconds: 900           # ... quarantine it for this long
    models:
      - id: digits               # matches the events' model_id
        detector: detectors/digits.json
        topics: [inference-events]
        policy: enforce          # observe: never more than "flag"

Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "BatchingConfig",
    "ConfigError",
    "ModelConfig",
    "MonitorConfig",
    "QuarantineConfig",
    "TopicsConfig",
    "load_config",
]

DEFAULT_INFERENCE_TOPIC = "inference-events"


class ConfigError(Exception):
    """The worker config cannot be read or is invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicsConfig(_Strict):
    """Names of the topics advmon writes."""

    decisions: str = Field(default="advmon-decisions", min_length=1)
    dead_letter: str = Field(default="advmon-dead-letter", min_length=1)
    detections: str = Field(default="advmon-detections", min_length=1)
    source_flags: str = Field(
        default="advmon-source-flags",
        min_length=1,
        description="Internal: flagged events re-keyed by source for quarantine counts.",
    )


class BatchingConfig(_Strict):
    """How events are batched for scoring: by count and by time, whichever comes first."""

    max_events: int = Field(default=64, ge=1, le=65536)
    max_wait_ms: int = Field(default=50, ge=1, le=60_000)


class QuarantineConfig(_Strict):
    """When a source is quarantined: ``limit`` flagged events within ``window_seconds``."""

    limit: int = Field(default=20, ge=1)
    window_seconds: int = Field(default=60, ge=1)
    ttl_seconds: int = Field(default=900, ge=1)


class ModelConfig(_Strict):
    """One monitored model."""

    id: str = Field(min_length=1, description="The events' model_id.")
    detector: Path = Field(description="Detector file written by advmon calibrate.")
    topics: list[str] = Field(default_factory=lambda: [DEFAULT_INFERENCE_TOPIC], min_length=1)
    policy: Literal["observe", "enforce"] = "observe"

    @field_validator("topics")
    @classmethod
    def _topic_names(cls, topics: list[str]) -> list[str]:
        if any(not t.strip() for t in topics):
            raise ValueError("topic names must not be empty")
        return topics


class MonitorConfig(_Strict):
    """The whole worker config."""

    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)
    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_models(self) -> MonitorConfig:
        ids = [m.id for m in self.models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"model ids must be unique; repeated: {', '.join(duplicates)}")
        ours = {
            self.topics.decisions,
            self.topics.dead_letter,
            self.topics.detections,
            self.topics.source_flags,
        }
        clash = sorted(ours.intersection(t for m in self.models for t in m.topics))
        if clash:
            raise ValueError(f"inference topics must differ from advmon's own: {clash}")
        return self

    @property
    def inference_topics(self) -> list[str]:
        """Every inference topic, once, in config order."""
        return list(dict.fromkeys(t for m in self.models for t in m.topics))

    def resolve_paths(self, base: Path) -> MonitorConfig:
        """A copy whose relative detector paths are resolved against ``base``."""
        models = [
            m.model_copy(update={"detector": (base / m.detector).resolve()}) for m in self.models
        ]
        return self.model_copy(update={"models": models})


def load_config(path: str | Path) -> MonitorConfig:
    """Read and validate a worker config file; raise :class:`ConfigError` naming the problem."""
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except yaml.MarkedYAMLError as exc:
        where = (
            f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
            if (exc.problem_mark is not None)
            else "?"
        )
        raise ConfigError(
            f"cannot read config file {source}: {where}: {exc.problem or exc}"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {source}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must hold a mapping (models:, topics:, …)")
    try:
        config = MonitorConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '<root>'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"invalid config {source}: {problems}") from None
    return config.resolve_paths(source.resolve().parent)
