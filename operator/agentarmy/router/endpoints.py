"""The router's endpoint table and its parameter rules. The OpenAPI document
(:mod:`agentarmy.router.openapi`) and the HTTP layer (:mod:`agentarmy.router.asgi`) are both
derived from what is written here, so the document cannot drift from what is served."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agentarmy.api import rules as rule_models
from agentarmy.api import wire
from agentarmy.api.common import DNS_LABEL_PATTERN
from agentarmy.api.task import TaskPhase
from agentarmy.api.wire import TASK_ID_PATTERN
from agentarmy.router import handlers
from agentarmy.router.errors import bad_request
from agentarmy.router.handlers import Call
from agentarmy.router.service import RouterService

Handler = Callable[[RouterService, Call], Awaitable[BaseModel | tuple[int, BaseModel]]]


@dataclass(frozen=True)
class Text:
    """A string parameter (in the path or the query): its JSON schema and its runtime check
    come from these three fields, so the two cannot disagree."""

    pattern: str
    max_length: int
    what: str
    """How a 400 describes a valid value: "{name} in the path must be {what} of at most ..."."""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern))

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern, "maxLength": self.max_length}

    def check(self, name: str, value: str, where: str) -> None:
        if len(value) > self.max_length or not self.regex.fullmatch(value):
            raise bad_request(
                f"{name} in the {where} must be {self.what} of at most {self.max_length} characters",
                name,
            )


DNS_LABEL = Text(DNS_LABEL_PATTERN, 63, "a DNS label")
TASK_ID = Text(TASK_ID_PATTERN, 64, "a task id (letters, digits, '_', '.', '-')")
WATCH_TOKEN = Text(r"^[0-9a-f]*$", 64, "a token from an earlier watch (hex digits)")

PATH_PARAMS: dict[str, Text] = {"namespace": DNS_LABEL, "name": DNS_LABEL, "task_id": TASK_ID}
"""Every path parameter any route has; checked before a handler runs."""
QUERY_TEXT: dict[str, Text] = {
    "namespace": DNS_LABEL,
    "fleet": DNS_LABEL,
    "parent": TASK_ID,
    "since": WATCH_TOKEN,
}
"""String query parameters, checked (when present) before a handler runs, on every endpoint.
Numbers, enums and durations in the query are checked by the handler that reads them."""


@dataclass(frozen=True)
class QueryParam:
    name: str
    schema: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Handler
    response: type[BaseModel]
    request: type[BaseModel] | None = None
    query: tuple[QueryParam, ...] = ()
    status: int = 200
    tag: str = "tasks"


def check_strings(path: dict[str, str], query: dict[str, str]) -> None:
    """400 for the first path or query string that breaks its rule."""
    for where, values, rules in (("path", path, PATH_PARAMS), ("query", query, QUERY_TEXT)):
        for name, rule in rules.items():
            value = values.get(name)
            if value is not None:
                rule.check(name, value, where)


AGENT = "/v1/agents/{namespace}/{name}"
LEASE = AGENT + "/tasks/{task_id}"
Q = QueryParam

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/v1/tasks",
        "Submit a task (idempotent by idempotencyKey); 201 new, 200 known",
        handlers.submit,
        wire.SubmitResponse,
        wire.SubmitTask,
        status=201,
    ),
    Endpoint(
        "POST",
        "/v1/tasks:batch",
        "Submit up to 1000 tasks in one durable write",
        handlers.submit_batch,
        wire.SubmitBatchResponse,
        wire.SubmitBatchRequest,
    ),
    Endpoint(
        "GET",
        "/v1/tasks",
        "List tasks in submission order",
        handlers.list_tasks,
        wire.TaskList,
        query=(
            Q("namespace", QUERY_TEXT["namespace"].schema()),
            Q("fleet", QUERY_TEXT["fleet"].schema()),
            Q("phase", {"type": "string", "enum": list(TaskPhase.__args__)}),  # type: ignore[attr-defined]
            Q("parent", QUERY_TEXT["parent"].schema()),
            Q(
                "after",
                {"type": "integer", "minimum": 0, "maximum": 2**62},
                "Cursor: the `next` of the previous page",
            ),
            Q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
    ),
    Endpoint("GET", "/v1/tasks/{task_id}", "Get a task", handlers.get_task, wire.Task),
    Endpoint(
        "POST",
        "/v1/tasks/{task_id}/cancel",
        "Cancel a task; a running attempt learns it on its next heartbeat",
        handlers.cancel_task,
        wire.Task,
    ),
    Endpoint(
        "GET",
        "/v1/tasks/{task_id}/wait",
        "Wait until the task has ended (or timeout)",
        handlers.wait_task,
        wire.Task,
        query=(
            Q(
                "timeout",
                {"type": "string", "pattern": r"^(([0-9]|[1-5][0-9]|60)s|[0-9]{1,4}ms)$"},
                "Duration, at most 60s (default 30s)",
            ),
        ),
    ),
    Endpoint(
        "POST",
        "/v1/agents",
        "Register (or re-register) an agent",
        handlers.register,
        wire.AgentInfo,
        wire.RegisterAgent,
        tag="agents",
    ),
    Endpoint(
        "POST",
        AGENT + "/claim",
        "Record results, then lease up to `max` tasks (long-poll)",
        handlers.claim,
        wire.ClaimResponse,
        wire.ClaimRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        AGENT + "/heartbeat",
        "Liveness and lease renewal for the agent's tasks",
        handlers.heartbeat,
        wire.HeartbeatResponse,
        wire.HeartbeatRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        AGENT + "/results",
        "Record results of many attempts",
        handlers.report,
        wire.ReportResponse,
        wire.ReportRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/heartbeat",
        "Extend one lease; 409 if its fencing token is stale",
        handlers.extend_one,
        wire.LeaseStatus,
        wire.AttemptRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/complete",
        "Complete one attempt; 409 if its fencing token is stale",
        handlers.complete_one,
        wire.ResultAck,
        wire.CompleteRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/fail",
        "Fail one attempt with a reason; 409 if stale",
        handlers.fail_one,
        wire.ResultAck,
        wire.FailRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/subtasks",
        "Hand off a subtask to another fleet (carries the parent id)",
        handlers.hand_off,
        wire.SubmitResponse,
        wire.SubtaskRequest,
        status=201,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/children",
        "Start children and park the task until they end (join: all or failFast); the lease ends",
        handlers.spawn_children,
        wire.ChildrenResponse,
        wire.ChildrenRequest,
        status=201,
        tag="agents",
    ),
    Endpoint(
        "GET",
        "/v1/tasks/{task_id}/tree",
        "The task and its descendants, depth first, with phases and times",
        handlers.task_tree,
        wire.TaskTree,
        query=(Q("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),),
    ),
    Endpoint(
        "POST",
        LEASE + "/tokens:reserve",
        "Before a model call: count its tokens against the fleet's budgets; 429 if spent",
        handlers.reserve_tokens,
        rule_models.TokenGrant,
        rule_models.TokenReservation,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/tokens:settle",
        "After a model call: correct the reservation by the usage reported",
        handlers.settle_tokens,
        rule_models.TokenGrant,
        rule_models.TokenSettlement,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/approval",
        "Park the task until a person decides on a tool call (the lease ends)",
        handlers.request_approval,
        wire.Task,
        wire.ApprovalRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/checkpoint",
        "Store the skill's state with the task (kept across attempts)",
        handlers.save_checkpoint,
        wire.Task,
        wire.CheckpointRequest,
        tag="agents",
    ),
    Endpoint(
        "GET",
        "/v1/approvals",
        "Tool calls waiting for a person",
        handlers.list_approvals,
        wire.ApprovalList,
        query=(Q("namespace", DNS_LABEL.schema()),),
        tag="governance",
    ),
    Endpoint(
        "POST",
        "/v1/approvals/{task_id}/approve",
        "Approve the call a task waits on (recorded: who, when, why); not for agent tokens",
        handlers.approve,
        wire.Task,
        wire.DecisionRequest,
        tag="governance",
    ),
    Endpoint(
        "POST",
        "/v1/approvals/{task_id}/reject",
        "Reject it, with a reason the model and the record see; not for agent tokens",
        handlers.reject,
        wire.Task,
        wire.RejectRequest,
        tag="governance",
    ),
    Endpoint(
        "GET",
        "/v1/stats",
        "Per-fleet queue depth, agents and error rate per template hash",
        handlers.stats,
        wire.Stats,
        tag="operator",
    ),
    Endpoint(
        "GET",
        "/v1/stats/watch",
        "Long-poll: the stats once the figures the operator acts on differ from `since`",
        handlers.watch_stats,
        wire.StatsWatch,
        query=(
            Q(
                "since",
                WATCH_TOKEN.schema(),
                "The token of the figures held (empty or absent: answer at once)",
            ),
            Q(
                "timeoutSeconds",
                {"type": "integer", "minimum": 0, "maximum": int(wire.MAX_WAIT_SECONDS)},
                "How long to wait for a change (default 30)",
            ),
        ),
        tag="operator",
    ),
    Endpoint(
        "PUT",
        "/v1/rules",
        "Replace every fleet's runtime rules (the operator's full sync)",
        handlers.replace_rules,
        rule_models.AllRules,
        rule_models.AllRules,
        tag="governance",
    ),
    Endpoint(
        "PUT",
        "/v1/rules/{namespace}",
        "Replace the runtime rules of one namespace's fleets",
        handlers.replace_namespace_rules,
        rule_models.RulesInForce,
        rule_models.NamespaceRules,
        tag="governance",
    ),
    Endpoint(
        "GET",
        "/v1/rules",
        "The runtime rules in force, per namespace and fleet",
        handlers.get_rules,
        rule_models.AllRules,
        query=(Q("namespace", DNS_LABEL.schema()),),
        tag="governance",
    ),
    Endpoint(
        "GET",
        "/v1/halts",
        "Fleets the sentinel halted, with the bound breached and the measured value",
        handlers.halts,
        wire.HaltList,
        tag="governance",
    ),
    Endpoint(
        "POST",
        "/v1/fleets/{namespace}/{name}/resume",
        "Resume dispatch to a halted fleet (recorded: who, when, why)",
        handlers.resume,
        rule_models.Resumed,
        rule_models.ResumeRequest,
        tag="governance",
    ),
)
