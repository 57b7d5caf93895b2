"""Hypothesis profiles of the fuzz suite, and the demo detector its pipeline test scores with.

``FUZZ_PROFILE`` picks the profile: ``ci`` (the default: derandomized, so CI runs the same
examples every time, and sized so the suite takes well under a minute on two cores) or
``long`` (random, 20 times the examples, for a local hunt: ``FUZZ_PROFILE=long pytest
tests/fuzz``). Neither keeps an example database, so a run writes nothing to the checkout;
a failure prints the ``@reproduce_failure`` line that replays it.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

from tests.monitor.conftest import demo_model, detector_path

__all__ = ["demo_model", "detector_path"]

_COMMON = settings(
    database=None,
    # Each message must decode within this time (hypothesis fails a slower example).
    # Generous for a loaded two-core CI runner: a message is typically decoded in
    # milliseconds, and the decoders' own limits keep the slowest well under this.
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", _COMMON, derandomize=True)
settings.register_profile("long", _COMMON, max_examples=20_000)
settings.load_profile(os.environ.get("FUZZ_PROFILE", "ci"))
