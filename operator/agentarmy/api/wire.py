"""The router's wire format: what callers, agents and the operator send and get back.

Bounds and defaults come from :mod:`agentarmy.api.task` (priority, attempts,
timeout, phases) so the Task CRD and the router API cannot drift apart.
Times on the wire are Unix seconds (float); the operator turns them into
RFC 3339 when it mirrors them into status.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import Field, StringConstraints, ValidationInfo, field_validator

from agentarmy.api.agent import Capability
from agentarmy.api.common import DNSLabel, FreeForm, LabelValue, Model, parse_duration
from agentarmy.api.task import TaskPhase, TaskSpec

MAX_INPUT_BYTES = 256 * 1024
"""Largest task input or result, as JSON."""
MAX_BATCH = 1000
"""Most tasks in one batch submission or results in one report."""
MAX_CLAIM = 256
MAX_WAIT_SECONDS = 60.0
MAX_ERROR_CHARS = 4096

TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
TaskId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TASK_ID_PATTERN)]
TraceId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
"""W3C trace id: 32 lower-case hex digits."""
TemplateHash = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")]
ErrorText = Annotated[str, StringConstraints(max_length=MAX_ERROR_CHARS)]

AttemptOutcome = Literal["Succeeded", "Failed", "LeaseExpired", "TimedOut", "Released", "Cancelled"]
"""How one attempt ended. Released attempts (agent shutting down) do not count against maxAttempts."""
COUNTED_OUTCOMES: frozenset[str] = frozenset({"Failed", "LeaseExpired", "TimedOut"})


def _check_json_size(value: FreeForm | None, what: str) -> FreeForm | None:
    if value is not None and len(pydantic_core.to_json(value)) > MAX_INPUT_BYTES:
        raise ValueError(f"{what} is larger than {MAX_INPUT_BYTES} bytes as JSON")
    return value


POSITIVE_DURATION_PATTERN = r"^(?=.*[1-9])([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
"""DURATION_PATTERN that also refuses zero, so the published schema says what we accept."""


class Request(Model):
    """Base of request bodies: JSON semantics for numbers (1.0 is an integer, false is not a number)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        numeric = (int, float, int | None, float | None)
        if (
            isinstance(value, bool)
            and cls.model_fields[info.field_name or ""].annotation in numeric
        ):
            raise ValueError("must be a number, not true/false")
        return value


def _submit_schema(schema: dict[str, Any]) -> None:
    schema["properties"]["timeout"]["pattern"] = POSITIVE_DURATION_PATTERN


class SubmitTask(TaskSpec, Request):
    """A task to run: the Task CRD's spec plus where it lives and its trace id."""

    model_config = TaskSpec.model_config | {"json_schema_extra": _submit_schema}

    namespace: DNSLabel = Field(default="default", description="Namespace of the target fleet.")
    traceId: TraceId | None = Field(
        default=None, description="Trace id to carry to the result (default: a new one)."
    )

    @field_validator("timeout")
    @classmethod
    def _timeout_in_range(cls, value: str) -> str:
        if parse_duration(value) <= 0:
            raise ValueError("timeout must be above zero")
        return value

    @field_validator("input")
    @classmethod
    def _input_size(cls, value: FreeForm) -> FreeForm:
        _check_json_size(value, "input")
        return value


class TokenUsage(Request):
    """Model tokens an attempt used, for budgets."""

    promptTokens: int = Field(default=0, ge=0)
    completionTokens: int = Field(default=0, ge=0)
    totalTokens: int = Field(default=0, ge=0)
    cost: float = Field(
        default=0.0, ge=0, description="What the tokens cost, from the Agent's model pricing."
    )


class Attempt(Model):
    """One run of a task on one agent; kept for every attempt, with its reason."""

    number: int = Field(ge=1, description="1 for the first attempt; part of the fencing token.")
    agent: str = Field(description="namespace/name of the agent that held the lease.")
    templateHash: TemplateHash = Field(default="", description="Template hash of that agent.")
    startedAt: float = Field(description="Unix seconds when the lease was granted.")
    endedAt: float | None = Field(default=None, description="Unix seconds when the attempt ended.")
    outcome: AttemptOutcome | None = Field(default=None, description="Empty while running.")
    reason: str = Field(default="", description="Why it failed, expired or was released.")


ApprovalDecision = Literal["Approved", "Rejected", "TimedOut"]
OnRejection = Literal["continue", "fail"]
CHECKPOINT_NOTE = "The skill's own state (e.g. the conversation so far), stored with the task."


