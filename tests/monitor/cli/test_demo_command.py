"""``advmon demo`` without the demo extra: it says so before any offline work."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import main
from tests.monitor.cli_support import assert_clean_failure


def _no_noida_db(package: str) -> object:
    raise ModuleNotFoundError(f"No module named {package!r}")


def test_the_streaming_demo_needs_the_demo_extra_and_says_so_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("monitor.kafka.local_broker.files", _no_noida_db)
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out-dir", str(out)])
    message = assert_clean_failure(result)
    assert message == "the local broker needs the noida-db package: pip install 'advmon[demo]'"
    assert not out.exists(), "nothing of the offline part ran"
