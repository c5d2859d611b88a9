"""Task: a declarative task mirrored to the router (GitOps and kubectl users).

High-volume callers use the router API directly; this kind exists so a task can
live in git and show its outcome in ``kubectl get tasks``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from agentarmy.api.agent import Capability
from agentarmy.api.common import Condition, DNSLabel, Duration, FreeForm, Model

MIN_PRIORITY = 0
MAX_PRIORITY = 100
DEFAULT_PRIORITY = 50

TaskPhase = Literal[
    "Pending",
    "Queued",
    "Running",
    "AwaitingApproval",
    "WaitingForChildren",
    "Succeeded",
    "Failed",
    "DeadLettered",
    "Cancelled",
]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed", "DeadLettered", "Cancelled"})


class TaskSpec(Model):
    """The work to do. Immutable once created: submit a new Task instead."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "Task spec is immutable; create a new Task"},
            ]
        }
    }

    fleet: DNSLabel = Field(description="Fleet (in the Task's namespace) that runs the task.")
    capability: Capability = Field(description="Task kind; only agents with it are assigned.")
    input: FreeForm = Field(default_factory=dict, description="Input for the skill (JSON object).")
    priority: int = Field(
        default=DEFAULT_PRIORITY,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="Higher runs first; FIFO within a priority.",
    )
    timeout: Duration = Field(default="5m", description="Time limit of one attempt.")
    maxAttempts: int = Field(
        default=3, ge=1, le=100, description="Attempts before the task goes to dead letter."
    )
    idempotencyKey: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None,
        description="Submissions with the same key are one task (default: the Task's uid).",
    )
    parentTaskId: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="Router id of the task this one was handed off from."
    )


RESULT_LIMIT_BYTES = 4096
"""Largest result (as JSON) copied into status; etcd must not carry task payloads."""
ERROR_LIMIT_CHARS = 1024


class TaskStatus(Model):
    """The router's view of the task, mirrored coarsely: written when the phase, the
    attempt or the agent changes, never per heartbeat."""

    phase: TaskPhase = Field(default="Pending", description="Where the task is.")
    taskId: str = Field(default="", description="Router task id.")
    attempts: int = Field(default=0, ge=0, description="Attempts started so far.")
    agent: str = Field(default="", description="Agent that ran (or runs) the last attempt.")
    result: FreeForm | None = Field(
        default=None,
        description="Skill output when Succeeded, if at most 4 KiB as JSON (see resultTruncated).",
    )
    resultTruncated: bool = Field(
        default=False,
        description="The result is larger than 4 KiB and not copied here: fetch it from the "
        "router by taskId (`armyctl get <taskId>`).",
    )
    error: str = Field(default="", description="Why the task failed (at most 1 KiB).")
    startTime: str = Field(default="", description="When the first attempt started (RFC 3339).")
    completionTime: str = Field(default="", description="When the task ended (RFC 3339).")
    observedGeneration: int = Field(default=0, ge=0, description="Generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Accepted, Complete, Failed, and Reconciling/Stalled for kstatus.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