class Approval(Model):
    """A tool call that waits for a person, and (once made) the decision."""

    id: str = Field(description="Names this request; a decision applies to it only.")
    tool: str
    arguments: FreeForm = Field(default_factory=dict)
    toolCallId: str = Field(default="", description="The model's id of the call.")
    agent: str = Field(description="namespace/name of the agent that asked.")
    attempt: int = Field(ge=1, description="The attempt that asked.")
    policies: list[str] = Field(description="The Policies whose approvalRequiredTools match.")
    reason: str = Field(default="", description="Why the agent wants to call it.")
    requestedAt: float
    deadlineAt: float = Field(description="When it times out (then rejected).")
    onRejection: OnRejection = Field(
        default="continue",
        description="continue: the model is told and goes on; fail: the task fails.",
    )
    decision: ApprovalDecision | None = None
    decidedBy: str = Field(default="", description="The principal who decided (or 'timeout').")
    decidedAt: float | None = None
    decisionReason: str = ""


JoinMode = Literal["all", "failFast"]
"""all: resume once every child has ended; failFast: also at the first child that did not
succeed (its unfinished siblings are cancelled)."""
MAX_DEPTH = 8
"""Default bound on a task tree's depth (a root is 0); a fleet's Policy may lower it."""
MAX_CHILDREN = MAX_BATCH
"""Default bound on the children one wait may start; a fleet's Policy may lower it."""


class Join(Model):
    """A parent's wait for the children it started in one attempt (``round``)."""

    round: int = Field(ge=1, description="The parent's attempt that started the children.")
    mode: JoinMode
    children: int = Field(ge=0, description="Children started in this round.")
    waitingSince: float
    resumedAt: float | None = Field(default=None, description="When the join released it.")
    succeeded: int = Field(default=0, description="Children that succeeded (set at the join).")
    failed: int = Field(
        default=0, description="Children that failed, dead-lettered or were cancelled."
    )
    reason: str = Field(default="", description="Why it resumed: allEnded or childFailed.")


class ChildOutcome(Model):
    """One child of the last join, as the resumed parent's lease carries it."""

    taskId: str
    fleet: str
    capability: str
    phase: TaskPhase
    input: FreeForm = Field(default_factory=dict)
    result: FreeForm | None = None
    error: str = ""


class Task(Model):
    """A task as the router stores and reports it."""

    id: TaskId
    namespace: DNSLabel
    fleet: DNSLabel
    capability: Capability
    input: FreeForm = Field(default_factory=dict)
    priority: int
    timeout: str
    maxAttempts: int
    idempotencyKey: str | None = None
    parentTaskId: str | None = None
    traceId: str
    phase: TaskPhase = Field(
        description="Queued, Running, Succeeded, Failed, DeadLettered or Cancelled."
    )
    seq: int = Field(description="Submission order; FIFO within a priority.")
    createdAt: float
    availableAt: float = Field(description="Earliest time a queued task may be claimed (backoff).")
    agent: str = Field(default="", description="Agent of the current or last attempt.")
    attempt: int = Field(default=0, ge=0, description="Number of the current or last attempt.")
    leaseExpiresAt: float | None = Field(default=None, description="While running: lease end.")
    deadlineAt: float | None = Field(default=None, description="While running: attempt timeout.")
    attempts: list[Attempt] = Field(default_factory=list)
    result: FreeForm | None = None
    error: str = Field(default="", description="Why the task failed or was dead-lettered.")
    usage: TokenUsage | None = None
    finishedAt: float | None = None
    approval: Approval | None = Field(default=None, description="The last approval asked for.")
    checkpoint: FreeForm | None = Field(default=None, description=CHECKPOINT_NOTE)
    depth: int = Field(default=0, ge=0, description="0 for a root; a child is its parent's + 1.")
    joinRound: int | None = Field(
        default=None, description="For a child a parent waits for: the parent's join round."
    )
    join: Join | None = Field(default=None, description="The last wait for children, if any.")


class SubmitResponse(Model):
    task: Task
    created: bool = Field(description="False when the idempotency key matched an earlier task.")


class SubmitBatchRequest(Request):
    tasks: list[SubmitTask] = Field(min_length=1, max_length=MAX_BATCH)


class SubmitBatchResponse(Model):
    results: list[SubmitResponse]


class TaskList(Model):
    tasks: list[Task]
    next: str | None = Field(default=None, description="Cursor for the next page, if any.")


class RegisterAgent(Request):
    """An agent announcing itself; repeated registration updates it."""

    namespace: DNSLabel
    name: DNSLabel
    fleet: DNSLabel
    capabilities: list[Capability] = Field(min_length=1, max_length=64)
    concurrency: int = Field(default=1, ge=1, le=MAX_CLAIM)
    templateHash: TemplateHash = ""
    role: LabelValue = "worker"


class AgentInfo(RegisterAgent):
    registeredAt: float
    lastHeartbeat: float
    ready: bool = Field(description="False once the agent said it is draining.")


PolicyRef = Annotated[str, StringConstraints(min_length=1, max_length=253)]
"""``namespace/name`` of a Policy, or ``policyOverrides`` for an Agent's own limits."""


