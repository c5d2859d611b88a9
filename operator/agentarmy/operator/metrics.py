"""Prometheus metrics of the operator (one registry, served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "agentarmy_operator_reconciles_total",
    "Reconciles by kind and outcome (ok, requeue, error).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "agentarmy_operator_reconcile_duration_seconds",
    "Time spent in one reconcile.",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
API_WRITES = Counter(
    "agentarmy_operator_api_writes_total",
    "Write requests sent to the Kubernetes API, by verb and kind.",
    ["verb", "kind"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "agentarmy_operator_api_errors_total",
    "Kubernetes API requests that failed, by verb, kind and HTTP status.",
    ["verb", "kind", "code"],
    registry=REGISTRY,
)
MANAGED = Gauge(
    "agentarmy_operator_managed_objects",
    "Objects in the operator's cache, by kind.",
    ["kind"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "agentarmy_operator_queue_depth",
    "Keys waiting in a work queue.",
    ["kind"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "agentarmy_operator_leader",
    "1 while this replica holds the leader Lease.",
    registry=REGISTRY,
)
POLICY_VERDICTS = Counter(
    "agentarmy_policy_verdicts_total",
    "Policy verdicts by source (admission, background), outcome (allow, deny, warn) and "
    "rule (empty when nothing was broken).",
    ["source", "verdict", "rule"],
    registry=REGISTRY,
)
ADMISSION_SECONDS = Histogram(
    "agentarmy_admission_duration_seconds",
    "Time the webhook took to answer one AdmissionReview, by resource and verdict.",
    ["resource", "verdict"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
ROLLOUT_ABORTED = Gauge(
    "agentarmy_operator_rollout_aborted",
    "1 while a Fleet's canary rollout is aborted (the new template failed its error bound).",
    ["namespace", "fleet"],
    registry=REGISTRY,
)
