"""Policy: governance for the Agents and Fleets it selects in its namespace."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from agentarmy.api.agent import ToolName
from agentarmy.api.common import Condition, Duration, LabelSelector, Model
from agentarmy.api.wire import MAX_CHILDREN, MAX_DEPTH

Glob = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s]+$")]
Cidr = Annotated[
    str,
    StringConstraints(
        max_length=64,
        pattern=r"^(([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}|[0-9a-fA-F:]+/[0-9]{1,3})$",
    ),
]


class ModelRule(Model):
    """Which providers and model names are allowed ('*' globs allowed in names)."""

    providers: list[str] = Field(
        default_factory=list,
        description="Allowed providers; empty allows any.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    names: list[Glob] = Field(
        default_factory=list,
        description="Allowed model names (globs); empty allows any.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class RateLimit(Model):
    """A token bucket on task submissions."""

    tasksPerMinute: int = Field(ge=1, le=10_000_000, description="Sustained tasks per minute.")
    burst: int = Field(
        default=0, ge=0, description="Extra tasks allowed in a burst (0: same as rate)."
    )


class TokenBudget(Model):
    """A cap on model tokens used per window."""

    tokens: int = Field(ge=1, description="Tokens allowed per window.")
    window: Duration = Field(default="1h", description="Length of the window.")


class ApprovalSettings(Model):
    """How a call of an approvalRequiredTools tool is decided when no person does."""

    timeout: Duration = Field(default="1h", description="How long a call waits for a person.")
    onTimeout: Literal["reject"] = Field(
        default="reject", description="What a timeout means (only reject: nothing runs unseen)."
    )
    onRejection: Literal["continue", "fail"] = Field(
        default="continue",
        description="continue: the model is told and goes on; fail: the task fails.",
    )


class SentinelBounds(Model):
    """Runtime bounds; a fleet that breaches one is halted (no dispatch) until fixed."""

    maxErrorRate: float | None = Field(
        default=None, ge=0, le=1, description="Halt above this task error rate (0..1)."
    )
    minTasks: int = Field(
        default=20, ge=1, description="Tasks in the window before the error rate counts."
    )
    window: Duration = Field(default="5m", description="Window the rates are measured over.")
    maxTokensPerHour: int | None = Field(
        default=None, ge=1, description="Halt when the fleet uses more tokens per hour."
    )
    maxCostPerHour: float | None = Field(
        default=None,
        ge=0,
        description="Halt above this cost per hour (in the provider's currency).",
    )


class EgressRule(Model):
    """Network destinations agents may reach; rendered to a NetworkPolicy."""

    cidrs: list[Cidr] = Field(
        default_factory=list,
        description="Allowed destination CIDRs.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [443],
        description="Allowed destination TCP ports.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    allowDNS: bool = Field(default=True, description="Allow DNS lookups to kube-dns.")


class PolicyRules(Model):
    """What selected agents may do. An empty rule allows everything of its kind."""

    models: ModelRule | None = Field(default=None, description="Allowed providers and models.")
    allowedTools: list[Glob] = Field(
        default_factory=list,
        description="Tools agents may be given (globs); empty allows any.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    allowedImageRegistries: list[Glob] = Field(
        default_factory=list,
        description="Image prefixes agents may run, e.g. ghcr.io/acme/; empty allows any.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    maxReplicasPerFleet: int | None = Field(
        default=None, ge=0, description="Upper bound on a Fleet's replicas."
    )
    requireResourceLimits: list[Literal["cpu", "memory"]] = Field(
        default_factory=list,
        description="Resource limits every agent must set.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    taskRateLimit: RateLimit | None = Field(
        default=None, description="Task submission rate per fleet."
    )
    tokenBudget: TokenBudget | None = Field(
        default=None, description="Model tokens per fleet and window."
    )
    approvalRequiredTools: list[ToolName] = Field(
        default_factory=list,
        description="Tools that need a human approval for each call.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    approvals: ApprovalSettings | None = Field(
        default=None,
        description="Timeout and outcome of approvals (default: 1h, reject, continue).",
    )
    sentinel: SentinelBounds | None = Field(default=None, description="Bounds that halt a fleet.")
    maxTaskDepth: int | None = Field(
        default=None,
        ge=0,
        le=MAX_DEPTH,
        description="Deepest task tree a fleet's tasks may grow by starting children "
        f"(a root is 0; 0 allows no children; the router's own bound is {MAX_DEPTH}).",
    )
    maxChildrenPerWait: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CHILDREN,
        description="Most children one task may start in one wait "
        f"(the router's own bound is {MAX_CHILDREN}).",
    )
    egress: EgressRule | None = Field(default=None, description="Egress allow-list for agent pods.")


class PolicySpec(Model):
    """Governance for the Agents and Fleets it selects in its namespace."""

    mode: Literal["enforce", "audit"] = Field(
        default="enforce", description="enforce denies violations; audit only reports them."
    )
    selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Agents/Fleets (by their labels) this policy governs; empty selects all.",
    )
    rules: PolicyRules = Field(default_factory=PolicyRules, description="The rules.")


MAX_LISTED_VIOLATIONS = 20


class PolicyViolation(Model):
    """One broken rule of this Policy on one object."""

    kind: Literal["Agent", "Fleet"] = Field(description="Kind of the object.")
    name: str = Field(description="Name of the object (in the Policy's namespace).")
    rule: str = Field(description="The rule broken, as named in spec.rules.")
    message: Annotated[str, StringConstraints(max_length=1024)] = Field(
        description="What is wrong, naming the field."
    )


class PolicyStatus(Model):
    """What the policy currently governs and has seen."""

    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready when the policy is accepted and enforced.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observedGeneration: int = Field(default=0, ge=0, description="Generation last reconciled.")
    matchedFleets: int = Field(default=0, ge=0, description="Fleets the selector matches.")
    matchedAgents: int = Field(default=0, ge=0, description="Agents the selector matches.")
    violations: int = Field(
        default=0, ge=0, description="Broken rules on the objects it selects, now (both modes)."
    )
    recentViolations: list[PolicyViolation] = Field(
        default_factory=list,
        max_length=MAX_LISTED_VIOLATIONS,
        description="The most recent violations (at most 20; see violations for the total).",
    )
