"""``advmon demo``: the embedded demo end to end, offline then streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from monitor.cli._console import console, user_errors
from monitor.cli.offline import device_option
from monitor.settings import Settings

__all__ = ["demo"]


@click.command()
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for the demo model, events, detector and scores.",
)
@click.option("--offline", is_flag=True, help="Stop after the offline calibrate and score.")
@device_option
@click.pass_obj
def demo(settings: Settings, out_dir: Path, device: Any, offline: bool) -> None:
    """Run the embedded demo end to end: train a digit classifier, calibrate, score attacks
    offline, then stream live traffic through a local broker and an advmon worker."""
    from monitor.demo.run import run_demo
    from monitor.demo.streaming import run_streaming_demo
    from monitor.kafka.local_broker import noida_db_binary

    with user_errors():
        if not offline:
            # Before minutes of offline work: the streaming part needs the demo extra.
            noida_db_binary()
        artifacts = run_demo(out_dir, device=device or settings.scoring.device, console=console)
        if not offline:
            run_streaming_demo(out_dir, artifacts, console)
