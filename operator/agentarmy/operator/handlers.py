"""kopf registrations: indexes that feed the cache, and event handlers that
only queue keys. All decisions live in the reconcilers."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from agentarmy.api.common import GROUP, VERSION
from agentarmy.operator.cache import AgentView, Cache, FleetView, PodView, PolicyView, TaskView
from agentarmy.operator.labels import AGENT as AGENT_LABEL
from agentarmy.operator.labels import FLEET as FLEET_LABEL
from agentarmy.operator.labels import MANAGED_BY, MANAGER
from agentarmy.operator.tasks import TaskEvents
from agentarmy.operator.workqueue import WorkQueue

POLICY_STATUS_DELAY = 2.0
"""Seconds a Policy's status waits after a change of what it may match."""

AGENT_POD_LABELS: dict[str, Any] = {
    AGENT_LABEL: kopf.PRESENT,
    MANAGED_BY: MANAGER,
}


def _plain(value: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(value or {}))


def build_registry(
    cache: Cache,
    agents: WorkQueue,
    fleets: WorkQueue,
    policies: WorkQueue,
    tasks: TaskEvents | None = None,
    rules_changed: Callable[[str], None] = lambda namespace: None,
) -> kopf.OperatorRegistry:
    tasks = tasks or TaskEvents(WorkQueue("task"))
    registry = kopf.OperatorRegistry()

    def policies_of(namespace: str) -> None:
        """Queue the Policies of ``namespace``: what they match may have changed. Delayed,
        so a thousand Agents changing cost one Policy status pass, not a thousand."""
        if cache.bound:
            for view in cache.policies_in(namespace):
                policies.add_after((namespace, view.name), POLICY_STATUS_DELAY)

    # What each namespace's verdicts were computed from. Only an optimisation: our own
    # Policy status writes change nothing of it and must not re-queue every object.
    rules_seen: dict[str, frozenset[tuple[str, str, int, bool]]] = {}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the ServiceAccount; elsewhere: $KUBECONFIG / ~/.kube/config.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        return info or kopf.login_with_kubeconfig(**kwargs)

    @kopf.index(GROUP, VERSION, "agents", id="agent_index", registry=registry)
    async def agent_index(
        namespace: str | None,
        name: str,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        **_: Any,
    ) -> dict[tuple[str, str], AgentView]:
        return {(namespace or "", name): AgentView.of(meta, _plain(spec), _plain(status))}

    @kopf.index(
        GROUP,
        VERSION,
        "agents",
        labels={FLEET_LABEL: kopf.PRESENT},
        id="agents_by_fleet_index",
        registry=registry,
    )
    async def agents_by_fleet_index(
        namespace: str | None,
        labels: Mapping[str, str],
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        **_: Any,
    ) -> dict[tuple[str, str], AgentView]:
        return {(namespace or "", labels[FLEET_LABEL]): AgentView.of(meta, {}, _plain(status))}

    @kopf.index(GROUP, VERSION, "fleets", id="fleet_index", registry=registry)
    async def fleet_index(
        namespace: str | None,
        name: str,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        **_: Any,
    ) -> dict[tuple[str, str], FleetView]:
        return {(namespace or "", name): FleetView.of(meta, _plain(spec), _plain(status))}

    @kopf.index("", "v1", "pods", labels=AGENT_POD_LABELS, id="pod_index", registry=registry)
    async def pod_index(
        namespace: str | None,
        labels: Mapping[str, str],
        meta: kopf.Meta,
        status: kopf.Status,
        **_: Any,
    ) -> dict[tuple[str, str], PodView]:
        return {(namespace or "", labels[AGENT_LABEL]): PodView.of(meta, status)}

    @kopf.index(GROUP, VERSION, "policies", id="policy_index", registry=registry)
    async def policy_index(
        namespace: str | None,
        name: str,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        **_: Any,
    ) -> dict[tuple[str, str], PolicyView]:
        return {(namespace or "", name): PolicyView.of(meta, _plain(spec), _plain(status))}

    @kopf.index(GROUP, VERSION, "tasks", id="task_index", registry=registry)
    async def task_index(
        namespace: str | None,
        name: str,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        **_: Any,
    ) -> dict[tuple[str, str], TaskView]:
        return {(namespace or "", name): TaskView.of(meta, _plain(spec), _plain(status))}

    def bind(kwargs: dict[str, Any]) -> None:
        if not cache.bound:
            cache.bind(
                agents=kwargs["agent_index"],
                agents_by_fleet=kwargs["agents_by_fleet_index"],
                fleets=kwargs["fleet_index"],
                pods=kwargs["pod_index"],
                policies=kwargs["policy_index"],
                tasks=kwargs["task_index"],
            )

    # Handlers are coroutines: sync ones would run in a thread pool, slower and
    # unsafe for the asyncio work queues they feed.
    @kopf.on.event(GROUP, VERSION, "agents", id="agent_changed", registry=registry)
    async def agent_changed(
        namespace: str | None, name: str, labels: Mapping[str, str], **kwargs: Any
    ) -> None:
        bind(kwargs)
        agents.add((namespace or "", name))
        fleet = labels.get(FLEET_LABEL)
        if fleet:
            fleets.add((namespace or "", fleet))
        else:
            rules_changed(namespace or "")  # a standalone Agent is governed as its own fleet
        policies_of(namespace or "")

    @kopf.on.event(GROUP, VERSION, "fleets", id="fleet_changed", registry=registry)
    async def fleet_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
        bind(kwargs)
        fleets.add((namespace or "", name))
        policies_of(namespace or "")
        rules_changed(namespace or "")
        tasks.fleet_changed(namespace or "", name)  # Tasks waiting for this Fleet

    @kopf.on.event(GROUP, VERSION, "policies", id="policy_changed", registry=registry)
    async def policy_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
        """A Policy changed (or went away): every verdict in its namespace may differ."""
        bind(kwargs)
        ns = namespace or ""
        policies.add((ns, name))
        rules = frozenset((v.name, v.uid, v.generation, v.deleting) for v in cache.policies_in(ns))
        if rules_seen.get(ns) == rules:
            return
        rules_seen[ns] = rules
        cache.policies_changed()
        rules_changed(ns)
        for agent in cache.agents_in(ns):
            agents.add((ns, agent.name))
        for fleet in cache.fleets_in(ns):
            fleets.add((ns, fleet.name))

    @kopf.on.event("", "v1", "pods", labels=AGENT_POD_LABELS, id="pod_changed", registry=registry)
    async def pod_changed(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        bind(kwargs)
        agents.add((namespace or "", labels[AGENT_LABEL]))

    @kopf.on.event(GROUP, VERSION, "tasks", id="task_changed", registry=registry)
    async def task_changed(
        namespace: str | None,
        name: str,
        uid: str | None,
        status: kopf.Status,
        type: str | None,
        **kwargs: Any,
    ) -> None:
        bind(kwargs)
        key = (namespace or "", name)
        if type == "DELETED":
            # The index has forgotten it; its body is the last word on what to cancel.
            tasks.deleted(key, uid or "", str(status.get("taskId") or ""), status.get("phase", ""))
        else:
            tasks.changed(key)

    return registry
