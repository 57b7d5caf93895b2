"""The worker's YAML config: which models to monitor, where their events are, and the policy.

Example::

    topics:                      # all optional; these are the defaults
      decisions: advmon-decisions
      dead_letter: advmon-dead-letter
      detections: advmon-detections
      # Internal topics; by default named after ADVMON_WORKER__APP_ID (here "advmon"):
      source_flags: advmon-source-flags   # keyed by source
      signals: advmon-signals             # keyed by model (drift signals)
      oip_halves: advmon-oip-halves       # keyed by CloudEvent id (OIP v2 join)
      joined: advmon-joined-events        # joined OIP v2 events (native format)
      query_prints: advmon-query-prints   # keyed by model and source (query attacks)
    batching:
      max_events: 64             # events scored per run of the fused graph, at most
      max_wait_ms: 5             # how long a partial batch waits for more events
    quarantine:
      limit: 20                  # flagged events from one source within the window ...
      window_seconds: 60
      ttl_seconds: 900           # ... quarantine it for this long
    models:
      - id: digits               # matches the events' model_id
        detector: detectors/digits.json
        topics: [inference-events]
        format: native           # native | oip-v2 | sagemaker | mapped (docs/formats.md)
        policy: enforce          # observe: never more than "flag"
        query_attacks:           # optional; docs/query-attacks.md
          min_linked: 8          # default: the detector file's calibrated threshold
          history_size: 256
          max_age_seconds: 86400
          decision_seconds: 3600
        drift:                   # optional; defaults shown in docs/drift.md
          cooldown_seconds: 600
          warmup: 100
          signals:               # omit for the default set
            top1: adwin
            input_mean: {detector: page_hinkley, params: {threshold: 5, delta: 0.05}}

Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detectors import DriftConfigError, DriftDetectorSpec, SignalSpec, default_signals
from monitor.errors import ConfigError
from monitor.formats import FieldMapping

__all__ = [
    "BatchingConfig",
    "DeadLetterConfig",
    "DriftConfig",
    "DriftSignalConfig",
    "EventFormat",
    "ModelConfig",
    "MonitorConfig",
    "OipV2Config",
    "Policy",
    "QuarantineConfig",
    "QueryAttackConfig",
    "TopicsConfig",
    "load_config",
]

DEFAULT_INFERENCE_TOPIC = "inference-events"


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
    signals: str = Field(
        default="advmon-signals",
        min_length=1,
        description="Internal: per-event drift signals re-keyed by model.",
    )
    oip_halves: str = Field(
        default="advmon-oip-halves",
        min_length=1,
        description="Internal: OIP v2 requests and responses re-keyed by CloudEvent id.",
    )
    joined: str = Field(
        default="advmon-joined-events",
        min_length=1,
        description="Internal: OIP v2 requests joined with their responses, as native events.",
    )
    query_prints: str = Field(
        default="advmon-query-prints",
        min_length=1,
        description="Internal: query fingerprints re-keyed by model and source.",
    )

    @property
    def internal(self) -> list[str]:
        """The topics only advmon reads and writes."""
        return [self.source_flags, self.signals, self.oip_halves, self.joined, self.query_prints]

    def for_app(self, app_id: str) -> TopicsConfig:
        """Internal topics not named in the config, named after the worker's app id.

        Two deployments on one cluster (``ADVMON_WORKER__APP_ID``) then never read each
        other's internal records; with the default app id ``advmon`` the names are the
        defaults above.
        """
        named = {
            name: f"{app_id}-{suffix}"
            for name, suffix in _INTERNAL_SUFFIXES.items()
            if name not in self.model_fields_set
        }
        return self.model_copy(update=named)


_INTERNAL_SUFFIXES = {
    "source_flags": "source-flags",
    "signals": "signals",
    "oip_halves": "oip-halves",
    "joined": "joined-events",
    "query_prints": "query-prints",
}


class DeadLetterConfig(_Strict):
    """What a dead letter keeps of the value it refused."""

    copy_bytes: int = Field(
        default=65_536,
        ge=0,
        le=524_288,
        description="Bytes of a refused value kept in its dead letter (its size and SHA-256 "
        "are always kept); at most 512 KiB, so a dead letter fits any producer request.",
    )


class BatchingConfig(_Strict):
    """How events are batched for scoring: by count and by time, whichever comes first."""

    max_events: int = Field(default=64, ge=1, le=65536)
    max_wait_ms: int = Field(default=5, ge=1, le=60_000)


class QuarantineConfig(_Strict):
    """When a source is quarantined: ``limit`` flagged events within ``window_seconds``."""

    limit: int = Field(default=20, ge=1)
    window_seconds: int = Field(default=60, ge=1)
    ttl_seconds: int = Field(default=900, ge=1)


class QueryAttackConfig(_Strict):
    """Per-source detection of black-box query attacks for one model (docs/query-attacks.md).

    Unset values come from the detector file, which ``advmon calibrate`` writes with a
    threshold measured on the benign events.
    """

    enabled: bool = True
    min_linked: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Flag a source when a query is linked to this many of its held queries.",
    )
    history_size: int | None = Field(
        default=None, ge=1, le=4096, description="Queries held per source and model, at most."
    )
    max_age_seconds: float = Field(
        default=86_400.0,
        gt=0,
        le=30 * 86_400,
        description="Held queries older than this (event time) are dropped.",
    )
    decision_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=30 * 86_400,
        description="How long a source's query-attack decision (quarantine or flag) lasts.",
    )


class DriftSignalConfig(_Strict):
    """The drift detector of one signal: a River detector's name and parameters."""

    detector: str = Field(default="adwin", description="adwin, kswin, page_hinkley, ddm, …")
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    warmup: int | None = Field(default=None, ge=0, description="Overrides the model's warmup.")


