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

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

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
    wiring.app.main()
