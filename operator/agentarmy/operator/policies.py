"""Policy reconciler: what a Policy selects and what of it breaks its rules.

Verdicts on Agents and Fleets are their own reconcilers' business (they set
PolicyCompliant); this one only answers, in the Policy's status, "is this
policy doing anything?": Ready, what it matches, how many of its rules are
broken now and the most recent of those violations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from agentarmy.api import conditions as c
from agentarmy.api.agent import AgentSpec
from agentarmy.api.common import Condition, set_condition
from agentarmy.api.fleet import FleetSpec
from agentarmy.api.policy import MAX_LISTED_VIOLATIONS, PolicyStatus, PolicyViolation
from agentarmy.operator.cache import AgentView, Cache, FleetView, PolicyView
from agentarmy.operator.kube import Kube
from agentarmy.operator.workqueue import Key
from agentarmy.policy import PolicySet, Subject, agent_subject, fleet_subject
from agentarmy.policy.validation import spec_problems


@dataclass(frozen=True)
class Seen:
    kind: Literal["Agent", "Fleet"]
    subject: Subject
    since: str
    """When the object's PolicyCompliant condition last changed (orders violations)."""


def _since(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("type") == c.POLICY_COMPLIANT:
            return str(condition.get("lastTransitionTime", ""))
    return ""


def subjects(cache: Cache, namespace: str) -> Iterator[Seen]:
    """Every Agent and Fleet of ``namespace`` whose spec validates."""
    fleet: FleetView
    for fleet in cache.fleets_in(namespace):
        if fleet.deleting:
            continue
        try:
            spec = FleetSpec.model_validate(fleet.spec)
        except ValidationError:
            continue
        yield Seen("Fleet", fleet_subject(namespace, fleet.name, fleet.labels, spec), _since(fleet.status))
    agent: AgentView
    for agent in cache.agents_in(namespace):
        if agent.deleting:
            continue
        try:
            agent_spec = AgentSpec.model_validate(agent.spec)
        except ValidationError:
            continue
        yield Seen(
            "Agent",
            agent_subject(namespace, agent.name, agent.labels, agent_spec),
            _since(agent.status),
        )


def policy_status(view: PolicyView, seen: list[Seen]) -> PolicyStatus:
    current = PolicyStatus.model_validate(view.status or {})
    gen = view.generation
    conditions: list[Condition] = list(current.conditions)
    problems = [view.error] if view.policy is None else spec_problems(view.policy.spec)
    if view.policy is None or problems:
        message = "; ".join(problems)
        conditions = set_condition(conditions, c.READY, "False", c.INVALID_SPEC, message, gen)
        return current.model_copy(
            update={"conditions": conditions, "observedGeneration": gen}
        )
    alone = PolicySet([view.policy])
    fleets = agents = 0
    violations: list[tuple[str, PolicyViolation]] = []
    for item in seen:
        verdict = alone.evaluate(item.subject)
        if not verdict.policies:
            continue
        if item.kind == "Fleet":
            fleets += 1
        else:
            agents += 1
        violations += [
            (
                item.since,
                PolicyViolation(
                    kind=item.kind,
                    name=item.subject.name,
                    rule=f.rule,
                    message=f.message[:1024],
                ),
            )
            for f in verdict.findings
        ]
    recent = sorted(violations, key=lambda v: (v[0], v[1].kind, v[1].name), reverse=True)
    mode = "denied at admission and held" if view.policy.spec.mode == "enforce" else "reported"
    conditions = set_condition(
        conditions,
        c.READY,
        "True",
        c.POLICY_ACTIVE,
        f"selects {fleets} Fleet(s) and {agents} Agent(s); violations are {mode}",
        gen,
    )
    return PolicyStatus(
        conditions=conditions,
        observedGeneration=gen,
        matchedFleets=fleets,
        matchedAgents=agents,
        violations=len(violations),
        recentViolations=[v for _, v in recent[:MAX_LISTED_VIOLATIONS]],
    )


class PolicyReconciler:
    def __init__(self, cache: Cache, kube: Kube) -> None:
        self.cache = cache
        self.kube = kube

    async def reconcile(self, key: Key) -> float | None:
        namespace, name = key
        view = self.cache.policy(namespace, name)
        if view is None or view.deleting:
            return None
        status = policy_status(view, list(subjects(self.cache, namespace)))
        new = status.model_dump(mode="json", exclude_none=True)
        old = PolicyStatus.model_validate(view.status or {}).model_dump(
            mode="json", exclude_none=True
        )
        if new != old:
            await self.kube.patch_status("Policy", namespace, name, new, view.resource_version)
        return None
