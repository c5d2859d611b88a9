"""What the reconcilers read: kopf indexes of Agents, Fleets, Pods, Policies and Tasks.

kopf starts no other handler until every index holds its initial listing, so
a reconciler never acts on a half-filled cache after a restart (the job
controller-runtime's cache sync does). Index values are small frozen
summaries, not whole bodies, to keep memory flat at thousands of agents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from agentarmy.api.common import describe_error
from agentarmy.api.wire import FleetStats, Halt
from agentarmy.operator import labels
from agentarmy.policy import NamedPolicy, PolicySet


def _identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every object view takes from its metadata."""
    return {
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
        "resource_version": meta.get("resourceVersion", ""),
        "generation": int(meta.get("generation", 0)),
        "deleting": bool(meta.get("deletionTimestamp")),
    }


_OURS = "agentarmy.io/"
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _template_annotations(meta: Mapping[str, Any]) -> dict[str, str]:
    """An Agent's annotations (from its Fleet's template), without kubectl's copy of it."""
    return {k: v for k, v in (meta.get("annotations") or {}).items() if k != _LAST_APPLIED}


def _ready_condition(status: Mapping[str, Any]) -> tuple[bool, str]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True", condition.get("lastTransitionTime", "")
    return False, ""


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str
    phase: str
    ready: bool
    pod_hash: str
    deleting: bool
    exit_code: int | None
    exit_reason: str
    created: str

    @classmethod
    def of(cls, meta: Mapping[str, Any], status: Mapping[str, Any]) -> PodView:
        ready, _ = _ready_condition(status)
        exit_code, exit_reason = None, ""
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated:
                exit_code = terminated.get("exitCode")
                exit_reason = terminated.get("reason") or terminated.get("message") or ""
        return cls(
            name=meta["name"],
            uid=meta["uid"],
            phase=status.get("phase", "Pending"),
            ready=ready,
            pod_hash=(meta.get("labels") or {}).get(labels.POD_HASH, ""),
            deleting=bool(meta.get("deletionTimestamp")),
            exit_code=exit_code,
            exit_reason=exit_reason,
            created=meta.get("creationTimestamp", ""),
        )

    def age_seconds(self, now: datetime) -> float:
        if not self.created:
            return 0.0
        return (now - datetime.fromisoformat(self.created.replace("Z", "+00:00"))).total_seconds()

    @property
    def exited(self) -> bool:
        return self.phase in ("Failed", "Succeeded")


@dataclass(frozen=True)
class AgentView:
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    created: str
    deleting: bool
    labels: Mapping[str, str]
    owner_uid: str
    ready: bool
    ready_since: str
    spec: Mapping[str, Any] = field(repr=False)
    status: Mapping[str, Any] = field(repr=False)
    annotations: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls, meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
    ) -> AgentView:
        ready, since = _ready_condition(status)
        owner = next(
            (o["uid"] for o in meta.get("ownerReferences") or [] if o.get("controller")), ""
        )
        return cls(
            **_identity(meta),
            created=meta.get("creationTimestamp", ""),
            labels=dict(meta.get("labels") or {}),
            owner_uid=owner,
            ready=ready,
            ready_since=since if ready else "",
            annotations=_template_annotations(meta) if spec else {},
            spec=spec,
            status=status,
        )

    @property
    def template_hash(self) -> str:
        return self.labels.get(labels.TEMPLATE_HASH, "")


@dataclass(frozen=True)
class FleetView:
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    deleting: bool
    labels: Mapping[str, str]
    spec: Mapping[str, Any] = field(repr=False)
    status: Mapping[str, Any] = field(repr=False)
    annotations: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls, meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
    ) -> FleetView:
        return cls(
            **_identity(meta),
            labels=dict(meta.get("labels") or {}),
            annotations={
                k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(_OURS)
            },
            spec=spec,
            status=status,
        )


@dataclass(frozen=True)
class PolicyView:
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    deleting: bool
    policy: NamedPolicy | None = field(repr=False)
    """None when the stored spec does not validate (see ``error``)."""
    error: str
    status: Mapping[str, Any] = field(repr=False)

    @classmethod
    def of(
        cls, meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
    ) -> PolicyView:
        identity = _identity(meta)
        policy, error = None, ""
        try:
            policy = NamedPolicy.from_object({"metadata": meta, "spec": spec})
        except ValidationError as err:
            error = describe_error(err)
        return cls(**identity, policy=policy, error=error, status=status)


