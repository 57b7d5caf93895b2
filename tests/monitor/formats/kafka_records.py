"""Load the real-shaped message fixtures of ``fixtures/`` and build small CloudEvent records.

A KServe record is two files: ``<name>.headers.json`` (the Kafka headers, as
``[name, value]`` pairs of text) and ``<name>.value.json`` (the value's exact bytes). A
SageMaker record is one line of ``<name>.jsonl``, as Data Capture writes it to S3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from monitor.formats import CE_TYPE_REQUEST, CE_TYPE_RESPONSE, FieldMapping

FIXTURES = Path(__file__).parent / "fixtures"

Headers = list[tuple[str, bytes]]


def kafka_record(name: str) -> tuple[bytes, Headers]:
    """The value and headers of the KServe fixture record ``name``."""
    value = (FIXTURES / f"{name}.value.json").read_bytes()
    pairs = orjson.loads((FIXTURES / f"{name}.headers.json").read_bytes())
    return value, [(key, text.encode()) for key, text in pairs]


def capture_record(name: str) -> bytes:
    """The single SageMaker capture record of ``<name>.jsonl``."""
    (line,) = (FIXTURES / f"{name}.jsonl").read_bytes().splitlines()
    return line


def fixture_json(name: str) -> Any:
    """A fixture file parsed as JSON."""
    return orjson.loads((FIXTURES / name).read_bytes())


def binary_headers(
    ce_id: str = "req-1",
    kind: str = "request",
    time: str | None = "2024-05-01T12:00:00Z",
    **extensions: str,
) -> Headers:
    """Binary-mode ``ce_*`` headers of a KServe log event of ``kind``."""
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", b"http://localhost:9081/"),
        ("ce_type", (CE_TYPE_REQUEST if kind == "request" else CE_TYPE_RESPONSE).encode()),
        ("content-type", b"application/json"),
    ]
    if time is not None:
        headers.append(("ce_time", time.encode()))
    headers.extend((f"ce_{name}", value.encode()) for name, value in extensions.items())
    return headers


def v2_request(*inputs: dict[str, Any], **members: Any) -> bytes:
    """A v2 inference request body with ``inputs``."""
    return orjson.dumps({**members, "inputs": list(inputs)})


def v2_response(*outputs: dict[str, Any], **members: Any) -> bytes:
    """A v2 inference response body with ``outputs``."""
    return orjson.dumps({"model_name": "m", **members, "outputs": list(outputs)})


def tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    """A v2 tensor object."""
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


CUSTOM_MAPPING = FieldMapping(
    event_id="$.meta.id",
    input="$.payload.features",
    output="$.result.outputs[?(@.name == 'probs')].data",
    ts="$.meta.time",
    source="$.meta.user",
    request_id="$.meta.request",
    model_version="$.model.version",
)
"""Every field of ``mapped_custom.json``, mapped."""
