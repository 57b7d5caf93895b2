"""The ``advmon`` command line: the group here, one module per command or command group.

::

    advmon                       this module: settings from the environment, logging
    ├── calibrate, score         offline.py    detector files and scores from event files
    ├── evaluate                 evaluate.py   the robustness report and release gate
    ├── worker                   worker.py     the stream processor (monitor.worker.run)
    ├── inspect                  inspect.py    how a topic's messages decode
    ├── demo                     demo.py       the embedded demo, end to end
    ├── db upgrade, current      db.py         the incident database's schema
    ├── incidents list, show,    incidents.py  the incident history by hand
    │   ack, resolve, export
    └── api                      api.py        the incident history over HTTP

What the commands share is private: ``_console`` (where they write; a user's mistake as
one line and an exit status), ``_database`` (the incident database for ``db``,
``incidents`` and ``api``), ``_incident_tables`` (incidents drawn as Rich tables).
"""

from __future__ import annotations

import logging
import warnings

import click
from pydantic import ValidationError

from monitor.cli import api, db, demo, evaluate, incidents, inspect, offline, worker
from monitor.errors import UnknownSettingError
from monitor.settings import Settings

__all__ = ["main"]


def _settings() -> Settings:
    try:
        return Settings.from_environment()
    except UnknownSettingError as exc:
        raise click.ClickException(
            f"unknown setting {exc}: check the spelling (nested settings use a double "
            "underscore, e.g. ADVMON_KAFKA__BOOTSTRAP)"
        ) from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = "ADVMON_" + "__".join(str(part) for part in error["loc"]).upper()
            if error["type"] == "extra_forbidden":
                problems.append(f"{variable} is not a known setting")
            else:
                problems.append(f"{variable}={error['input']!r}: {error['msg']}")
        raise click.ClickException("invalid setting " + "; ".join(problems)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="advmon", prog_name="advmon")
@click.pass_context
def main(ctx: click.Context) -> None:
    """advmon: catch adversarial inputs and drift in ML inference traffic."""
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # IBM ART warns on import when PyTorch is absent; advmon says itself which attacks
    # that leaves out (the advmon[attacks] extra).
    warnings.filterwarnings("ignore", message="PyTorch not found", category=UserWarning)
    ctx.obj = settings


main.add_command(offline.calibrate)
main.add_command(offline.score)
main.add_command(evaluate.evaluate)
main.add_command(worker.worker)
main.add_command(inspect.inspect_topic)
main.add_command(demo.demo)
main.add_command(db.db)
main.add_command(incidents.incidents)
main.add_command(api.api)