@dataclass(frozen=True)
class TaskView:
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    deleting: bool
    fleet: str
    task_id: str
    """status.taskId: the router task it was submitted as ("" until then)."""
    spec: Mapping[str, Any] = field(repr=False)
    status: Mapping[str, Any] = field(repr=False)

    @classmethod
    def of(
        cls, meta: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
    ) -> TaskView:
        task_id = str(status.get("taskId") or "")
        if task_id:
            # Submitted: the input is only needed to submit, and it may be large.
            spec = {k: v for k, v in spec.items() if k != "input"}
        return cls(
            **_identity(meta),
            fleet=str(spec.get("fleet") or ""),
            task_id=task_id,
            spec=spec,
            status=status,
        )


def _one(store: Any) -> Any:
    for value in store or ():
        return value
    return None


@dataclass
class Cache:
    """Bound to kopf's index objects by the first handler call after they fill."""

    agents: Any = None
    agents_by_fleet: Any = None
    fleets: Any = None
    pods: Any = None
    policies: Any = None
    tasks: Any = None
    halts: dict[tuple[str, str], Halt] = field(default_factory=dict)
    """(namespace, fleet) -> the router's halt, as last read from the router (RulesSync)."""
    router_figures: dict[tuple[str, str], FleetStats] = field(default_factory=dict)
    """(namespace, fleet) -> the router's latest figures of the fleet (queue, agents, error
    rate per template), kept within about a second by the stats watch (statswatch.py) and
    at least every stats interval by StatsSync."""
    policy_generation: int = 0
    """Bumped on every Policy event; the PolicySet is rebuilt when it moved."""
    _policy_set: tuple[int, PolicySet] | None = None

    @property
    def bound(self) -> bool:
        return self.agents is not None

    def bind(
        self,
        *,
        agents: Any,
        agents_by_fleet: Any,
        fleets: Any,
        pods: Any,
        policies: Any,
        tasks: Any = None,
    ) -> None:
        self.agents, self.agents_by_fleet, self.fleets, self.pods, self.policies = (
            agents,
            agents_by_fleet,
            fleets,
            pods,
            policies,
        )
        self.tasks = tasks

    def policies_changed(self) -> None:
        self.policy_generation += 1

    def policy_set(self) -> PolicySet:
        """Every valid Policy of the cluster, compiled; rebuilt only after a Policy event."""
        if self._policy_set is None or self._policy_set[0] != self.policy_generation:
            generation = self.policy_generation
            views = [_one(store) for store in self.policies.values()] if self.policies else []
            valid = [v.policy for v in views if v is not None and v.policy and not v.deleting]
            self._policy_set = (generation, PolicySet(valid))
        return self._policy_set[1]

    def policy(self, namespace: str, name: str) -> PolicyView | None:
        result: PolicyView | None = _one(self.policies.get((namespace, name)))
        return result

    def policies_in(self, namespace: str) -> list[PolicyView]:
        views = (_one(store) for store in (self.policies.values() if self.policies else ()))
        return [v for v in views if v is not None and v.namespace == namespace]

    def agents_in(self, namespace: str) -> list[AgentView]:
        views = (_one(store) for store in self.agents.values())
        return [v for v in views if v is not None and v.namespace == namespace]

    def fleets_in(self, namespace: str) -> list[FleetView]:
        views = (_one(store) for store in self.fleets.values())
        return [v for v in views if v is not None and v.namespace == namespace]

    def agent(self, namespace: str, name: str) -> AgentView | None:
        result: AgentView | None = _one(self.agents.get((namespace, name)))
        return result

    def fleet(self, namespace: str, name: str) -> FleetView | None:
        result: FleetView | None = _one(self.fleets.get((namespace, name)))
        return result

    def pod(self, namespace: str, agent: str) -> PodView | None:
        result: PodView | None = _one(self.pods.get((namespace, agent)))
        return result

    def task(self, namespace: str, name: str) -> TaskView | None:
        result: TaskView | None = _one(self.tasks.get((namespace, name))) if self.tasks else None
        return result

    def all_tasks(self) -> list[TaskView]:
        views = (_one(store) for store in (self.tasks.values() if self.tasks else ()))
        return [v for v in views if v is not None]

    def agents_of(self, namespace: str, fleet: str) -> Iterable[AgentView]:
        return list(self.agents_by_fleet.get((namespace, fleet)) or ())

    def namespaces(self) -> set[str]:
        """Namespaces holding an Agent or a Fleet."""
        return {ns for ns, _ in self.agents} | {ns for ns, _ in self.fleets}

    def counts(self) -> dict[str, int]:
        return {
            "agents": sum(1 for _ in self.agents) if self.bound else 0,
            "fleets": sum(1 for _ in self.fleets) if self.bound else 0,
            "pods": sum(1 for _ in self.pods) if self.bound else 0,
            "policies": sum(1 for _ in self.policies) if self.bound else 0,
            "tasks": sum(1 for _ in self.tasks) if self.bound and self.tasks else 0,
        }
