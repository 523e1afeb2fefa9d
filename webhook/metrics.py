"""Prometheus metrics: the only module that imports prometheus_client.

Every metric is created once here, on a registry of our own, so that tests and
benchmarks can create several webhooks in one process without clashes.
"""

from typing import Final

import prometheus_client

REGISTRY: Final = prometheus_client.CollectorRegistry(auto_describe=True)

ADMISSIONS: Final = prometheus_client.Counter(
    "digestguard_admissions",
    "Admission requests answered, by handler and decision (allowed, mutated, denied).",
    ["handler", "decision"],
    registry=REGISTRY,
)
ADMISSION_SECONDS: Final = prometheus_client.Histogram(
    "digestguard_admission_duration_seconds",
    "Time from receiving an AdmissionReview to answering it.",
    ["handler"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
ADMISSIONS_REFUSED: Final = prometheus_client.Counter(
    "digestguard_admissions_refused",
    "Admission requests refused before any decision, by reason (overloaded,"
    " unsupported-body, slow-body).",
    ["reason"],
    registry=REGISTRY,
)
LOOP_LAG: Final = prometheus_client.Gauge(
    "digestguard_event_loop_lag_seconds",
    "How late the admission server's event loop ran at its last measurement.",
    registry=REGISTRY,
)
SHEDDING: Final = prometheus_client.Gauge(
    "digestguard_shedding",
    "1 while admissions are refused because the event loop has lagged behind for a while.",
    registry=REGISTRY,
)
CONNECTIONS: Final = prometheus_client.Gauge(
    "digestguard_connections",
    "Client connections open on the admission server.",
    registry=REGISTRY,
)
CONNECTIONS_REFUSED: Final = prometheus_client.Counter(
    "digestguard_connections_refused",
    "Connections closed as they were made, because the server held its maximum.",
    registry=REGISTRY,
)
CONNECTIONS_TIMED_OUT: Final = prometheus_client.Counter(
    "digestguard_connections_timed_out",
    "Connections closed because a request did not arrive whole in time.",
    registry=REGISTRY,
)
VIOLATIONS: Final = prometheus_client.Counter(
    "digestguard_violations",
    "Policy violations found, by policy action and reason (Audit ones are only warnings).",
    ["action", "reason"],
    registry=REGISTRY,
)
REGISTRY_CALLS: Final = prometheus_client.Counter(
    "digestguard_registry_calls",
    "Calls to the registry API, by operation and outcome (ok, error, throttled).",
    ["operation", "outcome"],
    registry=REGISTRY,
)
REGISTRY_SECONDS: Final = prometheus_client.Histogram(
    "digestguard_registry_call_duration_seconds",
    "Duration of registry API calls, retries included.",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
REGISTRY_CIRCUIT: Final = prometheus_client.Gauge(
    "digestguard_registry_circuit",
    "1 for the state each registry endpoint's circuit breaker is in (closed, open, half-open).",
    ["endpoint", "state"],
    registry=REGISTRY,
)
REGISTRY_CIRCUIT_TRANSITIONS: Final = prometheus_client.Counter(
    "digestguard_registry_circuit_transitions",
    "Changes of a registry endpoint's circuit breaker, by the state it moved to.",
    ["endpoint", "to"],
    registry=REGISTRY,
)
CACHE_LOOKUPS: Final = prometheus_client.Counter(
    "digestguard_cache_lookups",
    "Resolver cache lookups, by cache (digests, mutability) and result (hit, miss, stale).",
    ["cache", "result"],
    registry=REGISTRY,
)
CACHE_ENTRIES: Final = prometheus_client.Gauge(
    "digestguard_cache_entries",
    "Entries held in each resolver cache.",
    ["cache"],
    registry=REGISTRY,
)
ROLLOUT_PINS: Final = prometheus_client.Counter(
    "digestguard_rollout_pins",
    "Images of pods of a controller revision pinned, by how: revision (the digest its pods"
    " run), first (the revision's first pod, asked afresh), gone (its digest no longer"
    " exists: pinned afresh), unread (its pods could not be read: pinned from the cache).",
    ["how"],
    registry=REGISTRY,
)
ROLLOUT_REVISIONS: Final = prometheus_client.Gauge(
    "digestguard_rollout_revisions",
    "Controller revisions whose digests this replica remembers.",
    registry=REGISTRY,
)
POLICIES_LOADED: Final = prometheus_client.Gauge(
    "digestguard_policies_loaded",
    "DigestPolicies currently enforced (accepted ones only).",
    registry=REGISTRY,
)
POLICIES_REJECTED: Final = prometheus_client.Gauge(
    "digestguard_policies_rejected",
    "DigestPolicies whose spec could not be accepted.",
    registry=REGISTRY,
)

AUDIT_IMAGES: Final = prometheus_client.Gauge(
    "digestguard_audit_images",
    "Running images found by the last audit cycle, by namespace, owner kind (Deployment,"
    " StatefulSet, DaemonSet, Job, Pod…) and state (current, tag-moved, gone, archived,"
    " unknown, expiring). One per (owner, container, image, digest), however many pods run it.",
    ["namespace", "owner_kind", "state"],
    registry=REGISTRY,
)
AUDIT_CYCLES: Final = prometheus_client.Counter(
    "digestguard_audit_cycles",
    "Audit cycles run by this replica, by result (ok, failed).",
    ["result"],
    registry=REGISTRY,
)
AUDIT_CYCLE_SECONDS: Final = prometheus_client.Histogram(
    "digestguard_audit_cycle_duration_seconds",
    "Duration of an audit cycle: listing the pods, asking the registries, reporting.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300),
    registry=REGISTRY,
)
AUDIT_REGISTRY_CALLS: Final = prometheus_client.Gauge(
    "digestguard_audit_registry_calls",
    "Registry requests made by the last audit cycle, by operation (BatchGetImage,"
    " DescribeImages, GetManifest…), retries included.",
    ["operation"],
    registry=REGISTRY,
)
AUDIT_SKIPPED: Final = prometheus_client.Gauge(
    "digestguard_audit_skipped_containers",
    "Containers the last audit cycle could not place (an invalid image, an image ID that"
    " names no digest of it); each reason is logged.",
    registry=REGISTRY,
)
AUDIT_EVENTS: Final = prometheus_client.Counter(
    "digestguard_audit_events",
    "Warning Events posted by the audit on the owners of gone or archived images, by reason.",
    ["reason"],
    registry=REGISTRY,
)
AUDIT_LEADER: Final = prometheus_client.Gauge(
    "digestguard_audit_leader",
    "1 while this replica holds the audit Lease (only the holder audits), else 0.",
    registry=REGISTRY,
)


def exposition() -> tuple[bytes, str]:
    """The current metrics in the text format, and its content type."""
    return prometheus_client.generate_latest(REGISTRY), prometheus_client.CONTENT_TYPE_LATEST
