"""advmon's settings: the one place that reads the environment.

Every setting comes from an ``ADVMON_``-prefixed environment variable; nested groups use
``__`` (``ADVMON_KAFKA__BOOTSTRAP=broker:9092``). Detectors never see this object: the
code that builds them passes plain arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from ssl import SSLContext
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.errors import UnknownSettingError

__all__ = [
    "ENV_PREFIX",
    "AlertingSettings",
    "ApiSettings",
    "DatabaseSettings",
    "DriftSettings",
    "IncidentSettings",
    "KafkaSettings",
    "ScoringSettings",
    "Settings",
    "WorkerSettings",
    "setting_variable_names",
]

ENV_PREFIX = "ADVMON_"
_NESTED = "__"


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoringSettings(_Group):
    """How the fused squeeze graph is run."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="ONNX Runtime device: auto (CUDA when present), cpu, cuda."
    )
    batch_size: int = Field(default=256, ge=1, description="Events scored per graph run.")
    intra_op_threads: int | None = Field(
        default=None, ge=1, description="ONNX Runtime intra-op threads; unset lets it choose."
    )
    spin_wait: bool = Field(
        default=False,
        description="Let the worker's ONNX Runtime threads spin between runs (its default "
        "elsewhere): a little less latency per run on cores of its own, but CPU taken from "
        "the event loop and any broker sharing the machine.",
    )


class KafkaSettings(_Group):
    """How to reach the Kafka cluster; security settings pass through to the client."""

    bootstrap: str = Field(
        default="localhost:9092", description="Comma-separated host:port list of brokers."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(default=None, description="CA bundle for SSL.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate for SSL.")
    ssl_keyfile: Path | None = Field(default=None, description="Client key for SSL.")
    session_timeout_ms: int = Field(
        default=10_000, ge=6_000, description="Consumer group session timeout."
    )
    max_request_bytes: int = Field(
        default=1_048_576,
        ge=131_072,
        description="Largest produce request the worker sends (the producer's "
        "max_request_size); at most the broker's message.max.bytes, checked at start.",
    )

    def ssl_context(self) -> SSLContext | None:
        """The TLS context for ``SSL``/``SASL_SSL`` from the configured files, else None."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context: SSLContext = create_ssl_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
            certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
            keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
        )
        return context

    def client_options(self) -> dict[str, Any]:
        """Connection and security keyword arguments for an aiokafka client."""
        password = self.sasl_password.get_secret_value() if self.sasl_password else None
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": password,
            "ssl_context": self.ssl_context(),
        }


class WorkerSettings(_Group):
    """The stream processor's identity and internal topics."""

    app_id: str = Field(
        default="advmon",
        min_length=1,
        description=(
            "Faust app id: the consumer groups (<app_id>-inference reads the inference "
            "topics, <app_id> the internal ones), and the prefix of the internal topics the "
            "config does not name and of the tables' changelogs."
        ),
    )
    internal_partitions: int = Field(
        default=4, ge=1, description="Partitions of internal topics (source flags, tables)."
    )
    instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Static group membership id (e.g. the pod name of a StatefulSet): a "
        "worker restarted with the same id takes its partitions back without a rebalance, "
        "wherever it runs and whatever its web port. Kafka's rule for group.instance.id: "
        "letters, digits, '.', '_' and '-', at most 249.",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Faust's data directory; unset uses '<app_id>-data' in the working dir.",
    )
    web_bind: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the worker's web port (/metrics, /healthz) listens on: loopback "
        "unless set, 0.0.0.0 where Prometheus scrapes it from another host or container. "
        "The worker's --web-bind option overrides it.",
    )


class DatabaseSettings(_Group):
    """Where incidents are stored."""

    url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/advmon (SQLite "
        "is for the demo only). Unset: the worker keeps no incidents and sends no alerts.",
    )
    retry_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest back-off between retries while it is down."
    )


class DriftSettings(_Group):
    """How the worker keeps its drift detectors."""

    checkpoint_key: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Key (32 or more characters, e.g. `openssl rand -hex 32`) the drift "
        "checkpoints in the drift-states changelog are signed and verified with "
        "(HMAC-SHA256); a checkpoint that does not verify is never unpickled. Unset: "
        "checkpoints are written and read unsigned (logged once at start).",
    )

    def checkpoint_key_bytes(self) -> bytes | None:
        """The checkpoint key as the drift stage takes it, ``None`` when unset."""
        key = self.checkpoint_key
        return key.get_secret_value().encode() if key is not None else None


class IncidentSettings(_Group):
    """How detections group into incidents."""

    gap_seconds: float = Field(
        default=600, gt=0, description="Detections closer than this join the same incident."
    )
    quiet_period_seconds: float = Field(
        default=1800, gt=0, description="An incident without detections this long resolves."
    )
    sample_size: int = Field(default=20, ge=1, description="Event ids kept per incident.")


class AlertingSettings(_Group):
    """Where alerts go."""

    alertmanager_urls: str = Field(
        default="",
        description="Comma-separated Alertmanager base URLs (http://am:9093); empty: no alerts.",
    )
    resend_seconds: float = Field(
        default=60, gt=0, description="How often open incidents' alerts are re-posted."
    )
    incident_url_template: str = Field(
        default="http://localhost:8080/api/incidents/{id}",
        description="Link to an incident in alert annotations; {id} is the incident id.",
    )
    timeout_seconds: float = Field(default=5.0, gt=0, description="HTTP timeout per request.")

    @property
    def urls(self) -> list[str]:
        """The Alertmanager base URLs, without trailing slashes."""
        return [u.strip().rstrip("/") for u in self.alertmanager_urls.split(",") if u.strip()]


class ApiSettings(_Group):
    """The incident HTTP API (``advmon api``)."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port to listen on.")
    token: SecretStr | None = Field(
        default=None, description="Bearer token required on every request when set."
    )


class Settings(BaseSettings):
    """All of advmon's settings (``ADVMON_*`` environment variables)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=_NESTED, extra="forbid"
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Log level of advmon's own loggers."
    )
    config: Path | None = Field(
        default=None, description="Worker config file (YAML); --config overrides it."
    )
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    incidents: IncidentSettings = Field(default_factory=IncidentSettings)
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @classmethod
    def from_environment(cls) -> Settings:
        """Read the settings, refusing ``ADVMON_*`` variables that are no setting.

        pydantic-settings ignores unknown top-level variables, so ``ADVMON_LOGLEVEL=DEBUG``
        would silently do nothing; this raises :class:`UnknownSettingError` instead.
        """
        known = setting_variable_names()
        unknown = sorted(
            name
            for name in os.environ
            if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
        )
        if unknown:
            raise UnknownSettingError(unknown)
        return cls()


def setting_variable_names(
    model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX
) -> frozenset[str]:
    """Every environment variable name the settings read, upper-cased.

    Nested groups count both as a whole (``ADVMON_KAFKA``, a JSON object) and per field
    (``ADVMON_KAFKA__BOOTSTRAP``).

    >>> "ADVMON_KAFKA__BOOTSTRAP" in setting_variable_names()
    True
    """
    names: set[str] = set()
    for name, info in model.model_fields.items():
        variable = (prefix + name).upper()
        names.add(variable)
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names |= setting_variable_names(group, variable + _NESTED)
    return frozenset(names)
