"""The worker's agents, top to bottom in the order an event travels.

1. ``score``: batches of inference messages → decode, validate (bad ones to the
   dead-letter topic) → fused squeeze graph → a decision per event on the decisions
   topic; flagged events also go to the detections topic and, re-keyed by source, to the
   internal source-flags topic; each batch's drift signals go, keyed by model, to the
   internal signals topic.
   OIP v2 records go, re-keyed by CloudEvent id, to the internal halves topic.
   ``join`` pairs each request with its response there (table ``oip-pending``) and
   publishes native events on the internal joined topic, which ``score-joined`` scores
   like any inference topic. The inference topics themselves are the hot path: they are
   read by :mod:`monitor.worker.intake`, an aiokafka consumer inside the app, in record
   batches and with commits of its own; ``score-joined`` is a Faust agent.
2. ``quarantine``: source flags → windowed count per source → one source-scoped
   decision when a source crosses its limit (and a quarantine detection).
   ``queries``: query fingerprints, keyed by model and source → each source's query
   history (table ``query-histories``) → a query-attack detection and a source-scoped
   decision when its queries link past the threshold.
3. ``drift``: signals, keyed by model → each model's River detectors (checkpointed in
   a table) → drift detections.
4. ``incidents``: detections → incidents in the database (retrying while it is down;
   a detection the database refuses goes to the dead-letter topic, the rest are stored);
   a background task keeps Alertmanager's alerts in step with the incidents.

Each agent returns to Faust only after its outputs are acknowledged by the broker, and
Faust commits an offset only after the agent has returned for that message: processing
is at-least-once. An unexpected error ends the process without a commit, and the
messages an agent is working on are kept out of any commit until it has finished them
(:meth:`~monitor.worker.app.AdvmonApp.finishing`): a stop mid-batch commits none of
them, and the next worker reads them again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faust

from monitor.worker.app import AdvmonApp
from monitor.worker.intake import exit_without_commit
from monitor.worker.records import InputMessage

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _input_message(event: faust.EventT[Any]) -> InputMessage:
    message = event.message
    headers = message.headers or ()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return InputMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value or b"",
        timestamp=message.timestamp,
        headers=tuple((str(name), bytes(value or b"")) for name, value in pairs),
    )


def register(wiring: AdvmonApp) -> None:
    """Attach the agents, the timer and the web pages to ``wiring.app``."""
    app = wiring.app
    batching = wiring.config.batching

    async def score_batches(stream: Any) -> None:
        await wiring.scoring.wait_ready()
        async for events in stream.take_events(batching.max_events, batching.max_wait_ms / 1000):
            with wiring.finishing(events):
                try:
                    await wiring.scoring.process([_input_message(event) for event in events])
                except Exception:
                    exit_without_commit("scoring a batch")

    # The inference topics are read by wiring.intake (monitor.worker.intake), not Faust.
    join = wiring.join
    if join is not None:
        app.agent(wiring.joined, name="advmon.score-joined")(score_batches)

        @app.agent(wiring.halves, name="advmon.join")
        async def join_halves(stream: Any) -> None:
            async for value in stream:
                with wiring.finishing([stream.current_event]):
                    try:
                        await wiring.know_changelogs()
                        await join.observe(value)
                    except Exception:
                        exit_without_commit("joining an OIP v2 request and response")

        @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
        async def expire_joins() -> None:
            try:
                await wiring.know_changelogs()
                await join.expire()
            except Exception:
                exit_without_commit("expiring OIP v2 halves")

    @app.agent(wiring.source_flags, name="advmon.quarantine")
    async def quarantine(stream: Any) -> None:
        async for value in stream:
            with wiring.finishing([stream.current_event]):
                try:
                    await wiring.quarantine.observe(value)
                except Exception:
                    exit_without_commit("counting a source flag")

    if wiring.queries.plans:

        @app.agent(wiring.query_prints, name="advmon.queries")
        async def queries(stream: Any) -> None:
            async for events in stream.take_events(256, 0.5):
                with wiring.finishing(events):
                    try:
                        await wiring.know_changelogs()
                        await wiring.queries.process([e.message.value or b"" for e in events])
                    except Exception:
                        exit_without_commit("matching query fingerprints")

        @app.timer(interval=60.0)  # type: ignore[untyped-decorator]
        async def expire_query_histories() -> None:
            try:
                await wiring.know_changelogs()
                wiring.queries.expire()
            except Exception:
                exit_without_commit("expiring query histories")

    if wiring.drift.plans:

        @app.agent(wiring.signals, name="advmon.drift")
        async def drift(stream: Any) -> None:
            async for events in stream.take_events(256, 1.0):
                with wiring.finishing(events):
                    try:
                        await wiring.know_changelogs()
                        await wiring.drift.process([e.message.value or b"" for e in events])
                    except Exception:
                        exit_without_commit("updating drift detectors")

    incident_stage, alerting = wiring.incidents, wiring.alerting
    if incident_stage is not None and alerting is not None:

        @app.agent(wiring.outputs[wiring.config.topics.detections], name="advmon.incidents")
        async def incidents(stream: Any) -> None:
            async for events in stream.take_events(256, 1.0):
                with wiring.finishing(events):
                    try:
                        await incident_stage.process([_input_message(e) for e in events])
                    except Exception:
                        exit_without_commit("storing detections")

        @app.task  # type: ignore[untyped-decorator]
        async def sync_alerts() -> None:
            try:
                await alerting.run()
            finally:
                await alerting.close()

    @app.task  # type: ignore[untyped-decorator]
    async def quiet_library_debug_logs() -> None:
        # Faust's progress spinner sets the root logger to DEBUG whatever the level shown,
        # so every debug call of aiokafka, Faust and mode would build a record nobody sees.
        # The spinner's own handler takes everything; the level shown is the others'.
        root = logging.getLogger()
        shown = min(
            (h.level for h in root.handlers if type(h).__name__ != "SpinnerHandler"),
            default=logging.WARNING,
        )
        for name in ("aiokafka", "faust", "mode"):
            library = logging.getLogger(name)
            library.setLevel(max(shown, library.level))

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def refresh_gauges() -> None:
        wiring.metrics.quarantined_sources.set(wiring.quarantine.sources_in_force())
        wiring.drift.report_held()