class DriftConfig(_Strict):
    """Online drift detection for one model (see docs/drift.md)."""

    enabled: bool = True
    signals: dict[str, DriftSignalConfig] | None = Field(
        default=None, description="Signal name → detector; omitted: the default set."
    )
    warmup: int = Field(default=100, ge=0, description="No drift verdict before N events.")
    cooldown_seconds: float = Field(
        default=600.0,
        ge=0,
        description="After a drift on a signal, repeats on it are not reported for this long.",
    )

    @field_validator("signals", mode="before")
    @classmethod
    def _detector_names(cls, signals: object) -> object:
        # `top1: adwin` is short for `top1: {detector: adwin}`.
        if isinstance(signals, dict):
            return {k: {"detector": v} if isinstance(v, str) else v for k, v in signals.items()}
        return signals

    def signal_specs(
        self, input_kind: str, num_classes: int | None, n_features: int | None
    ) -> list[SignalSpec]:
        """The configured signals (the default set when none are given), as specs.

        Raises :class:`detectors.DriftConfigError` naming a bad signal or detector.
        """
        if self.signals is None:
            return [
                SignalSpec(s.name, DriftDetectorSpec(s.detector.kind, warmup=self.warmup))
                for s in default_signals(input_kind, num_classes, n_features)
            ]
        return [
            SignalSpec(
                name,
                DriftDetectorSpec(
                    signal.detector,
                    signal.params,
                    self.warmup if signal.warmup is None else signal.warmup,
                ),
            )
            for name, signal in self.signals.items()
        ]

    @model_validator(mode="after")
    def _known_signals(self) -> DriftConfig:
        try:
            # Shape-dependent checks (classes, feature count) wait for the detector file.
            self.signal_specs("image", 2, None)
        except DriftConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


Policy = Literal["observe", "enforce"]
"""``observe`` never asks for more than ``flag``; ``enforce`` may quarantine."""

EventFormat = Literal["native", "oip-v2", "sagemaker", "mapped"]
"""How the messages of a model's topics are written (see docs/formats.md)."""


class OipV2Config(_Strict):
    """How OIP v2 (KServe payload logger) requests and responses are read and joined."""

    input_name: str | None = Field(
        default=None, description="Request tensor to score; needed when there are several."
    )
    output_name: str | None = Field(
        default=None, description="Response tensor to keep as output; default: the only one."
    )
    join_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long a request waits for its response before it is scored alone (and a "
            "response for its request before it is dropped and counted)."
        ),
    )
    source_attribute: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "CloudEvent attribute or extension (lower-case name) that holds the caller: "
            "the trusted source, written by the logger or the gateway after authentication."
        ),
    )
    source_parameters: list[str] = Field(
        default_factory=list,
        description=(
            "Request-body parameters to read the source from when source_attribute gives "
            "none, in order (e.g. [source, user]). The client writes these: opt in only "
            "when a client cannot choose them, or it can get another client quarantined."
        ),
    )


class ModelConfig(_Strict):
    """One monitored model."""

    id: str = Field(min_length=1, description="The events' model_id.")
    detector: Path = Field(description="Detector file written by advmon calibrate.")
    topics: list[str] = Field(default_factory=lambda: [DEFAULT_INFERENCE_TOPIC], min_length=1)
    format: EventFormat = Field(default="native", description="How the topics' messages read.")
    oip_v2: OipV2Config = Field(default_factory=OipV2Config)
    mapping: FieldMapping | None = Field(
        default=None, description="For format mapped: JSONPath of each event field."
    )
    policy: Policy = "observe"
    drift: DriftConfig = Field(default_factory=DriftConfig)
    query_attacks: QueryAttackConfig = Field(default_factory=QueryAttackConfig)

    @model_validator(mode="after")
    def _mapping_for_mapped(self) -> ModelConfig:
        if self.format == "mapped" and self.mapping is None:
            raise ValueError("format mapped needs a mapping: (event_id and input paths at least)")
        if self.format != "mapped" and self.mapping is not None:
            raise ValueError(f"mapping is only read with format mapped, not {self.format}")
        return self

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
    dead_letters: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
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
            *self.topics.internal,
        }
        clash = sorted(ours.intersection(t for m in self.models for t in m.topics))
        if clash:
            raise ValueError(f"inference topics must differ from advmon's own: {clash}")
        # Only native events name their model: a topic in another format has one model.
        for model in self.models:
            if model.format == "native":
                continue
            for topic in model.topics:
                sharing = sorted(m.id for m in self.models if topic in m.topics and m is not model)
                if sharing:
                    raise ValueError(
                        f"topic {topic!r} of model {model.id!r} (format {model.format}) is also "
                        f"listed by {', '.join(sharing)}: a topic in a format other than native "
                        "belongs to one model"
                    )
        return self

    def topic_model(self, topic: str) -> ModelConfig | None:
        """The model a non-native topic belongs to (``None`` for native topics)."""
        for model in self.models:
            if model.format != "native" and topic in model.topics:
                return model
        return None

    @property
    def inference_topics(self) -> list[str]:
        """Every inference topic, once, in config order."""
        return list(dict.fromkeys(t for m in self.models for t in m.topics))

    def for_app(self, app_id: str) -> MonitorConfig:
        """A copy whose unnamed internal topics carry the worker's app id."""
        return self.model_copy(update={"topics": self.topics.for_app(app_id)})

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
