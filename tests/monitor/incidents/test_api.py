"""The incident HTTP API against PostgreSQL, through aiohttp's test server and client.

Each test gets its own PostgreSQL schema in the session's database (``search_path``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, create_engine

from monitor.incidents.api import create_api, is_loopback
from monitor.incidents.storage.incidents import GroupingPolicy, IncidentStore
from monitor.incidents.storage.models import Incident, IncidentStatus
from monitor.incidents.storage.schema import upgrade
from monitor.incidents.views import (
    detection_dict,
    incident_dict,
)
from tests.monitor.database_support import detection, fresh_schema
from tests.monitor.incidents.query_attacks import query_attack

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TOKEN = "s3cret-token-for-tests"

Client = TestClient[Any, Any]


@contextmanager
def _fresh_schema(pg_url: str) -> Iterator[tuple[Engine, str]]:
    """A fresh, migrated schema of the session's database, dropped after: an engine on it,
    and its name."""
    with fresh_schema(pg_url) as name:
        engine = create_engine(pg_url, connect_args={"options": f"-csearch_path={name}"})
        try:
            upgrade(engine)
            yield engine, name
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def store(pg_url: str) -> Iterator[IncidentStore]:
    """The incidents of :func:`_seed`, shared by this module's tests: the API only reads."""
    with _fresh_schema(pg_url) as (engine, _):
        store = IncidentStore(engine, GroupingPolicy(gap=timedelta(minutes=10)))
        _seed(store)
        yield store


@pytest.fixture
async def client(store: IncidentStore) -> AsyncIterator[Client]:
    """A client of the API over ``store``, without a token."""
    async with TestClient(TestServer(create_api(store, None))) as client:
        yield client


@pytest.fixture
async def guarded(store: IncidentStore) -> AsyncIterator[Client]:
    """A client of the API over ``store``, with the token ``TOKEN`` required."""
    async with TestClient(TestServer(create_api(store, TOKEN))) as client:
        yield client


def _seed(store: IncidentStore) -> None:
    """Adversarial on digits (5 detections, id 1), drift on other (acknowledged, id 2),
    quarantine of key-z on digits (id 3)."""
    store.record(
        [detection(f"a{i}", T0 + timedelta(seconds=20 * i), score=0.5 + i / 10) for i in range(5)]
    )
    store.record([detection("d1", T0 + timedelta(hours=1), kind="drift", model_id="other")])
    store.record(
        [
            detection(
                "q1",
                T0 + timedelta(hours=2),
                kind="quarantine",
                source="key-z",
                score=12,
                threshold=10,
                expires_at=T0 + timedelta(hours=3),
            )
        ]
    )
    store.set_status(2, IncidentStatus.ACKNOWLEDGED, "alice", "looking", now=T0)


async def _json(client: Client, path: str, status: int = 200, **headers: str) -> Any:
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


# --- incidents ----------------------------------------------------------------------


async def test_list_incidents(client: Client, store: IncidentStore) -> None:
    rows, _ = store.find()
    assert await _json(client, "/api/incidents") == {
        "items": [incident_dict(incident) for incident in rows],
        "total": 3,
        "limit": 50,
        "offset": 0,
    }
    assert [row.id for row in rows] == [3, 2, 1]