class ToolAllowList(Request):
    """A tool must match one of ``globs`` (set by ``policy``) to be called."""

    policy: PolicyRef
    globs: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        max_length=256
    )


class ApprovalRule(Request):
    """A call of a tool matching ``tool`` waits for a person's approval."""

    tool: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    policy: PolicyRef


class ToolRules(Model):
    """The tool rules of the task's fleet, carried by its lease: the agent runtime judges
    every tool call with them (see agentarmy.policy.tool_decision)."""

    allowedTools: list[ToolAllowList] = Field(default_factory=list)
    approvalTools: list[ApprovalRule] = Field(default_factory=list)


class _LeaseFields(Model):
    taskId: TaskId
    attempt: int = Field(ge=1)


class LeaseRef(_LeaseFields, Request):
    """The fencing token: a task id and the attempt number the lease was granted for."""


class Lease(_LeaseFields):
    """A claimed task, as handed to an agent."""

    capability: Capability
    input: FreeForm
    priority: int
    traceId: str
    parentTaskId: str | None = None
    leaseExpiresAt: float
    deadlineAt: float = Field(description="When the attempt times out (the task's timeout).")
    tools: ToolRules | None = Field(default=None, description="Tool rules in force, if any.")
    approval: Approval | None = Field(
        default=None, description="The approval this task waited for, decided (on a resume)."
    )
    checkpoint: FreeForm | None = Field(default=None, description=CHECKPOINT_NOTE)
    children: list[ChildOutcome] | None = Field(
        default=None, description="On a resume after a join: the children, in start order."
    )


class RefusedBy(Request):
    policy: PolicyRef
    rule: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    tool: Annotated[str, StringConstraints(max_length=256)] = ""


class TaskResult(LeaseRef):
    """How an attempt ended, reported by the agent holding its lease."""

    outcome: Literal["succeeded", "failed", "released"]
    result: FreeForm | None = None
    error: ErrorText = ""
    retryable: bool = Field(default=True, description="False: fail the task without retrying.")
    usage: TokenUsage | None = None
    refusedBy: RefusedBy | None = Field(
        default=None, description="Set when a Policy rule, judged by the agent, failed it."
    )

    @field_validator("result")
    @classmethod
    def _result_size(cls, value: FreeForm | None) -> FreeForm | None:
        return _check_json_size(value, "result")


class ResultAck(_LeaseFields):
    status: Literal["recorded", "stale"]
    phase: TaskPhase | None = None
    message: str = ""


class ClaimRequest(Request):
    max: int = Field(default=1, ge=1, le=MAX_CLAIM, description="Most tasks to lease.")
    waitSeconds: float = Field(
        default=10.0, ge=0, le=MAX_WAIT_SECONDS, description="Long-poll time."
    )
    results: list[TaskResult] = Field(
        default_factory=list,
        max_length=MAX_BATCH,
        description="Results to record before claiming (saves a round trip).",
    )


class ClaimResponse(Model):
    tasks: list[Lease]
    results: list[ResultAck] = Field(default_factory=list)


class HeartbeatRequest(Request):
    leases: list[LeaseRef] = Field(default_factory=list, max_length=MAX_BATCH)
    draining: bool = Field(default=False, description="True: send no new tasks to this agent.")


class LeaseStatus(_LeaseFields):
    status: Literal["extended", "stale", "cancelled"]
    leaseExpiresAt: float | None = None
    message: str = ""


class HeartbeatResponse(Model):
    leases: list[LeaseStatus]


class ReportRequest(Request):
    results: list[TaskResult] = Field(min_length=1, max_length=MAX_BATCH)


class ReportResponse(Model):
    results: list[ResultAck]


class AttemptRequest(Request):
    attempt: int = Field(ge=1, description="Attempt number of the lease (the fencing token).")


class CompleteRequest(AttemptRequest):
    result: FreeForm = Field(default_factory=dict)
    usage: TokenUsage | None = None

    @field_validator("result")
    @classmethod
    def _result_size(cls, value: FreeForm) -> FreeForm:
        _check_json_size(value, "result")
        return value


class FailRequest(AttemptRequest):
    error: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ERROR_CHARS)]
    retryable: bool = True


class SubtaskRequest(AttemptRequest):
    """A hand-off: the agent holding the parent's lease submits a task to another fleet."""

    task: SubmitTask


BreakerState = Literal["closed", "open", "half-open"]
"""An agent's circuit breaker in the router (see router/scoring.py)."""


