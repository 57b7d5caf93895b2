"""``advmon api``: serve the incident history as JSON over HTTP (:mod:`monitor.incidents.api`)."""

from __future__ import annotations

import click

from monitor.cli._console import console
from monitor.cli._database import store_for
from monitor.settings import Settings

__all__ = ["api"]


@click.command("api")
@click.option("--host", default=None, help="Address to listen on.  [default: ADVMON_API__HOST]")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on.  [default: ADVMON_API__PORT]",
)
@click.pass_obj
def api(settings: Settings, host: str | None, port: int | None) -> None:
    """Serve the incident history as JSON over HTTP (read only).

    GET /api/incidents (filters as query parameters: model, kind, status, source, since,
    until, limit, offset), /api/incidents/ID, /api/incidents/ID/detections, /healthz.
    When ADVMON_API__TOKEN is set, /api requests need `Authorization: Bearer TOKEN`;
    without it the API listens only on a loopback address (127.0.0.1, ::1, localhost).
    """
    from aiohttp import web

    from monitor.incidents.api import create_api, is_loopback

    host = host or settings.api.host
    port = port or settings.api.port
    token = settings.api.token.get_secret_value() if settings.api.token else None
    if token is None and not is_loopback(host):
        # Anyone who reaches the address could read the incident history.
        raise click.ClickException(
            f"refusing to serve the incident API on {host}:{port} without a token: set "
            "ADVMON_API__TOKEN, or listen on 127.0.0.1"
        )
    with store_for(settings) as store:
        app = create_api(store, token)
        serving = (
            f"serving the incident API on http://{host}:{port}/api/incidents "
            f"({'bearer token required' if token else 'no token'}); Ctrl-C stops it"
        )
        try:
            # run_app "prints" once it listens: say so then, in our words.
            web.run_app(
                app,
                host=host,
                port=port,
                print=lambda _started: console.print(serving, markup=False),
            )
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
