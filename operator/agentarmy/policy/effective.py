"""The runtime rules in force for a fleet: every selecting Policy combined, strictest wins.

Limits take the lowest value (and remember which Policy set it); allow-lists
intersect (a tool must be allowed by every Policy that lists tools); approval
lists unite; egress allows only what every Policy allows. Enforce-mode
Policies bind; audit-mode ones are combined apart, for reporting only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentarmy.api.agent import PolicyOverrides
from agentarmy.api.common import parse_duration
from agentarmy.api.rules import (
    ApprovalRule,
    BudgetRule,
    FleetRules,
    RuleLimit,
    SentinelRule,
    ToolAllowList,
    ToolRules,
)
from agentarmy.policy.engine import NamedPolicy, PolicySet
from agentarmy.policy.findings import Finding, Mode
from agentarmy.policy.globs import any_match
from agentarmy.policy.subjects import Labels

OVERRIDES = "policyOverrides"
"""The source named when an Agent's own policyOverrides set the strictest limit."""


@dataclass(frozen=True, order=True)
class Limit:
    """A numeric limit and the Policy (``namespace/name``) that set it."""

    value: float
    policy: str


@dataclass(frozen=True)
class TokenBudget:
    tokens: int
    window_seconds: float
    policy: str


@dataclass(frozen=True)
class Egress:
    cidrs: tuple[str, ...]
    ports: tuple[int, ...]
    allow_dns: bool
    policies: tuple[str, ...]


@dataclass(frozen=True)
class RuntimeRules:
    """What a fleet's agents may do while they run, under one mode's Policies."""

    mode: Mode
    policies: tuple[str, ...] = ()
    max_replicas: Limit | None = None
    tasks_per_minute: Limit | None = None
    burst: Limit | None = None
    token_budgets: tuple[TokenBudget, ...] = ()
    allowed_tools: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(policy, globs): a tool must match one glob of every entry."""
    approval_tools: tuple[tuple[str, str], ...] = ()
    """(tool glob, policy) pairs; a matching call waits for a human."""
    approval_timeout: Limit | None = None
    fail_on_rejection: str | None = None
    """The Policy that makes a rejected call fail the task (else the model goes on)."""
    max_error_rate: Limit | None = None
    min_tasks: Limit | None = None
    window_seconds: Limit | None = None
    max_tokens_per_hour: Limit | None = None
    max_cost_per_hour: Limit | None = None
    max_task_depth: Limit | None = None
    max_children_per_wait: Limit | None = None
    egress: Egress | None = None

    def tool_call(self, tool: str) -> ToolDecision:
        """May an agent call ``tool``, and does the call need a human's approval?"""
        return tool_decision(self.allowed_tools, self.approval_tools, tool, self.mode)

    def to_wire(self, fleet: str) -> FleetRules:
        """What the router enforces for ``fleet`` (it keeps this in its store)."""

        def limit(value: Limit | None) -> RuleLimit | None:
            return None if value is None else RuleLimit(value=value.value, policy=value.policy)

        return FleetRules(
            fleet=fleet,
            policies=list(self.policies),
            tasksPerMinute=limit(self.tasks_per_minute),
            burst=limit(self.burst),
            tokenBudgets=[
                BudgetRule(tokens=b.tokens, windowSeconds=b.window_seconds, policy=b.policy)
                for b in self.token_budgets
            ],
            allowedTools=[ToolAllowList(policy=p, globs=list(g)) for p, g in self.allowed_tools],
            approvalTools=[ApprovalRule(tool=t, policy=p) for t, p in self.approval_tools],
            approvalTimeoutSeconds=limit(self.approval_timeout),
            onRejection="fail" if self.fail_on_rejection else "continue",
            sentinel=SentinelRule(
                maxErrorRate=limit(self.max_error_rate),
                minTasks=limit(self.min_tasks),
                windowSeconds=limit(self.window_seconds),
                maxTokensPerHour=limit(self.max_tokens_per_hour),
                maxCostPerHour=limit(self.max_cost_per_hour),
            ),
            maxTaskDepth=limit(self.max_task_depth),
            maxChildrenPerWait=limit(self.max_children_per_wait),
        )

    @property
    def binds_at_runtime(self) -> bool:
        """Whether any rule here is the router's or the agent runtime's to enforce."""
        return bool(
            self.tasks_per_minute
            or self.token_budgets
            or self.allowed_tools
            or self.approval_tools
            or self.max_error_rate
            or self.max_tokens_per_hour
            or self.max_cost_per_hour
            or self.max_task_depth
            or self.max_children_per_wait
        )