class AgentStats(Model):
    name: str
    ready: bool
    live: bool = Field(description="Heartbeat seen within the liveness window.")
    templateHash: str
    running: int
    succeeded: int
    failed: int
    lastHeartbeat: float
    score: float = Field(
        default=1.0,
        description="Routing weight in (0, 1] from recent results, relative to the fleet "
        "(1: nothing against the agent). Soft state of the router replica that answers.",
    )
    successRate: float = Field(
        default=1.0, description="Decayed share of the agent's recent attempts that succeeded."
    )
    latencySeconds: float = Field(
        default=0.0, description="Decayed mean duration of its successful attempts (0: none)."
    )
    breaker: BreakerState = Field(
        default="closed",
        description="Circuit breaker: open gives the agent no new task; half-open one probe.",
    )


class TemplateStats(Model):
    templateHash: str
    attempts: int
    failures: int
    errorRate: float


class Halt(Model):
    """Why the sentinel stopped dispatch to a fleet. Only a person (or clearing the cause) resumes it."""

    namespace: str
    fleet: str
    rule: str = Field(description="The sentinel bound breached, e.g. maxErrorRate.")
    policy: str
    measured: float
    bound: float
    sample: int = Field(default=0, description="Tasks the measurement is based on.")
    message: str
    haltedAt: float


class HaltList(Model):
    halts: list[Halt]


class ChildrenRequest(AttemptRequest):
    """From the agent holding the lease: start these children and park the task until they
    end (the lease ends; the task resumes on any agent of its fleet with their results)."""

    tasks: list[SubmitTask] = Field(min_length=1, max_length=MAX_CHILDREN)
    join: JoinMode = "all"
    checkpoint: FreeForm = Field(default_factory=dict, description=CHECKPOINT_NOTE)

    @field_validator("checkpoint")
    @classmethod
    def _bounded(cls, value: FreeForm) -> FreeForm | None:
        return _check_json_size(value, "checkpoint")


class ChildrenResponse(Model):
    parent: Task = Field(description="The parent, now WaitingForChildren (or resumed).")
    children: list[Task]


class TaskTree(Model):
    """A task and its descendants, depth first, each with its depth below the root asked."""

    tasks: list[Task]
    truncated: bool = Field(default=False, description="More descendants than one answer holds.")


class ApprovalRequest(AttemptRequest):
    """From the agent holding the lease: park the task until a person decides on this call."""

    tool: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    arguments: FreeForm = Field(default_factory=dict)
    toolCallId: Annotated[str, StringConstraints(max_length=256)] = ""
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    checkpoint: FreeForm = Field(default_factory=dict, description=CHECKPOINT_NOTE)

    @field_validator("arguments", "checkpoint")
    @classmethod
    def _bounded(cls, value: FreeForm, info: ValidationInfo) -> FreeForm | None:
        return _check_json_size(value, info.field_name or "value")


class CheckpointRequest(AttemptRequest):
    checkpoint: FreeForm = Field(description=CHECKPOINT_NOTE)

    @field_validator("checkpoint")
    @classmethod
    def _bounded(cls, value: FreeForm) -> FreeForm | None:
        return _check_json_size(value, "checkpoint")


class DecisionRequest(Request):
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""


class RejectRequest(Request):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"\S")] = Field(
        description="Why: the model and the record see it."
    )


class PendingApproval(Model):
    taskId: str
    namespace: str
    fleet: str
    capability: str
    traceId: str
    approval: Approval


class ApprovalList(Model):
    approvals: list[PendingApproval]


class FleetStats(Model):
    namespace: str
    fleet: str
    queued: int
    queuedByPriority: dict[str, int]
    running: int
    succeeded: int
    failed: int
    deadLettered: int
    cancelled: int
    awaitingApproval: int = Field(default=0, description="Tasks parked until a person decides.")
    waitingForChildren: int = Field(
        default=0, description="Parents parked until their children end (they hold no lease)."
    )
    agents: list[AgentStats]
    templates: list[TemplateStats]
    halt: Halt | None = Field(default=None, description="Set while the sentinel halts dispatch.")


class Stats(Model):
    generatedAt: float
    fleets: list[FleetStats]


class StatsWatch(Model):
    """``GET /v1/stats/watch``: the figures once they differ from the caller's token."""

    token: str = Field(
        description="Digest of the figures the operator acts on; send it back as `since`."
    )
    changed: bool = Field(description="False when the timeout ran out with nothing changed.")
    stats: Stats | None = Field(default=None, description="The figures, when they changed.")


class ErrorDetail(Model):
    status: int
    code: str = Field(description="One CamelCase word: BadRequest, StaleLease, NotFound, ...")
    message: str
    field: str | None = Field(default=None, description="The request field at fault, if one is.")
    policy: str | None = Field(default=None, description="The Policy whose rule refused it.")
    rule: str | None = Field(default=None, description="That rule, as named in spec.rules.")
    retryAfterSeconds: int | None = Field(default=None, description="When to try again.")


class ErrorResponse(Model):
    error: ErrorDetail
