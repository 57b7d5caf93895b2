"""The incident HTTP API: the incident history as JSON, read only (aiohttp).

``GET /api/incidents``
    Incidents, the most recently active first: ``{items, total, limit, offset}``. Query
    parameters: ``model``, ``kind``, ``status``, ``source``, ``since``, ``until`` (ISO 8601
    or a span before now: ``30m``, ``2h``, ``7d``), ``limit`` (1–500, default 50), ``offset``.
``GET /api/incidents/{id}``
    One incident with its status changes, decisions, sources, detections per minute and,
    for a query attack, what linked the source's queries (``query_attacks``).
``GET /api/incidents/{id}/detections``
    Its detections, oldest first: ``{items, total, limit, offset}``; a query attack's
    with the events it matched (``related_event_ids``) and when its decision lapses.
``GET /healthz``
    200 ``{"status": "ok"}`` when the database answers, else 503; never needs a token.

Errors are JSON too: ``{"error": "..."}`` with 400 (bad parameter), 401 (missing or wrong
token), 404 (no such incident or path), 503 (database unreachable). ``advmon api`` serves
without a token only on a loopback address (:func:`is_loopback`). The database calls
are synchronous SQLAlchemy, so they run in worker threads and never block the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import MultiMapping
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from monitor.errors import IncidentNotFoundError
from monitor.incidents.storage.incidents import IncidentFilter, IncidentStore
from monitor.incidents.storage.models import IncidentKind, IncidentStatus
from monitor.incidents.views import (
    detection_dict,
    incident_dict,
    parse_time,
)

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "STORE", "create_api", "is_loopback"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
STORE = web.AppKey("store", IncidentStore)

_log = logging.getLogger(__name__)
_FILTERS = ("model", "kind", "status", "source", "since", "until")
_PAGE = ("limit", "offset")
_INTEGER = re.compile(r"-?[0-9]{1,18}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_api(store: IncidentStore, token: str | None) -> web.Application:
    """The API application over ``store``; with a ``token``, /api requests must carry it.

    aiohttp's access log format does not include request headers, so the token never
    reaches a log.
    """
    app = web.Application(middlewares=[_json_errors, _bearer_auth(token)])
    app[STORE] = store
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/incidents", _list_incidents)
    app.router.add_get(r"/api/incidents/{id:\d+}", _show_incident)
    app.router.add_get(r"/api/incidents/{id:\d+}/detections", _list_detections)
    return app


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only: ``localhost``, 127.0.0.0/8
    or ``::1``. Any other name counts as beyond loopback, whatever it resolves to now.

    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "", "::")]
    [True, True, True, False, False, False]
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower() == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# --- middlewares --------------------------------------------------------------------


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error with a JSON body, including aiohttp's own 404 and 405."""
    try:
        return await handler(request)
    except _ApiError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {name: value for name, value in exc.headers.items() if name == "Allow"}
        return web.json_response({"error": exc.reason.lower()}, status=exc.status, headers=headers)
    except OperationalError as exc:
        reason = next(iter(str(exc.orig).splitlines()), type(exc.orig).__name__)
        _log.warning("incident API: database unreachable: %s", reason)
        return web.json_response({"error": "the incident database is unreachable"}, status=503)
    except Exception:
        _log.exception("incident API: %s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error; see the server's log"}, status=500)


def _bearer_auth(token: str | None) -> Middleware:
    expected = token.encode() if token else None

    @web.middleware
    async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Everything but the health check needs the token, unknown paths included, so
        # that nobody can probe the API without it.
        if expected is None or request.path == "/healthz":
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        # aiohttp keeps bytes that are not UTF-8 as surrogates: encode them back as they came.
        given = credentials.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="advmon"'},
            )
        return await handler(request)

    return bearer_auth


# --- parameters ---------------------------------------------------------------------


