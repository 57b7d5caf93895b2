"""The real messages the fuzz suite mutates: a demo event of each input kind, and the
KServe, SageMaker and mapped fixtures of ``tests/monitor/formats/fixtures``, parsed."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from monitor.demo.run import demo_event
from tests.monitor.formats.kafka_records import FIXTURES, capture_record

__all__ = ["INPUT_SHAPE", "KSERVE", "MAPPED", "NATIVE", "SAGEMAKER"]

INPUT_SHAPE = (1, 8, 8)
"""The demo detector's input: events are checked against it after decoding."""


def _native_events() -> list[Any]:
    image = np.random.default_rng(0).random(INPUT_SHAPE, dtype=np.float32)
    return [
        orjson.loads(demo_event("e1", image, as_tensor=False, source="s")),
        orjson.loads(demo_event("e2", image, as_tensor=True, source="s")),
    ]


NATIVE = _native_events()
"""A demo event with its input as a nested list, and one with a tensor payload, parsed."""


def _kserve(name: str) -> tuple[Any, list[tuple[str, bytes]]]:
    value = orjson.loads((FIXTURES / f"{name}.value.json").read_bytes())
    headers = orjson.loads((FIXTURES / f"{name}.headers.json").read_bytes())
    return value, [(key, text.encode()) for key, text in headers]


KSERVE = [
    _kserve(path.name.removesuffix(".value.json"))
    for path in sorted(FIXTURES.glob("kserve_*.value.json"))
]
"""Each KServe fixture record: its body parsed, and its headers."""

SAGEMAKER = [orjson.loads(capture_record(p.stem)) for p in sorted(FIXTURES.glob("sagemaker_*"))]
"""Each SageMaker fixture record, parsed."""

MAPPED = orjson.loads((FIXTURES / "mapped_custom.json").read_bytes())
"""The mapped fixture message, parsed."""
