"""Alerts for on-call: one Alertmanager alert per incident, through its v2 API.

Alertmanager does the routing (PagerDuty, Slack, Opsgenie …), grouping and silences; advmon
posts each unresolved incident as an alert and re-posts it while the incident is open, so
it does not expire, then posts it once more with ``endsAt`` when the incident resolves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from monitor.errors import AlertDeliveryError
from monitor.incidents.storage.models import Incident, IncidentKind, IncidentStatus
from monitor.incidents.views import decisions_taken, source_decision

__all__ = ["ALERT_NAMES", "DELIVERY_FAILURE_REASONS", "AlertmanagerClient", "incident_alert"]

logger = logging.getLogger(__name__)

#: Alert name and severity per incident kind.
ALERT_NAMES: dict[IncidentKind, tuple[str, str]] = {
    IncidentKind.ADVERSARIAL: ("AdvmonAdversarialInputs", "critical"),
    IncidentKind.QUARANTINE: ("AdvmonSourceQuarantined", "warning"),
    IncidentKind.DRIFT: ("AdvmonDrift", "warning"),
    IncidentKind.QUERY_ATTACK: ("AdvmonQueryAttack", "critical"),
}

#: Why a post to one Alertmanager failed, as :class:`AlertmanagerClient` reports it.
DELIVERY_FAILURE_REASONS = ("http_status", "timeout", "connection")


def incident_alert(
    incident: Incident, *, now: datetime, resend: timedelta, incident_url: str
) -> dict[str, Any]:
    """The Alertmanager v2 alert for ``incident``.

    An open alert ends ``3 × resend`` from now, so it stays active while advmon keeps
    re-posting it and lapses by itself if advmon goes away; a resolved one ends when the
    incident resolved.
    """
    name, severity = ALERT_NAMES[incident.kind]
    labels = {
        "alertname": name,
        "service": "advmon",
        "model": incident.model_id,
        "kind": incident.kind.value,
        "severity": severity,
        "incident_id": str(incident.id),
    }
    if incident.source:
        labels["source"] = incident.source
    if incident.kind is IncidentKind.QUERY_ATTACK:
        summary, description = _query_attack_text(incident)
    else:
        who = f" from source {incident.source}" if incident.source else ""
        summary = (
            f"{incident.kind.value} incident #{incident.id} on model {incident.model_id}{who}: "
            f"{incident.detection_count} detections"
        )
        description = (
            f"{incident.detection_count} detections between {incident.first_seen.isoformat()} "
            f"and {incident.last_seen.isoformat()}; peak score {incident.peak_score:.4g}, mean "
            f"{incident.mean_score:.4g}, threshold {incident.threshold:.4g}. "
            f"Status: {incident.status.value}."
        )
    if incident.status is IncidentStatus.RESOLVED and incident.resolved_at is not None:
        ends = incident.resolved_at
    else:
        ends = now + 3 * resend
    return {
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": description,
            "incident_url": incident_url,
        },
        "startsAt": incident.first_seen.astimezone(UTC).isoformat(),
        "endsAt": ends.astimezone(UTC).isoformat(),
        "generatorURL": incident_url,
    }


def _query_attack_text(incident: Incident) -> tuple[str, str]:
    """Summary and description of a query-attack incident: who, how many linked queries
    against the threshold, when, and the decision on the source."""
    who = f"source {incident.source}" if incident.source else "a source without a name"
    summary = (
        f"query_attack incident #{incident.id} on model {incident.model_id} from {who}: "
        f"{incident.peak_score:g} linked queries (threshold {incident.threshold:g})"
    )
    description = (
        f"The queries of {who} to model {incident.model_id} are linked by chains of "
        f"fingerprint matches, as a black-box attack's are: up to {incident.peak_score:g} "
        f"of its held queries linked to one query (threshold {incident.threshold:g}), in "
        f"{incident.detection_count} detections between {incident.first_seen.isoformat()} "
        f"and {incident.last_seen.isoformat()}."
    )
    decisions = [
        decision
        for decision in decisions_taken(incident)
        if decision.reason == IncidentKind.QUERY_ATTACK.value and decision.source == incident.source
    ]
    if decisions:
        latest = decisions[-1]
        until = latest.expires_at.isoformat() if latest.expires_at else None
        description += f" Decision: {source_decision(latest.action or 'flag', until)}."
    description += f" Status: {incident.status.value}."
    return summary, description


class AlertmanagerClient:
    """Posts alerts to one or more Alertmanagers (an HA cluster gets them all).

    Parameters
    ----------
    urls
        Alertmanager base URLs such as ``http://alertmanager:9093``.
    timeout_seconds
        Timeout of each request.
    on_failure
        Called with the reason (one of :data:`DELIVERY_FAILURE_REASONS`) each time a post
        to one Alertmanager fails, whether or not another took the alerts: the worker
        counts them in a metric (this package exports none).
    """

    def __init__(
        self,
        urls: Sequence[str],
        timeout_seconds: float = 5.0,
        *,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.on_failure = on_failure
        self._session: aiohttp.ClientSession | None = None

    async def post(self, alerts: list[dict[str, Any]]) -> None:
        """Post ``alerts``; raise :class:`AlertDeliveryError` unless some Alertmanager took them."""
        if not alerts or not self.urls:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        failures = []
        for url in self.urls:
            try:
                async with self._session.post(f"{url}/api/v2/alerts", json=alerts) as response:
                    if response.status >= 300:
                        body = (await response.text())[:200]
                        failures.append(f"{url}: HTTP {response.status} {body}")
                        self._failed("http_status")
                        continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{url}: {exc.__class__.__name__} {exc}")
                self._failed("timeout" if isinstance(exc, TimeoutError) else "connection")
                continue
        if len(failures) == len(self.urls):
            raise AlertDeliveryError("; ".join(failures))
        for failure in failures:
            logger.warning("alertmanager %s", failure)

    def _failed(self, reason: str) -> None:
        if self.on_failure is not None:
            self.on_failure(reason)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
