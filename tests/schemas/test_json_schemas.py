"""The committed JSON Schema files match the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.export import JSON_SCHEMA_DIR, SCHEMA_BASE_URI, main, write_json_schemas

_FILES = [
    "dead_letter.schema.json",
    "decision.schema.json",
    "detection.schema.json",
    "inference_event.schema.json",
    "score_record.schema.json",
]
#: Written by hand, not generated from a pydantic model: advmon evaluate's report.json.
_HAND_WRITTEN = ["robustness_report.schema.json"]


def test_committed_schemas_match_the_models(tmp_path: Path) -> None:
    write_json_schemas(tmp_path)
    generated = sorted(path.name for path in tmp_path.iterdir())
    committed = sorted(path.name for path in JSON_SCHEMA_DIR.glob("*.json"))
    assert generated == _FILES
    assert committed == sorted(_FILES + _HAND_WRITTEN)
    for name in generated:
        assert (JSON_SCHEMA_DIR / name).read_bytes() == (tmp_path / name).read_bytes(), (
            f"schemas/json/{name} is stale; regenerate with `python -m schemas.export`"
        )


@pytest.mark.parametrize("name", _FILES + _HAND_WRITTEN)
def test_schema_documents_are_self_describing(name: str) -> None:
    text = (JSON_SCHEMA_DIR / name).read_text(encoding="utf-8")
    document = json.loads(text)
    assert list(document)[:2] == ["$schema", "$id"]
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == SCHEMA_BASE_URI + name
    assert document["type"] == "object"
    assert document["title"]
    assert text.endswith("}\n")
    assert not text.endswith("\n\n")


def test_tensor_payload_is_embedded_in_the_event_schema() -> None:
    document = json.loads((JSON_SCHEMA_DIR / "inference_event.schema.json").read_text())
    assert set(document["$defs"]) == {"TensorDType", "TensorPayload"}
    assert document["required"] == ["event_id", "model_id", "input"]
    assert {"$ref": "#/$defs/TensorPayload"} in document["properties"]["input"]["oneOf"]


def test_export_cli_writes_into_the_given_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "out")]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == _FILES
    assert len(capsys.readouterr().out.splitlines()) == len(_FILES)


def test_export_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["a", "b"]) == 2
    assert "usage" in capsys.readouterr().err
