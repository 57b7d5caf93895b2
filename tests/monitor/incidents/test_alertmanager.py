"""The Alertmanager alert of an incident, on incidents built in memory.

The alerting stage reads incidents without their detections (``IncidentStore.alertable``),
so an alert is made from the incident's columns alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.incidents.alertmanager import ALERT_NAMES, incident_alert
from monitor.incidents.storage.models import Incident, IncidentKind, IncidentStatus

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=10)
RESEND = timedelta(minutes=1)
URL = "https://advmon.example/incidents/9"


def _decision(source: str | None, minutes: float, action: str, **extra: Any) -> dict[str, Any]:
    return {
        "action": action,
        "scope": "source",
        "source": source,
        "decided_at": (T0 + timedelta(minutes=minutes)).isoformat(),
        "expires_at": (T0 + timedelta(minutes=minutes, hours=1)).isoformat(),
        **extra,
    }


def _query_attack_decision(source: str | None, minutes: float, action: str) -> dict[str, Any]:
    return _decision(
        source, minutes, action, reason="query_attack", event_id="q", linked_queries=12.0
    )


def _incident(**overrides: Any) -> Incident:
    """Incident 9: the query attack of source key-z on digits, two detections."""
    values: dict[str, Any] = {
        "id": 9,
        "kind": IncidentKind.QUERY_ATTACK,
        "model_id": "digits",
        "model_version": "v3",
        "source": "key-z",
        "status": IncidentStatus.OPEN,
        "first_seen": T0,
        "last_seen": T0 + timedelta(minutes=5),
        "detection_count": 2,
        "peak_score": 14.0,
        "score_sum": 26.0,
        "threshold": 8.0,
        "detector_sha256": None,
        "sample_events": [],
        "decisions": [
            _query_attack_decision("key-z", 0, "quarantine"),
            # Another source's decision, recorded on every open incident of the model.
            _query_attack_decision("key-y", 3, "quarantine"),
            _query_attack_decision("key-z", 5, "flag"),
            _decision("key-z", 6, "quarantine", flagged_events=20.0),
        ],
        "resolved_at": None,
    }
    values.update(overrides)
    return Incident(**values)


def _alert(incident: Incident) -> dict[str, Any]:
    return incident_alert(incident, now=NOW, resend=RESEND, incident_url=URL)


def test_a_query_attack_alert_names_the_source_the_links_and_the_decision() -> None:
    alert = _alert(_incident())
    assert alert["labels"] == {
        "alertname": "AdvmonQueryAttack",
        "service": "advmon",
        "model": "digits",
        "kind": "query_attack",
        "severity": "critical",
        "incident_id": "9",
        "source": "key-z",
    }
    assert alert["annotations"] == {
        "summary": (
            "query_attack incident #9 on model digits from source key-z: 14 linked queries "
            "(threshold 8)"
        ),
        "description": (
            "The queries of source key-z to model digits are linked by chains of fingerprint "
            "matches, as a black-box attack's are: up to 14 of its held queries linked to "
            "one query (threshold 8), in 2 detections between 2026-05-01T12:00:00+00:00 and "
            "2026-05-01T12:05:00+00:00. Decision: source flagged, not quarantined (the "
            "policy does not enforce), until 2026-05-01T13:05:00+00:00. Status: open."
        ),
        "incident_url": URL,
    }
    assert alert["startsAt"] == "2026-05-01T12:00:00+00:00"
    assert alert["endsAt"] == (NOW + 3 * RESEND).isoformat()
    assert alert["generatorURL"] == URL


def test_a_query_attack_alert_says_the_quarantine_and_the_resolution() -> None:
    resolved_at = T0 + timedelta(hours=2)
    incident = _incident(
        decisions=[_query_attack_decision("key-z", 0, "quarantine")],
        status=IncidentStatus.RESOLVED,
        resolved_at=resolved_at,
    )
    alert = _alert(incident)
    assert alert["annotations"]["description"].endswith(
        " Decision: source quarantined until 2026-05-01T13:00:00+00:00. Status: resolved."
    )
    assert alert["endsAt"] == resolved_at.isoformat()


def test_a_query_attack_alert_without_a_decision_or_a_source() -> None:
    alert = _alert(_incident(decisions=[], source=None))
    assert "source" not in alert["labels"]
    assert alert["annotations"]["summary"] == (
        "query_attack incident #9 on model digits from a source without a name: 14 linked "
        "queries (threshold 8)"
    )
    assert alert["annotations"]["description"].endswith("2026-05-01T12:05:00+00:00. Status: open.")


def test_other_kinds_keep_their_wording() -> None:
    quarantine = _incident(
        kind=IncidentKind.QUARANTINE, peak_score=20.0, score_sum=40.0, threshold=20.0
    )
    alert = _alert(quarantine)
    assert alert["labels"]["alertname"] == "AdvmonSourceQuarantined"
    assert alert["annotations"]["summary"] == (
        "quarantine incident #9 on model digits from source key-z: 2 detections"
    )
    assert alert["annotations"]["description"] == (
        "2 detections between 2026-05-01T12:00:00+00:00 and 2026-05-01T12:05:00+00:00; "
        "peak score 20, mean 20, threshold 20. Status: open."
    )


def test_every_kind_has_an_alert() -> None:
    assert set(ALERT_NAMES) == set(IncidentKind)
    assert all(name.startswith("Advmon") for name, _ in ALERT_NAMES.values())
