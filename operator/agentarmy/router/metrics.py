"""Prometheus metrics of one router process (its own registry, so tests can run several)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from agentarmy.api import wire
from agentarmy.api.wire import Task
from agentarmy.router.store.base import QueueDepths

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "agentarmy_router_tasks_submitted",
            "Tasks accepted (new, not idempotent repeats).",
            ["namespace", "fleet"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "agentarmy_router_attempt_outcomes",
            "Ended attempts by how they ended (reason) and where that left the task (phase).",
            ["namespace", "fleet", "reason", "phase"],
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "agentarmy_router_dispatch_latency_seconds",
            "From the moment a task could run (submitted or backoff over) to its lease.",
            ["namespace", "fleet"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.task_duration = Histogram(
            "agentarmy_router_task_duration_seconds",
            "Lease granted to outcome recorded, per attempt.",
            ["namespace", "fleet", "capability"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "agentarmy_router_queue_depth",
            "Queued tasks per fleet and priority.",
            ["namespace", "fleet", "priority"],
            registry=self.registry,
        )
        self.live_agents = Gauge(
            "agentarmy_router_live_agents",
            "Agents with a recent heartbeat, per fleet.",
            ["namespace", "fleet"],
            registry=self.registry,
        )
        self.stale_reports = Counter(
            "agentarmy_router_stale_reports",
            "Heartbeats or results refused for a stale fencing token.",
            ["namespace", "fleet"],
            registry=self.registry,
        )
        self.governance = Counter(
            "agentarmy_router_governance_decisions",
            "Runtime-rule decisions: rate-limited, over-budget, tool-refused, halted, resumed.",
            ["namespace", "fleet", "decision"],
            registry=self.registry,
        )
        self.halted = Gauge(
            "agentarmy_router_fleet_halted",
            "1 while the sentinel halts dispatch to the fleet.",
            ["namespace", "fleet"],
            registry=self.registry,
        )
        self.tasks_waiting = Gauge(
            "agentarmy_router_tasks_waiting",
            "Tasks parked without a lease, per fleet: phase AwaitingApproval (a person "
            "decides on a tool call) or WaitingForChildren (a parent waits for its join). "
            "Store-wide: every router replica reports the same count.",
            ["namespace", "fleet", "phase"],
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "agentarmy_router_breaker_transitions",
            "Agents' circuit breakers moving (routing by results): to open, half-open, closed.",
            ["namespace", "fleet", "state"],
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def labelled(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: labels() takes a lock and builds a key
        on every call, several times per task. Not for gauges cleared on render."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def assigned(self, task: Task, now: float) -> None:
        ready_since = max(task.createdAt, task.availableAt)
        self.labelled(self.dispatch_latency, task.namespace, task.fleet).observe(
            max(0.0, now - ready_since)
        )

    def attempt_ended(self, task: Task) -> None:
        last = task.attempts[-1] if task.attempts else None
        if last is None or last.outcome is None:
            return
        self.labelled(self.outcomes, task.namespace, task.fleet, last.outcome, task.phase).inc()
        if last.endedAt is not None:
            duration = self.labelled(
                self.task_duration, task.namespace, task.fleet, task.capability
            )
            duration.observe(last.endedAt - last.startedAt)

    def render(self, depths: QueueDepths, stats: wire.Stats) -> bytes:
        """Refresh the gauges from the store's current view, then render the text format."""
        self.queue_depth.clear()
        for (namespace, fleet, priority), count in depths.items():
            self.queue_depth.labels(namespace, fleet, str(priority)).set(count)
        self.live_agents.clear()
        self.halted.clear()
        self.tasks_waiting.clear()
        for fleet_stats in stats.fleets:
            if fleet_stats.halt is not None:
                self.halted.labels(fleet_stats.namespace, fleet_stats.fleet).set(1)
            # From the counts the stats hold already: no query of its own per scrape.
            waiting = self.tasks_waiting
            where = (fleet_stats.namespace, fleet_stats.fleet)
            waiting.labels(*where, "AwaitingApproval").set(fleet_stats.awaitingApproval)
            waiting.labels(*where, "WaitingForChildren").set(fleet_stats.waitingForChildren)
            live = sum(1 for agent in fleet_stats.agents if agent.live)
            self.live_agents.labels(fleet_stats.namespace, fleet_stats.fleet).set(live)
        return generate_latest(self.registry)