def judge_tool(rules: ToolRules | FleetRules, tool: str) -> ToolDecision:
    """``tool_decision`` over the tool rules as the router keeps them or a lease carries them."""
    return tool_decision(
        [(entry.policy, entry.globs) for entry in rules.allowedTools],
        [(entry.tool, entry.policy) for entry in rules.approvalTools],
        tool,
    )


def tool_decision(
    allowed_tools: Iterable[tuple[str, Sequence[str]]],
    approval_tools: Iterable[tuple[str, str]],
    tool: str,
    mode: Mode = "enforce",
) -> ToolDecision:
    """The one judgement of a tool call, used by the policy library and the agent runtime:
    ``allowed_tools`` are (policy, globs) — the tool must match a glob of each; a match of
    an ``approval_tools`` (glob, policy) entry means a person must approve the call."""
    for policy, globs in allowed_tools:
        if not any_match(tool, tuple(globs)):
            return ToolDecision(
                allowed=False,
                finding=Finding(
                    policy,
                    "allowedTools",
                    "tool",
                    mode,
                    f'tool "{tool}" is not allowed by {", ".join(globs)}',
                ),
            )
    approvers = tuple(p for pattern, p in approval_tools if any_match(tool, (pattern,)))
    return ToolDecision(allowed=True, approval_by=approvers)


@dataclass(frozen=True)
class ToolDecision:
    allowed: bool
    finding: Finding | None = None
    approval_by: tuple[str, ...] = ()

    @property
    def needs_approval(self) -> bool:
        return bool(self.approval_by)


@dataclass(frozen=True)
class EffectiveRules:
    """The enforced rules of a fleet, and what audit-mode Policies would add."""

    enforced: RuntimeRules = field(default_factory=lambda: RuntimeRules("enforce"))
    audited: RuntimeRules = field(default_factory=lambda: RuntimeRules("audit"))


def _lowest(current: Limit | None, value: float | None, policy: str) -> Limit | None:
    if value is None:
        return current
    candidate = Limit(value, policy)
    return candidate if current is None or candidate < current else current


def _intersect_cidrs(left: tuple[str, ...], right: tuple[str, ...]) -> tuple[str, ...]:
    """CIDRs allowed by both lists (two CIDRs overlap only when one contains the other)."""
    result: set[str] = set()
    for a_text in left:
        a = ipaddress.ip_network(a_text, strict=False)
        for b_text in right:
            b = ipaddress.ip_network(b_text, strict=False)
            if a.version != b.version or not a.overlaps(b):
                continue
            result.add(str(a if a.prefixlen >= b.prefixlen else b))
    return tuple(sorted(result))


