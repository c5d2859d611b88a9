"""Policy reconciler: what a Policy selects and what of it breaks its rules.

Verdicts on Agents and Fleets are their own reconcilers' business (they set
PolicyCompliant); this one only answers, in the Policy's status, "is this
policy doing anything?": Ready, what it matches, how many of its rules are
broken now and the most recent of those violations.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
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


def _parse(kind: Literal["Agent", "Fleet"], view: AgentView | FleetView) -> Seen | None:
    try:
        if kind == "Fleet":
            fleet = FleetSpec.model_validate(view.spec)
            subject = fleet_subject(view.namespace, view.name, view.labels, fleet)
        else:
            agent = AgentSpec.model_validate(view.spec)
            subject = agent_subject(view.namespace, view.name, view.labels, agent)
    except ValidationError:
        return None
    return Seen(kind, subject, _since(view.status))


@dataclass
class Report:
    """What every Policy of a namespace selects and finds, from one pass over its objects."""

    fleets: Counter[str] = field(default_factory=Counter)
    agents: Counter[str] = field(default_factory=Counter)
    violations: dict[str, list[tuple[str, PolicyViolation]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    @classmethod
    def of(cls, policies: PolicySet, seen: Iterable[Seen]) -> Report:
        report = cls()
        for item in seen:
            verdict = policies.evaluate(item.subject)
            counter = report.fleets if item.kind == "Fleet" else report.agents
            counter.update(verdict.policies)
            for f in verdict.findings:
                violation = PolicyViolation(
                    kind=item.kind, name=item.subject.name, rule=f.rule, message=f.message[:1024]
                )
                report.violations[f.policy].append((item.since, violation))
        return report


def policy_status(view: PolicyView, seen: list[Seen]) -> PolicyStatus:
    """The status of one Policy, evaluated alone on ``seen``."""
    alone = PolicySet([view.policy]) if view.policy is not None else PolicySet()
    return status_from(view, Report.of(alone, seen))


def status_from(view: PolicyView, report: Report) -> PolicyStatus:
    current = PolicyStatus.model_validate(view.status or {})
    gen = view.generation
    conditions: list[Condition] = list(current.conditions)
    problems = [view.error] if view.policy is None else spec_problems(view.policy.spec)
    if view.policy is None or problems:
        message = "; ".join(problems)
        conditions = set_condition(conditions, c.READY, "False", c.INVALID_SPEC, message, gen)
        return current.model_copy(update={"conditions": conditions, "observedGeneration": gen})
    ref = view.policy.ref
    fleets, agents = report.fleets[ref], report.agents[ref]
    violations = report.violations.get(ref, [])
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


REPORT_SECONDS = 2.0
"""A namespace's report is recomputed at most this often (see PolicyReconciler.report)."""


@dataclass(frozen=True)
class _Memo:
    generation: int
    """The Policies' generation in the cache it was computed under."""
    stamp: Hashable
    """(uid, resourceVersion) of every object it read."""
    report: Report
    at: float
    settled: bool
    """Computed again with nothing changed since: no need to look again."""


class PolicyReconciler:
    """Level-based, but a namespace's objects are parsed once per resourceVersion and
    evaluated once per change of the namespace: a hundred Policies reconciled in one
    pass share one report instead of each evaluating every object."""

    def __init__(self, cache: Cache, kube: Kube) -> None:
        self.cache = cache
        self.kube = kube
        self._parsed: dict[str, dict[tuple[str, str], tuple[str, Seen | None]]] = {}
        self._reports: dict[str, _Memo] = {}

    def _seen(self, namespace: str) -> tuple[Hashable, list[Seen]]:
        """The namespace's valid Agents and Fleets, and a key that changes when they do."""
        stamp: list[tuple[str, str]] = []
        seen: list[Seen] = []
        views: list[tuple[Literal["Agent", "Fleet"], AgentView | FleetView]] = [
            ("Fleet", v) for v in self.cache.fleets_in(namespace)
        ]
        views += [("Agent", v) for v in self.cache.agents_in(namespace)]
        before = self._parsed.get(namespace, {})
        parsed: dict[tuple[str, str], tuple[str, Seen | None]] = {}
        for kind, view in views:
            if view.deleting:
                continue
            stamp.append((view.uid, view.resource_version))
            memo = before.get((kind, view.uid))
            if memo is None or memo[0] != view.resource_version:
                memo = (view.resource_version, _parse(kind, view))
            parsed[(kind, view.uid)] = memo
            if memo[1] is not None:
                seen.append(memo[1])
        # Only what exists now is kept: the memo never outgrows the namespace.
        self._parsed[namespace] = parsed
        return tuple(stamp), seen

    def report(self, namespace: str) -> tuple[Report, float | None]:
        """The namespace's report, and when to look again if it may be behind.

        Recomputed at most once per REPORT_SECONDS per namespace: under a stream of
        changes (a Fleet created every few milliseconds) a hundred Policies share one
        pass instead of each scanning the namespace. A Policy that reads a report
        younger than that is queued again for when it may be recomputed, so the last
        change always reaches status."""
        now = time.monotonic()
        generation = self.cache.policy_generation
        memo = self._reports.get(namespace)
        if memo is not None and memo.generation == generation:
            age = now - memo.at
            if age < REPORT_SECONDS:
                return memo.report, None if memo.settled else REPORT_SECONDS - age
        stamp, seen = self._seen(namespace)
        if memo is not None and (memo.generation, memo.stamp) == (generation, stamp):
            self._reports[namespace] = replace(memo, at=now, settled=True)
            return memo.report, None
        fresh = Report.of(self.cache.policy_set(), seen)
        self._reports[namespace] = _Memo(generation, stamp, fresh, now, settled=False)
        return fresh, REPORT_SECONDS

    async def reconcile(self, key: Key) -> float | None:
        namespace, name = key
        view = self.cache.policy(namespace, name)
        if view is None or view.deleting:
            return None
        report, again = self.report(namespace)
        status = status_from(view, report)
        new = status.model_dump(mode="json", exclude_none=True)
        old = PolicyStatus.model_validate(view.status or {}).model_dump(
            mode="json", exclude_none=True
        )
        if new != old:
            await self.kube.patch_status("Policy", namespace, name, new, view.resource_version)
        return again
