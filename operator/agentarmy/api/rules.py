"""Runtime rules on the wire: what the operator pushes to the router for each fleet, and
what the router answers when a rule binds (rate limit, budget, halt).

The operator builds these from :func:`agentarmy.policy.effective_rules` (the enforced
Policies of a fleet, strictest wins); the router keeps them in its store, so a router
restart keeps them, and enforces them on submit, dispatch and model calls.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from agentarmy.api.common import DNSLabel, Model
from agentarmy.api.wire import (
    ApprovalRule,
    AttemptRequest,
    Halt,
    OnRejection,
    PolicyRef,
    Request,
    ToolAllowList,
    ToolRules,
)

MAX_FLEETS_PER_SYNC = 5000
__all__ = ["ApprovalRule", "Halt", "PolicyRef", "ToolAllowList", "ToolRules"]


class RuleLimit(Request):
    value: float = Field(ge=0)
    policy: PolicyRef


class BudgetRule(Request):
    tokens: int = Field(ge=1, description="Tokens allowed per window.")
    windowSeconds: float = Field(gt=0, le=366 * 86400)
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
    approvalTimeoutSeconds: RuleLimit | None = None
    onRejection: OnRejection = "continue"
    sentinel: SentinelRule = Field(default_factory=SentinelRule)
    maxTaskDepth: RuleLimit | None = Field(
        default=None, description="Deepest task tree the fleet's tasks may grow (root: 0)."
    )
    maxChildrenPerWait: RuleLimit | None = Field(
        default=None, description="Most children one task may start in one wait."
    )
    canaryTemplateHash: str | None = Field(
        default=None,
        max_length=64,
        description="The template a canary rollout is judging. Dispatch gives its agents "
        "their share of tasks whatever their record (no score, no breaker), so the verdict "
        "gets its evidence; the operator aborts the canary if it errs too often.",
    )


def _last_entry_per_fleet(fleets: list[FleetRules]) -> list[FleetRules]:
    """A fleet listed twice keeps its last entry (as a map's repeated key would)."""
    return list({rules.fleet: rules for rules in fleets}.values())


class NamespaceRules(Request):
    """Every governed fleet of a namespace; fleets not listed have no runtime rules."""

    fleets: list[FleetRules] = Field(default_factory=list, max_length=MAX_FLEETS_PER_SYNC)

    _unique = field_validator("fleets")(_last_entry_per_fleet)


class RulesInForce(Request):
    namespace: DNSLabel
    fleets: list[FleetRules] = Field(default_factory=list, max_length=MAX_FLEETS_PER_SYNC)

    _unique = field_validator("fleets")(_last_entry_per_fleet)


class AllRules(Request):
    """Every governed fleet of every namespace: a full sync replaces all the router holds."""

    namespaces: list[RulesInForce] = Field(default_factory=list)
    """No count limit of its own: the request body limit (8 MiB) bounds it."""

    @field_validator("namespaces")
    @classmethod
    def _last_entry_per_namespace(cls, namespaces: list[RulesInForce]) -> list[RulesInForce]:
        """A namespace listed twice keeps its last entry."""
        return list({group.namespace: group for group in namespaces}.values())


class ResumeRequest(Request):
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""


class Resumed(Model):
    namespace: str
    fleet: str
    resumedBy: str
    resumedAt: float
    wasHalted: Halt | None = None


MAX_TOKENS_PER_CALL = 10_000_000


class TokenReservation(AttemptRequest):
    """Before a model call: count up to ``tokens`` against the fleet's budgets."""

    tokens: int = Field(ge=1, le=MAX_TOKENS_PER_CALL)


class TokenSettlement(AttemptRequest):
    """After a model call: what it really used, against what was reserved."""

    reserved: int = Field(ge=0, le=MAX_TOKENS_PER_CALL)
    used: int = Field(ge=0, le=MAX_TOKENS_PER_CALL)


class TokenGrant(Model):
    tokens: int
    budgeted: bool = Field(description="False when no token budget governs the fleet.")