@pytest.mark.parametrize(
    ("query", "ids", "total"),
    [
        ("model=digits", [3, 1], 2),
        ("kind=drift", [2], 1),
        ("status=acknowledged", [2], 1),
        ("source=key-z", [3], 1),
        ("since=2026-05-01T13:00:00Z", [3, 2], 2),
        ("since=2026-05-01T15:00:00%2B02:00", [3, 2], 2),
        ("until=2026-05-01T13:30:00", [2, 1], 2),
        ("since=2h", [], 0),
        ("model=digits&kind=adversarial&status=open", [1], 1),
        ("limit=1", [3], 3),
        ("limit=2&offset=1", [2, 1], 3),
        ("offset=3", [], 3),
    ],
)
async def test_list_filters_and_pages(
    client: Client, query: str, ids: list[int], total: int
) -> None:
    page = await _json(client, f"/api/incidents?{query}")
    assert [item["id"] for item in page["items"]] == ids
    assert page["total"] == total


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (
            "kind=evil",
            "kind must be one of adversarial, drift, quarantine, query_attack, got 'evil'",
        ),
        ("status=closed", "status must be one of open, acknowledged, resolved, got 'closed'"),
        (
            "since=yesterday",
            "since: 'yesterday' is neither an ISO 8601 time (2026-05-01T12:00:00Z) nor a span "
            "before now (45s, 30m, 2h, 7d, 2w)",
        ),
        (
            "since=2026-05-02&until=2026-05-01",
            "since (2026-05-02T00:00:00+00:00) is after until (2026-05-01T00:00:00+00:00)",
        ),
        ("limit=501", "limit must be between 1 and 500, got 501"),
        ("limit=0", "limit must be between 1 and 500, got 0"),
        ("limit=ten", "limit must be an integer, got 'ten'"),
        ("limit=1_0", "limit must be an integer, got '1_0'"),
        ("offset=-1", "offset must be between 0 and 2147483647, got -1"),
        (
            "modle=digits",
            "unknown query parameter(s) modle; known: model, kind, status, source, since, "
            "until, limit, offset",
        ),
        ("kind=drift&kind=adversarial", "kind is given 2 times; give it at most once"),
    ],
)
async def test_bad_parameters_are_400(client: Client, query: str, error: str) -> None:
    assert await _json(client, f"/api/incidents?{query}", 400) == {"error": error}


async def test_one_incident_takes_no_query_parameters(client: Client) -> None:
    assert await _json(client, "/api/incidents/1?detail=1", 400) == {
        "error": "unknown query parameter(s) detail; it takes none"
    }


async def test_an_unexpected_error_is_a_json_500(
    client: Client, store: IncidentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "find", broken)
    assert await _json(client, "/api/incidents", 500) == {
        "error": "internal error; see the server's log"
    }


async def test_the_largest_page_is_500(client: Client) -> None:
    page = await _json(client, "/api/incidents?limit=500")
    assert page["limit"] == 500


async def test_one_incident_with_its_history(client: Client, store: IncidentStore) -> None:
    data = await _json(client, "/api/incidents/1")
    assert data == incident_dict(store.get(1), detail=True)
    assert [(c["status"], c["by"]) for c in data["status_changes"]] == [("open", "advmon")]
    assert [(d["action"], d["source"]) for d in data["decisions"]] == [("quarantine", "key-z")]
    assert data["timeline"] == [
        {"start": "2026-05-01T12:00:00+00:00", "count": 3, "peak_score": 0.7},
        {"start": "2026-05-01T12:01:00+00:00", "count": 2, "peak_score": 0.9},
    ]
    acknowledged = await _json(client, "/api/incidents/2")
    assert [(c["status"], c["by"], c["note"]) for c in acknowledged["status_changes"]] == [
        ("open", "advmon", "opened by drift detection of event d1"),
        ("acknowledged", "alice", "looking"),
    ]


