"""advmon's settings: the one place that reads the environment.

Every setting comes from an ``ADVMON_``-prefixed environment variable; nested groups use
``__`` (``ADVMON_SCORING__DEVICE=cpu``). Detectors never see this object: the code that
builds them passes plain arguments.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ScoringSettings", "Settings"]


class ScoringSettings(BaseModel):
    """How the fused squeeze graph is run."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="ONNX Runtime device: auto (CUDA when present), cpu, cuda."
    )
    batch_size: int = Field(default=256, ge=1, description="Events scored per graph run.")
    intra_op_threads: int | None = Field(
        default=None, ge=1, description="ONNX Runtime intra-op threads; unset lets it choose."
    )


class Settings(BaseSettings):
    """All of advmon's settings (``ADVMON_*`` environment variables)."""

    model_config = SettingsConfigDict(
        env_prefix="ADVMON_", env_nested_delimiter="__", extra="forbid"
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Log level of advmon's own loggers."
    )
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
