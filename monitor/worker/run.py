"""Start the worker: check what a user can get wrong, then hand over to Faust.

:func:`run_worker` is ``advmon worker``. It checks, in this order, so that a mistake stops
the worker before it joins its consumer group:

1. the worker config, and every model's detector file (its model's hash included);
2. each model's drift signals against its model;
3. the scoring device (``cuda`` needs ONNX Runtime's CUDA execution provider);
4. the incident database, when one is configured: its URL and its schema revision. A
   database that does not answer is no reason to stay down: decisions do not need it, and
   detections wait in Kafka until it is back;
5. the Kafka broker.

Then it builds the app, registers the agents and runs Faust's own ``worker`` command.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import Histogram
from sqlalchemy.exc import OperationalError

from detectors.runtime import check_device
from monitor.config import load_config
from monitor.incidents.storage.engine import incident_store
from monitor.incidents.storage.incidents import IncidentStore
from monitor.incidents.storage.schema import ensure_current
from monitor.kafka.metadata import check_broker
from monitor.settings import Settings
from monitor.worker.agents import register
from monitor.worker.app import create_app
from monitor.worker.models import load_model_detectors
from monitor.worker.signals import drift_plans
from monitor.worker.web import register_pages

__all__ = ["run_worker"]

# The package's logger, not this module's: start-up warnings have always been logged as
# "monitor", and log filters may match the name.
logger = logging.getLogger("monitor")


def run_worker(
    settings: Settings,
    config_path: Path,
    worker_options: Sequence[str] = (),
    *,
    prog: str = "advmon",
) -> None:
    """Check the config, detectors, device, database and broker; then run the worker.

    ``worker_options`` go to Faust's ``worker`` command (``-l info``, ``--web-port 6066``),
    which runs as ``prog worker``. The web port listens on ``settings.worker.web_bind``
    (``ADVMON_WORKER__WEB_BIND``, loopback by default) unless ``--web-bind`` names another
    address: the command line is applied after the settings. (``--web-host`` is no bind
    address: it is the host name in the worker's canonical URL.) Raises
    :class:`~monitor.errors.ConfigError`, :class:`detectors.DetectorError`,
    :class:`~monitor.errors.DatabaseUrlError`,
    :class:`~monitor.errors.SchemaBehindError` or
    :class:`~monitor.errors.BrokerUnreachableError` before anything starts; once Faust
    runs, it ends with :class:`SystemExit`.
    """
    # 1. The config and the detector files.
    config = load_config(config_path)
    models = load_model_detectors(config)
    # 2. The drift signals.
    drift_plans(models)
    # 3. The scoring device.
    check_device(settings.scoring.device)
    # 4. The incident database.
    store: IncidentStore | None = None
    if settings.database.url is not None:
        try:
            store = incident_store(settings.database, settings.incidents)
            ensure_current(store.engine)
        except OperationalError as exc:
            logger.warning(
                "incident database unreachable at start (%s); detections wait in Kafka until "
                "it is back",
                exc.orig or exc,
            )
    # 5. The broker.
    check_broker(settings.kafka, sizes=True)
    wiring = create_app(settings, config, models, store)
    register(wiring)
    register_pages(wiring)
    # Faust's worker command reads its options from the command line.
    sys.argv = [prog, "worker", *worker_options]
    freeze_start_up_objects()
    time_full_collections(wiring.metrics.gc_full_collection_seconds)
    wiring.app.main()


def freeze_start_up_objects() -> None:
    """Leave what was imported and built before the worker runs out of every later
    garbage collection.

    The modules, classes and functions of the worker's libraries are some 200,000
    objects that live as long as the process. A full collection walks every tracked
    object, and under load one runs every few seconds: without this, each would stall
    the event loop, and every event in hand, for 100-200 ms on a 2-core machine
    (docs/benchmarks-stream.md).
    """
    gc.collect()
    gc.freeze()


def time_full_collections(histogram: Histogram) -> Callable[[], None]:
    """Observe the duration of every full garbage collection of this process in
    ``histogram``; returns the function that stops it. Younger generations, collected
    hundreds of times a second and in microseconds, are not timed."""
    started: list[float] = []

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            histogram.observe(time.perf_counter() - started.pop())

    gc.callbacks.append(on_collection)
    return lambda: gc.callbacks.remove(on_collection)
