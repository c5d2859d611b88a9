"""Runtime rules on the wire: what the operator pushes to the router for each fleet, and
what the router answers when a rule binds (rate limit, budget, halt).

The operator builds these from :func:`agentarmy.policy.effective_rules` (the enforced
Policies of a fleet, strictest wins); the router keeps them in its store, so a router
restart keeps them, and enforces them on submit, dispatch and model calls.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from agentarmy.api.common import DNSLabel, Model
from agentarmy.api.wire import Request

PolicyRef = Annotated[str, StringConstraints(min_length=1, max_length=253)]
"""``namespace/name`` of a Policy, or ``policyOverrides`` for an Agent's own limits."""
MAX_FLEETS_PER_SYNC = 5000


class RuleLimit(Request):
    value: float = Field(ge=0)
    policy: PolicyRef


class BudgetRule(Request):
    tokens: int = Field(ge=1, description="Tokens allowed per window.")
    windowSeconds: float = Field(gt=0, le=366 * 86400)
    policy: PolicyRef


class ToolAllowList(Request):
    policy: PolicyRef
    globs: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        max_length=256
    )


class ApprovalRule(Request):
    tool: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    policy: PolicyRef


class SentinelRule(Request):
    maxErrorRate: RuleLimit | None = None
    minTasks: RuleLimit | None = None
    windowSeconds: RuleLimit | None = None
    maxTokensPerHour: RuleLimit | None = None
    maxCostPerHour: RuleLimit | None = None


class FleetRules(Request):
    """The enforced runtime rules of one fleet."""

    fleet: DNSLabel
    policies: list[PolicyRef] = Field(default_factory=list, max_length=1000)
    tasksPerMinute: RuleLimit | None = None
    burst: RuleLimit | None = None
    tokenBudgets: list[BudgetRule] = Field(default_factory=list, max_length=100)
    allowedTools: list[ToolAllowList] = Field(default_factory=list, max_length=100)
    approvalTools: list[ApprovalRule] = Field(default_factory=list, max_length=256)
    sentinel: SentinelRule = Field(default_factory=SentinelRule)


class NamespaceRules(Request):
    """Every governed fleet of a namespace; fleets not listed have no runtime rules."""

    fleets: list[FleetRules] = Field(default_factory=list, max_length=MAX_FLEETS_PER_SYNC)


class RulesInForce(Model):
    namespace: str
    fleets: list[FleetRules]


class ToolRules(Model):
    """What a lease carries so the agent runtime can judge each tool call itself."""

    allowedTools: list[ToolAllowList] = Field(default_factory=list)
    approvalTools: list[ApprovalRule] = Field(default_factory=list)


class Halt(Model):
    """Why dispatch to a fleet stopped. Only a person (or clearing the cause) resumes it."""

    namespace: str
    fleet: str
    rule: str = Field(description="The sentinel bound breached, e.g. maxErrorRate.")
    policy: str
    measured: float
    bound: float
    sample: int = Field(default=0, description="Tasks the measurement is based on.")
    message: str
    haltedAt: float


class ResumeRequest(Request):
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""


class Resumed(Model):
    namespace: str
    fleet: str
    resumedBy: str
    resumedAt: float
    wasHalted: Halt | None = None