def _query(query: MultiMapping[str], allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each given at most once and all of them known."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        known = f"known: {', '.join(allowed)}" if allowed else "it takes none"
        raise _ApiError(400, f"unknown query parameter(s) {', '.join(unknown)}; {known}")
    values: dict[str, str] = {}
    for name in query:
        given = query.getall(name)
        if len(given) > 1:
            raise _ApiError(400, f"{name} is given {len(given)} times; give it at most once")
        values[name] = given[0]
    return values


def _integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text):
        raise _ApiError(400, f"{name} must be an integer, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise _ApiError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def _page(params: Mapping[str, str]) -> tuple[int, int]:
    limit = _integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _integer(params, "offset", 0, 0, 2**31 - 1)
    return limit, offset


def _filters(params: Mapping[str, str], now: datetime) -> IncidentFilter:
    kind = params.get("kind")
    if kind is not None and kind not in {k.value for k in IncidentKind}:
        choices = ", ".join(k.value for k in IncidentKind)
        raise _ApiError(400, f"kind must be one of {choices}, got {kind!r}")
    status = params.get("status")
    if status is not None and status not in {s.value for s in IncidentStatus}:
        choices = ", ".join(s.value for s in IncidentStatus)
        raise _ApiError(400, f"status must be one of {choices}, got {status!r}")
    times: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        text = params.get(name)
        try:
            times[name] = parse_time(text, now) if text is not None else None
        except ValueError as exc:
            raise _ApiError(400, f"{name}: {exc}") from None
    since, until = times["since"], times["until"]
    if since is not None and until is not None and since > until:
        raise _ApiError(
            400,
            f"since ({since.isoformat(timespec='seconds')}) is after "
            f"until ({until.isoformat(timespec='seconds')})",
        )
    return IncidentFilter(
        model_id=params.get("model"),
        kind=IncidentKind(kind) if kind is not None else None,
        status=IncidentStatus(status) if status is not None else None,
        source=params.get("source"),
        since=since,
        until=until,
    )


# --- handlers -----------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        await asyncio.to_thread(_ping, store)
    except OperationalError:
        return web.json_response(
            {"status": "unavailable", "error": "the incident database is unreachable"},
            status=503,
        )
    return web.json_response({"status": "ok"})


def _ping(store: IncidentStore) -> None:
    with store.engine.connect() as connection:
        connection.execute(select(1))


async def _list_incidents(request: web.Request) -> web.Response:
    params = _query(request.query, _FILTERS + _PAGE)
    filters = _filters(params, datetime.now(UTC))
    limit, offset = _page(params)
    page = await asyncio.to_thread(_incidents_page, request.app[STORE], filters, limit, offset)
    return web.json_response({**page, "limit": limit, "offset": offset})


def _incidents_page(
    store: IncidentStore, filters: IncidentFilter, limit: int, offset: int
) -> dict[str, Any]:
    rows, total = store.find(filters, limit=limit, offset=offset)
    return {"items": [incident_dict(incident) for incident in rows], "total": total}


async def _show_incident(request: web.Request) -> web.Response:
    _query(request.query, ())
    incident_id = int(request.match_info["id"])
    try:
        data = await asyncio.to_thread(_incident_detail, request.app[STORE], incident_id)
    except IncidentNotFoundError:
        raise _ApiError(404, f"no incident {incident_id}") from None
    return web.json_response(data)


def _incident_detail(store: IncidentStore, incident_id: int) -> dict[str, Any]:
    return incident_dict(store.get(incident_id), detail=True)


async def _list_detections(request: web.Request) -> web.Response:
    params = _query(request.query, _PAGE)
    limit, offset = _page(params)
    incident_id = int(request.match_info["id"])
    try:
        page = await asyncio.to_thread(
            _detections_page, request.app[STORE], incident_id, limit, offset
        )
    except IncidentNotFoundError:
        raise _ApiError(404, f"no incident {incident_id}") from None
    return web.json_response({**page, "limit": limit, "offset": offset})


def _detections_page(
    store: IncidentStore, incident_id: int, limit: int, offset: int
) -> dict[str, Any]:
    """One page of an incident's detections, oldest first, as JSON-ready data."""
    rows, total = store.detections(incident_id, limit=limit, offset=offset)
    return {"items": [detection_dict(row) for row in rows], "total": total}