def combine(
    mode: Mode, policies: Iterable[NamedPolicy], overrides: PolicyOverrides | None = None
) -> RuntimeRules:
    """Fold ``policies`` (all of one mode) and an Agent's overrides into one RuntimeRules."""
    refs: list[str] = []
    max_replicas = tasks = burst = error_rate = min_tasks = window = tokens_hour = cost = None
    depth: Limit | None = None
    fan_out: Limit | None = None
    approval_timeout: Limit | None = None
    fail_on_rejection: str | None = None
    budgets: list[TokenBudget] = []
    tools: list[tuple[str, tuple[str, ...]]] = []
    approvals: set[tuple[str, str]] = set()
    egress: Egress | None = None
    for policy in policies:
        ref, rules = policy.ref, policy.spec.rules
        refs.append(ref)
        max_replicas = _lowest(max_replicas, rules.maxReplicasPerFleet, ref)
        if rules.taskRateLimit is not None:
            rate = rules.taskRateLimit
            tasks = _lowest(tasks, rate.tasksPerMinute, ref)
            burst = _lowest(burst, rate.burst or rate.tasksPerMinute, ref)
        if rules.tokenBudget is not None:
            budget = rules.tokenBudget
            budgets.append(TokenBudget(budget.tokens, parse_duration(budget.window), ref))
        if rules.allowedTools:
            tools.append((ref, tuple(sorted(rules.allowedTools))))
        approvals.update((tool, ref) for tool in rules.approvalRequiredTools)
        if rules.approvals is not None:
            seconds = parse_duration(rules.approvals.timeout)
            approval_timeout = _lowest(approval_timeout, seconds, ref)
            if rules.approvals.onRejection == "fail" and fail_on_rejection is None:
                fail_on_rejection = ref
        if rules.sentinel is not None:
            bounds = rules.sentinel
            error_rate = _lowest(error_rate, bounds.maxErrorRate, ref)
            if bounds.maxErrorRate is not None:
                # A verdict on fewer tasks or a shorter window comes sooner: stricter.
                min_tasks = _lowest(min_tasks, bounds.minTasks, ref)
                window = _lowest(window, parse_duration(bounds.window), ref)
            tokens_hour = _lowest(tokens_hour, bounds.maxTokensPerHour, ref)
            cost = _lowest(cost, bounds.maxCostPerHour, ref)
        depth = _lowest(depth, rules.maxTaskDepth, ref)
        fan_out = _lowest(fan_out, rules.maxChildrenPerWait, ref)
        if rules.egress is not None:
            rule = rules.egress
            if egress is None:
                egress = Egress(
                    tuple(sorted(set(rule.cidrs))),
                    tuple(sorted(set(rule.ports))),
                    rule.allowDNS,
                    (ref,),
                )
            else:
                egress = Egress(
                    _intersect_cidrs(egress.cidrs, tuple(rule.cidrs)),
                    tuple(sorted(set(egress.ports) & set(rule.ports))),
                    egress.allow_dns and rule.allowDNS,
                    (*egress.policies, ref),
                )
    if overrides is not None:
        tasks = _lowest(tasks, overrides.tasksPerMinute, OVERRIDES)
        if overrides.tokensPerHour is not None:
            budgets.append(TokenBudget(overrides.tokensPerHour, 3600.0, OVERRIDES))
        approvals.update((tool, OVERRIDES) for tool in overrides.approvalRequiredTools)
    return RuntimeRules(
        mode=mode,
        policies=tuple(refs),
        max_replicas=max_replicas,
        tasks_per_minute=tasks,
        burst=burst,
        token_budgets=tuple(sorted(set(budgets), key=lambda b: (b.tokens, b.policy))),
        allowed_tools=tuple(tools),
        approval_tools=tuple(sorted(approvals)),
        approval_timeout=approval_timeout,
        fail_on_rejection=fail_on_rejection,
        max_error_rate=error_rate,
        min_tasks=min_tasks,
        window_seconds=window,
        max_tokens_per_hour=tokens_hour,
        max_cost_per_hour=cost,
        max_task_depth=depth,
        max_children_per_wait=fan_out,
        egress=egress,
    )


def effective_rules(
    policies: PolicySet,
    namespace: str,
    label_sets: tuple[Labels, ...],
    overrides: PolicyOverrides | None = None,
) -> EffectiveRules:
    """The runtime rules of a fleet whose Fleet and Agents carry ``label_sets``."""
    selected = policies.selecting(namespace, label_sets)
    return EffectiveRules(
        enforced=combine("enforce", (p for p in selected if p.spec.mode == "enforce"), overrides),
        audited=combine("audit", (p for p in selected if p.spec.mode == "audit")),
    )