async def test_a_query_attack_incident_explains_itself(pg_url: str) -> None:
    with _fresh_schema(pg_url) as (engine, _):
        store = IncidentStore(engine, GroupingPolicy(gap=timedelta(minutes=10)))
        store.record([detection("a1", T0)])
        hostile = ["[/]", "<script>alert(1)</script>", "q-11"]
        (attack,) = store.record(
            [
                query_attack("q-17", T0 + timedelta(minutes=1), related=hostile),
                query_attack("q-40", T0 + timedelta(minutes=3), linked=14, enforced=False),
            ]
        ).opened
        async with TestClient(TestServer(create_api(store, None))) as client:
            page = await _json(client, "/api/incidents?kind=query_attack&source=key-z")
            assert [item["id"] for item in page["items"]] == [attack]
            assert (page["items"][0]["peak_score"], page["items"][0]["threshold"]) == (14, 8)

            data = await _json(client, f"/api/incidents/{attack}")
            assert data == incident_dict(store.get(attack), detail=True)
            assert data["source"] == "key-z"
            assert data["query_attacks"] == [
                {
                    "event_id": "q-17",
                    "source": "key-z",
                    "detected_at": "2026-05-01T12:01:00+00:00",
                    "linked_queries": 12,
                    "min_linked": 8,
                    "matched_directly": 5,
                    "held_queries": 40,
                    "first_linked_at": "2026-05-01T11:59:29+00:00",
                    "query_at": "2026-05-01T12:00:59+00:00",
                    "span_seconds": 90.0,
                    "related_event_ids": hostile,
                    "action": "quarantine",
                    "expires_at": "2026-05-01T13:01:00+00:00",
                },
                {
                    "event_id": "q-40",
                    "source": "key-z",
                    "detected_at": "2026-05-01T12:03:00+00:00",
                    "linked_queries": 14,
                    "min_linked": 8,
                    "matched_directly": 5,
                    "held_queries": 40,
                    "first_linked_at": "2026-05-01T12:01:29+00:00",
                    "query_at": "2026-05-01T12:02:59+00:00",
                    "span_seconds": 90.0,
                    "related_event_ids": ["q-16", "q-15", "q-11"],
                    "action": "flag",
                    "expires_at": "2026-05-01T13:03:00+00:00",
                },
            ]
            assert [(d["action"], d["reason"], d["linked_queries"]) for d in data["decisions"]] == [
                ("quarantine", "query_attack", 12),
                ("flag", "query_attack", 14),
            ]

            detections = await _json(client, f"/api/incidents/{attack}/detections")
            assert [
                (d["event_id"], d["related_event_ids"], d["expires_at"])
                for d in detections["items"]
            ] == [
                ("q-17", hostile, "2026-05-01T13:01:00+00:00"),
                ("q-40", ["q-16", "q-15", "q-11"], "2026-05-01T13:03:00+00:00"),
            ]
            assert detections["items"][0]["details"]["matches"] == 5

            # The adversarial incident of the model records the decisions on key-z too.
            (adversarial,) = [i for i in store.find()[0] if i.kind.value == "adversarial"]
            shown = await _json(client, f"/api/incidents/{adversarial.id}")
            assert [d["source"] for d in shown["decisions"]] == ["key-z", "key-z"]
            assert shown["query_attacks"] == []


async def test_detections_of_an_incident_page_oldest_first(
    client: Client, store: IncidentStore
) -> None:
    everything = [detection_dict(row) for row in store.get(1).detections]
    assert [d["event_id"] for d in everything] == ["a0", "a1", "a2", "a3", "a4"]
    assert await _json(client, "/api/incidents/1/detections") == {
        "items": everything,
        "total": 5,
        "limit": 50,
        "offset": 0,
    }
    page = await _json(client, "/api/incidents/1/detections?limit=2&offset=1")
    assert page == {"items": everything[1:3], "total": 5, "limit": 2, "offset": 1}
    assert await _json(client, "/api/incidents/1/detections?limit=501", 400) == {
        "error": "limit must be between 1 and 500, got 501"
    }


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/api/incidents/4242", "no incident 4242"),
        ("/api/incidents/4242/detections", "no incident 4242"),
        ("/api/incidents/abc", "not found"),
        ("/api/nothing", "not found"),
    ],
)
async def test_unknown_things_are_404(client: Client, path: str, error: str) -> None:
    assert await _json(client, path, 404) == {"error": error}


async def test_only_get_is_allowed(client: Client) -> None:
    response = await client.post("/api/incidents/1")
    assert response.status == 405
    assert await response.json() == {"error": "method not allowed"}
    assert response.headers["Allow"] == "GET,HEAD"


async def test_healthz(client: Client) -> None:
    assert await _json(client, "/healthz") == {"status": "ok"}


