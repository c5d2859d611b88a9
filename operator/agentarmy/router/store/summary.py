"""``GET /v1/stats`` assembled from counts, the same way for every store backend.

A backend only counts (SQLite with GROUP BY queries, NATS from its mirror's counters) and
hands the counts over in this neutral shape: mappings keyed by namespace and fleet first,
like :data:`~agentarmy.router.store.base.QueueDepths`. Which fleets appear, how phases
map to fields, liveness, error rates and the order of everything are decided here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo
from agentarmy.router.lifecycle import agent_id
from agentarmy.router.store.base import QueueDepths, error_rate

PhaseCounts = Mapping[tuple[str, str, str], int]
"""(namespace, fleet, task phase) -> tasks."""

TemplateCounts = Mapping[tuple[str, str, str], tuple[int, int]]
"""(namespace, fleet, template hash) -> (attempts, failures) of ended, counted attempts."""

AgentCounts = Iterable[tuple[AgentInfo, int, int]]
"""Every registered agent with its (succeeded, failed) attempts."""

PHASE_FIELDS: Mapping[str, str] = {
    "Queued": "queued",
    "Running": "running",
    "Succeeded": "succeeded",
    "Failed": "failed",
    "DeadLettered": "deadLettered",
    "Cancelled": "cancelled",
    "Pending": "queued",
    "AwaitingApproval": "awaitingApproval",
    "WaitingForChildren": "waitingForChildren",
}
"""Task phase -> the FleetStats field that counts it."""


@dataclass
class _Fleet:
    phases: Counter[str] = field(default_factory=Counter)
    by_priority: dict[int, int] = field(default_factory=dict)
    agents: list[wire.AgentStats] = field(default_factory=list)
    templates: dict[str, tuple[int, int]] = field(default_factory=dict)


def build_stats(
    now: float,
    liveness_seconds: float,
    *,
    phases: PhaseCounts,
    depths: QueueDepths,
    running: Mapping[str, int],
    agents: AgentCounts,
    templates: TemplateCounts,
) -> wire.Stats:
    """Stats per fleet, sorted by namespace and fleet; agents by name, templates by hash.

    ``depths`` counts queued tasks per priority, ``running`` the leases per agent id
    (``namespace/name``). A fleet appears once it has a task or a registered agent; zero
    counts (left behind in counters) add nothing else.
    """
    fleets: dict[tuple[str, str], _Fleet] = {}

    def fleet(namespace: str, name: str) -> _Fleet:
        found = fleets.get((namespace, name))
        if found is None:
            found = fleets[(namespace, name)] = _Fleet()
        return found

    for (namespace, name, phase), count in phases.items():
        counted = fleet(namespace, name)
        if phase in PHASE_FIELDS:
            counted.phases[PHASE_FIELDS[phase]] += count
    for (namespace, name, priority), count in depths.items():
        if count > 0:
            fleet(namespace, name).by_priority[priority] = count
    for info, succeeded, failed in agents:
        fleet(info.namespace, info.fleet).agents.append(
            wire.AgentStats(
                name=info.name,
                ready=info.ready,
                live=now - info.lastHeartbeat <= liveness_seconds,
                templateHash=info.templateHash,
                running=running.get(agent_id(info.namespace, info.name), 0),
                succeeded=succeeded,
                failed=failed,
                lastHeartbeat=info.lastHeartbeat,
            )
        )
    for (namespace, name, template_hash), (attempts, failures) in templates.items():
        if attempts > 0:
            fleet(namespace, name).templates[template_hash] = (attempts, failures)
    return wire.Stats(
        generatedAt=now,
        fleets=[_fleet_stats(key, counted) for key, counted in sorted(fleets.items())],
    )


def _fleet_stats(key: tuple[str, str], counted: _Fleet) -> wire.FleetStats:
    phases = counted.phases
    return wire.FleetStats(
        namespace=key[0],
        fleet=key[1],
        queued=phases["queued"],
        queuedByPriority={str(p): n for p, n in sorted(counted.by_priority.items())},
        running=phases["running"],
        succeeded=phases["succeeded"],
        failed=phases["failed"],
        deadLettered=phases["deadLettered"],
        cancelled=phases["cancelled"],
        awaitingApproval=phases["awaitingApproval"],
        waitingForChildren=phases["waitingForChildren"],
        agents=sorted(counted.agents, key=lambda a: a.name),
        templates=[
            wire.TemplateStats(
                templateHash=template_hash,
                attempts=attempts,
                failures=failures,
                errorRate=error_rate(attempts, failures),
            )
            for template_hash, (attempts, failures) in sorted(counted.templates.items())
        ],
    )
