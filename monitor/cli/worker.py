"""``advmon worker``: run the stream processor (the start-up is :mod:`monitor.worker.run`)."""

from __future__ import annotations

from pathlib import Path

import click

from monitor.cli._console import file_option, user_errors
from monitor.settings import Settings

__all__ = ["worker"]


@click.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        # Leave -h to Faust's worker (--web-host).
        "help_option_names": ["--help"],
    },
    epilog="Any other option goes to Faust's worker command, e.g. -l info, --web-port 6066, "
    "--web-bind 0.0.0.0 (see `faust worker --help`; the default address is "
    "ADVMON_WORKER__WEB_BIND, 127.0.0.1).",
)
@file_option(
    "--config",
    "config_path",
    "Worker config (YAML): the monitored models, their topics and policy. [default: ADVMON_CONFIG]",
)
@click.pass_context
def worker(ctx: click.Context, config_path: Path | None) -> None:
    """Run the stream processor: score inference topics, publish decisions.

    Kafka is reached through ADVMON_KAFKA__BOOTSTRAP (and the other ADVMON_KAFKA__
    settings); scale out by starting more workers with the same ADVMON_WORKER__APP_ID.
    """
    # Faust and the stages load only when a worker starts: the other commands stay quick.
    from monitor.worker.run import run_worker

    settings: Settings = ctx.obj
    path = config_path or settings.config
    if path is None:
        raise click.UsageError("give the worker config with --config or ADVMON_CONFIG")
    with user_errors():
        run_worker(settings, path, ctx.args, prog=str(ctx.find_root().info_name))