# --- the token ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer é"],
)
@pytest.mark.parametrize("path", ["/api/incidents", "/api/incidents/1", "/api/unknown"])
async def test_without_the_right_token_api_requests_are_401(
    guarded: Client, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await guarded.get(path, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="advmon"'
    assert await response.json() == {
        "error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"
    }


async def test_with_the_token_api_requests_pass(guarded: Client) -> None:
    page = await _json(guarded, "/api/incidents", Authorization=f"Bearer {TOKEN}")
    assert page["total"] == 3
    detail = await _json(guarded, "/api/incidents/1", Authorization=f"bearer {TOKEN}")
    assert detail["id"] == 1


async def test_a_token_that_is_not_utf8_is_401(guarded: Client) -> None:
    reader, writer = await asyncio.open_connection(guarded.host, guarded.port)
    writer.write(
        b"GET /api/incidents HTTP/1.1\r\nHost: advmon\r\nAuthorization: Bearer \xe9\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n")


async def test_healthz_needs_no_token(guarded: Client) -> None:
    assert await _json(guarded, "/healthz") == {"status": "ok"}


async def test_the_token_never_reaches_the_logs(
    guarded: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await _json(guarded, "/api/incidents", Authorization=f"Bearer {TOKEN}")
    await _json(guarded, "/api/incidents?kind=evil", 400, Authorization=f"Bearer {TOKEN}")
    await _json(guarded, "/api/incidents", 401, Authorization=f"Bearer {TOKEN}-wrong")
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert len(access) == 3
    assert "GET /api/incidents" in access[0].getMessage()
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    assert TOKEN not in caplog.text


# --- the database -------------------------------------------------------------------


async def test_the_event_loop_never_waits_for_the_database(
    store: IncidentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_find = store.find

    def slow_find(*args: Any, **kwargs: Any) -> tuple[list[Incident], int]:
        # Blocks its thread until the test lets it go: on the event loop it would hang it.
        assert release.wait(timeout=10)
        return real_find(*args, **kwargs)

    monkeypatch.setattr(store, "find", slow_find)
    async with TestClient(TestServer(create_api(store, None))) as client:
        pending = asyncio.ensure_future(client.get("/api/incidents"))
        await asyncio.sleep(0.1)
        assert not pending.done()
        # Meanwhile the server answers other requests.
        health = await asyncio.wait_for(client.get("/healthz"), timeout=5)
        assert health.status == 200
        detail = await asyncio.wait_for(client.get("/api/incidents/1"), timeout=5)
        assert detail.status == 200
        release.set()
        response = await asyncio.wait_for(pending, timeout=5)
        assert response.status == 200
        assert (await response.json())["total"] == 3


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_database_is_503() -> None:
    url = f"postgresql+psycopg://advmon:hunter2@127.0.0.1:{_closed_port()}/advmon"
    engine = create_engine(url)
    try:
        async with TestClient(TestServer(create_api(IncidentStore(engine), None))) as client:
            assert await _json(client, "/api/incidents", 503) == {
                "error": "the incident database is unreachable"
            }
            assert await _json(client, "/api/incidents/1", 503) == {
                "error": "the incident database is unreachable"
            }
            assert await _json(client, "/healthz", 503) == {
                "status": "unavailable",
                "error": "the incident database is unreachable",
            }
    finally:
        engine.dispose()


# --- ``advmon api`` -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("::ffff:10.0.0.5", False),
        ("localhost.example.invalid", False),
        ("advmon-api", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_advmon_api_serves_until_interrupted(pg_url: str) -> None:
    with _fresh_schema(pg_url) as (engine, schema):
        IncidentStore(engine).record([detection("x1", T0)])
        _serve_and_query(pg_url, schema)


def _serve_and_query(pg_url: str, schema: str) -> None:
    port = _closed_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("ADVMON_")},
        "ADVMON_DATABASE__URL": pg_url,
        "ADVMON_API__TOKEN": TOKEN,
        "ADVMON_LOG_LEVEL": "INFO",
        "PGOPTIONS": f"-csearch_path={schema}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "monitor", "api", "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with direct.open(f"{base}/healthz", timeout=2) as response:
                    assert response.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "advmon api did not start in 30 s"
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            direct.open(f"{base}/api/incidents", timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(
            f"{base}/api/incidents?model=digits", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with direct.open(request, timeout=5) as response:
            assert json.loads(response.read())["total"] == 1
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=15)
    assert server.returncode == 0, stderr
    assert (
        f"serving the incident API on http://127.0.0.1:{port}/api/incidents "
        "(bearer token required); Ctrl-C stops it\n"
    ) in stderr
    # The access log is on (INFO) and shows the requests, never the token.
    assert '"GET /api/incidents?model=digits HTTP/1.1" 200' in stderr
    assert TOKEN not in stderr
