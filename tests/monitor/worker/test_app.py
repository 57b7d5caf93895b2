"""Building the Faust app from settings: broker address and security pass-through."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from monitor.cli import main
from monitor.settings import KafkaSettings
from monitor.worker.app import broker_credentials


def test_plaintext_needs_no_credentials() -> None:
    assert broker_credentials(KafkaSettings()) is None


def test_sasl_credentials_pass_through() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="advmon",
        sasl_password=SecretStr("s3cret"),
    )
    credentials = broker_credentials(kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "advmon"
    assert credentials.password == "s3cret"
    assert str(credentials.mechanism.value) == "SCRAM-SHA-512"
    assert credentials.ssl_context is None
    assert "s3cret" not in repr(kafka)


def test_ssl_builds_a_context() -> None:
    credentials = broker_credentials(KafkaSettings(security_protocol="SSL"))
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context is not None


def test_worker_without_config_says_how_to_give_one() -> None:
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 2
    assert "give the worker config with --config or ADVMON_CONFIG" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: []", "invalid config"),
        ("models:\n  - {id: digits, detector: missing.json}", "detector file not found"),
    ],
)
def test_worker_with_a_bad_config_fails_before_starting(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "advmon.yaml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["worker", "--config", str(config)])
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_worker_refuses_a_database_whose_schema_is_behind(
    tmp_path: Path, detector_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "advmon.yaml"
    config.write_text(f"models:\n  - {{id: digits, detector: {detector_path}}}\n")
    monkeypatch.setenv("ADVMON_DATABASE__URL", f"sqlite:///{tmp_path / 'empty.db'}")
    result = CliRunner().invoke(main, ["worker", "--config", str(config)])
    assert result.exit_code == 1
    assert "is empty, this advmon needs revision 0003: run `advmon db upgrade`" in result.stderr
    assert "Traceback" not in result.output
