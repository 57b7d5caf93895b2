"""Write the JSON Schema files of the wire contracts, for producers in other languages.

Run ``python -m schemas.export [DIR]`` after changing a model; ``DIR`` defaults to the
``json/`` folder of this package, where the committed files live. A test fails when the
committed files and the models drift apart.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas._dead_letters import DeadLetter
from schemas._decisions import Decision
from schemas._detections import Detection
from schemas._events import InferenceEvent
from schemas._scores import ScoreRecord

__all__ = ["JSON_SCHEMA_DIR", "SCHEMA_BASE_URI", "json_schemas", "main", "write_json_schemas"]

JSON_SCHEMA_DIR = Path(__file__).parent / "json"
"""Where the committed schema files live."""

SCHEMA_BASE_URI = "urn:advmon:schema:"
"""Base of each schema's ``$id``: a location-independent name (``urn:advmon:schema:FILE``)."""

_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_MODELS: dict[str, type[BaseModel]] = {
    "inference_event.schema.json": InferenceEvent,
    "score_record.schema.json": ScoreRecord,
    "detection.schema.json": Detection,
    "decision.schema.json": Decision,
    "dead_letter.schema.json": DeadLetter,
}


def json_schemas() -> dict[str, str]:
    """Render every wire contract's JSON Schema, keyed by file name.

    Each document is pydantic's validation schema headed by ``$schema`` and ``$id``,
    indented by 2 with a trailing newline, in pydantic's key order.

    Examples
    --------
    >>> sorted(json_schemas())  # doctest: +NORMALIZE_WHITESPACE
    ['dead_letter.schema.json', 'decision.schema.json', 'detection.schema.json',
     'inference_event.schema.json', 'score_record.schema.json']
    """
    rendered: dict[str, str] = {}
    for file_name, model in _MODELS.items():
        document: dict[str, Any] = {
            "$schema": _DIALECT,
            "$id": SCHEMA_BASE_URI + file_name,
            **model.model_json_schema(),
        }
        rendered[file_name] = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return rendered


def write_json_schemas(directory: str | Path = JSON_SCHEMA_DIR) -> list[Path]:
    """Write every wire contract's JSON Schema file into ``directory``; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in json_schemas().items():
        path = directory / file_name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m schemas.export [DIR]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(arg in ("-h", "--help") for arg in args):
        print("usage: python -m schemas.export [DIR]", file=sys.stderr)
        return 2
    for path in write_json_schemas(args[0] if args else JSON_SCHEMA_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
