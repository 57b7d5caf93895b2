"""Every Prometheus metric advmon exports, declared in one place.

Metrics are built from a registry passed in (``Metrics.create(registry)``), so each test
and each app instance can use a fresh :class:`~prometheus_client.CollectorRegistry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "observe_many"]


def observe_many(histogram: Any, values: Sequence[float] | np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, in one pass per batch.

    ``histogram`` is a :class:`~prometheus_client.Histogram` without labels, or one
    labelled child. prometheus-client observes one value at a time, under a lock each;
    here each bucket is incremented once by its count (its buckets and sum, as
    ``observe`` keeps them). A histogram of another make is observed value by value.

    >>> registry = CollectorRegistry()
    >>> latency = Histogram("latency_seconds", "", buckets=(0.1, 1.0), registry=registry)
    >>> observe_many(latency, [0.05, 0.1, 0.5, 7.0])
    >>> [registry.get_sample_value("latency_seconds_bucket", {"le": le})
    ...  for le in ("0.1", "1.0", "+Inf")]
    [2.0, 3.0, 4.0]
    """
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]  # observe() would count a NaN in no bucket
    if array.size == 0:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in array.tolist():
            histogram.observe(value)
        return
    # observe() counts a value in the first bucket whose upper bound is >= it.
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))
    total.inc(float(array.sum()))


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Metrics:
    """advmon's metrics; names follow Prometheus conventions."""

    events_consumed: Counter
    events_decoded: Counter
    events_invalid: Counter
    events_scored: Counter
    events_flagged: Counter
    decisions: Counter
    batch_size: Histogram
    scoring_seconds: Histogram
    event_to_decision_seconds: Histogram
    quarantined_sources: Gauge
    drift_detections: Counter
    drift_signal: Gauge
    drift_state_events: Gauge
    drift_state_age: Gauge
    drift_suppressed: Gauge
    drift_resets: Counter
    oip_halves: Counter
    oip_joins: Counter
    messages_reread: Counter
    oip_pending: Gauge
    detections_refused: Counter
    records_set_aside: Counter
    pipeline_seconds: Counter
    commits_refused: Counter
    consumer_lag: Gauge
    undecided_event_age: Gauge
    query_fingerprints: Counter
    query_attacks: Counter
    query_resets: Counter
    query_sources_held: Gauge
    query_decisions_in_force: Gauge
    detector_target_fpr: Gauge
    incidents_open: Gauge
    alert_deliveries_failed: Counter
    gc_full_collection_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        """Declare every metric in ``registry``."""
        return cls(
            events_consumed=Counter(
                "advmon_events_consumed",
                "Messages read from inference topics.",
                ["topic"],
                registry=registry,
            ),
            events_decoded=Counter(
                "advmon_events_decoded",
                "Events decoded and validated, by model.",
                ["model"],
                registry=registry,
            ),
            events_invalid=Counter(
                "advmon_events_invalid",
                "Messages sent to the dead-letter topic, by reason.",
                ["reason"],
                registry=registry,
            ),
            events_scored=Counter(
                "advmon_events_scored",
                "Events scored by feature squeezing.",
                ["model"],
                registry=registry,
            ),
            events_flagged=Counter(
                "advmon_events_flagged",
                "Events whose squeeze score exceeded the threshold.",
                ["model"],
                registry=registry,
            ),
            decisions=Counter(
                "advmon_decisions",
                "Decisions published for serving.",
                ["action", "scope"],
                registry=registry,
            ),
            batch_size=Histogram(
                "advmon_batch_size_events",
                "Events per scoring batch.",
                buckets=_BATCH_BUCKETS,
                registry=registry,
            ),
            scoring_seconds=Histogram(
                "advmon_scoring_seconds",
                "Time to score one batch with the fused graph.",
                ["model"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            event_to_decision_seconds=Histogram(
                "advmon_event_to_decision_seconds",
                "From the event's time (its ts, else the Kafka timestamp) to its decision "
                "being acknowledged by the broker.",
                ["model"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            quarantined_sources=Gauge(
                "advmon_quarantined_sources",
                "Sources under a quarantine in force, on this worker's partitions.",
                registry=registry,
            ),
            drift_detections=Counter(
                "advmon_drift_detections",
                "Drift detections published, by model and signal.",
                ["model", "signal"],
                registry=registry,
            ),
            drift_signal=Gauge(
                "advmon_drift_signal_value",
                "Mean of a drift signal stream over its last 100 events.",
                ["model", "stream"],
                registry=registry,
            ),
            drift_state_events=Gauge(
                "advmon_drift_state_events",
                "Events a model's drift detectors have learned from.",
                ["model"],
                registry=registry,
            ),
            drift_state_age=Gauge(
                "advmon_drift_state_age_seconds",
                "Time since a model's drift detectors started learning their baseline.",
                ["model"],
                registry=registry,
            ),
            oip_halves=Counter(
                "advmon_oip_halves",
                "OIP v2 requests and responses read, by model and kind.",
                ["model", "kind"],
                registry=registry,
            ),
            messages_reread=Counter(
                "advmon_messages_reread",
                "Times a partition was read again from a message the worker had skipped "
                "(read but never processed), by topic; the messages after it are decided twice.",
                ["topic"],
                registry=registry,
            ),
            oip_joins=Counter(
                "advmon_oip_joins",
                "OIP v2 join outcomes: joined, request_alone (no response in time), "
                "response_dropped (no request in time), duplicate (a half read again).",
                ["model", "outcome"],
                registry=registry,
            ),
            oip_pending=Gauge(
                "advmon_oip_pending",
                "OIP v2 halves waiting for their other half, on this worker's partitions.",
                registry=registry,
            ),
            records_set_aside=Counter(
                "advmon_records_set_aside",
                "Output records the broker refused for good (too large, invalid) and that "
                "were left out of the batch, by topic and reason (the Kafka error's name).",
                ["topic", "reason"],
                registry=registry,
            ),
            detections_refused=Counter(
                "advmon_detections_refused",
                "Detections set aside (sent to the dead-letter topic) instead of stored as "
                "incidents, by reason: malformed, nul_character, too_long, out_of_range, "
                "database (the database refused the write).",
                ["reason"],
                registry=registry,
            ),
            drift_suppressed=Gauge(
                "advmon_drift_suppressed",
                "Drifts not reported because of the cooldown, since the detectors started.",
                ["model", "stream"],
                registry=registry,
            ),
            drift_resets=Counter(
                "advmon_drift_resets",
                "Times a model's drift detectors started afresh instead of going on from their "
                "checkpoint, by reason: unauthenticated, bad_signature, unreadable, "
                "other_version, configuration_changed, update_failed.",
                ["model", "reason"],
                registry=registry,
            ),
            pipeline_seconds=Counter(
                "advmon_pipeline_seconds",
                "Wall time the hot path spent per step, over all batches: fetch (waiting for "
                "records), decode, score (the fused graph, in the scoring thread), decide, "
                "fingerprint (query fingerprints), publish (until the broker acknowledged), "
                "commit.",
                ["step"],
                registry=registry,
            ),
            query_fingerprints=Counter(
                "advmon_query_fingerprints",
                "Query fingerprints matched against their source's history, by model and "
                "outcome: new, retry (a held request id), repeat (held input bytes), "
                "low_information (too few distinct windows to match).",
                ["model", "outcome"],
                registry=registry,
            ),
            query_attacks=Counter(
                "advmon_query_attacks",
                "Query attacks detected: sources whose queries linked past the threshold.",
                ["model"],
                registry=registry,
            ),
            query_resets=Counter(
                "advmon_query_history_resets",
                "Stored query histories that could not be read and started afresh.",
                ["model", "reason"],
                registry=registry,
            ),
            query_sources_held=Gauge(
                "advmon_query_sources",
                "Sources whose query history this worker holds.",
                registry=registry,
            ),
            query_decisions_in_force=Gauge(
                "advmon_query_attack_decisions",
                "Query-attack decisions (quarantine or flag) in force on this worker's sources.",
                registry=registry,
            ),
            commits_refused=Counter(
                "advmon_commits_refused",
                "Inference offsets the group refused to commit (this worker had been dropped "
                "from the group): the partition's next owner processes them again.",
                registry=registry,
            ),
            consumer_lag=Gauge(
                "advmon_consumer_lag",
                "Messages of an inference partition this worker owns that its group has not "
                "committed yet: the partition's high watermark minus the offset the group "
                "resumes from (its last commit, else the first record this worker took). "
                "Updated every second and at each commit; gone when the partition is revoked.",
                ["topic", "partition"],
                registry=registry,
            ),
            gc_full_collection_seconds=Histogram(
                "advmon_gc_full_collection_seconds",
                "Duration of the worker process's full (generation 2) garbage collections, "
                "each of which stops its event loop. The objects of its start-up are left "
                "out of every collection.",
                buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
                registry=registry,
            ),
            undecided_event_age=Gauge(
                "advmon_undecided_event_age_seconds",
                "Age of the oldest inference message this worker has fetched and not finished "
                "(now minus its Kafka timestamp; the time it was fetched where the timestamp "
                "is missing or in the future), 0 when none is in hand. Read at scrape time.",
                registry=registry,
            ),
            detector_target_fpr=Gauge(
                "advmon_detector_target_fpr",
                "The false-positive rate each monitored model's detector was calibrated for "
                "(target_fpr of its detector file), set as the worker starts.",
                ["model"],
                registry=registry,
            ),
            incidents_open=Gauge(
                "advmon_incidents_open",
                "Unresolved incidents (open or acknowledged) in the incident store, by kind; "
                "refreshed at each alert sync by the worker that holds the store, and left at "
                "its last value while the database cannot be read.",
                ["kind"],
                registry=registry,
            ),
            alert_deliveries_failed=Counter(
                "advmon_alert_deliveries_failed",
                "Posts of alerts to one Alertmanager that failed, by reason: http_status (it "
                "answered with a status of 300 or more), timeout, connection (any other client "
                "error).",
                ["reason"],
                registry=registry,
            ),
        )
