"""A task's life as pure functions: every state change the router makes, with no I/O.

Both store backends load a task, apply one of these, and write it back under their
own concurrency control (one SQLite writer; compare-and-swap in NATS KV), so the
rules — fencing, backoff, dead letter — exist exactly once. Decisions that also answer an
agent (``renew_lease``, ``apply_result``) take the task as None when the store has no such
task, so that answer is made here too.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic_core import to_json

from agentarmy.api import wire
from agentarmy.api.common import parse_duration
from agentarmy.api.task import TERMINAL_PHASES
from agentarmy.api.wire import Attempt, AttemptOutcome, Task


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts: base, 2*base, 4*base ...  up to cap."""

    base_seconds: float = 1.0
    cap_seconds: float = 300.0

    def delay(self, task_id: str, failures: int) -> float:
        raw = min(self.cap_seconds, self.base_seconds * 2.0 ** max(0, failures - 1))
        # Deterministic jitter (±20%) so tasks that failed together do not return together.
        digest = hashlib.blake2b(f"{task_id}:{failures}".encode(), digest_size=2).digest()
        spread = 0.8 + 0.4 * int.from_bytes(digest, "big") / 0xFFFF
        return raw * spread


def agent_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_task_id() -> str:
    return "t-" + secrets.token_hex(12)


def new_task(
    request: wire.SubmitTask,
    task_id: str,
    seq: int,
    now: float,
    depth: int = 0,
    join_round: int | None = None,
) -> Task:
    """A new queued task; ``depth`` and ``join_round`` for a child (see ``park_for_children``)."""
    # The request was validated on the way in; construct without validating it twice.
    return Task.model_construct(
        id=task_id,
        namespace=request.namespace,
        fleet=request.fleet,
        capability=request.capability,
        input=request.input,
        priority=request.priority,
        timeout=request.timeout,
        maxAttempts=request.maxAttempts,
        idempotencyKey=request.idempotencyKey,
        parentTaskId=request.parentTaskId,
        traceId=request.traceId or new_trace_id(),
        phase="Queued",
        seq=seq,
        createdAt=now,
        availableAt=now,
        agent="",
        attempt=0,
        leaseExpiresAt=None,
        deadlineAt=None,
        attempts=[],
        result=None,
        error="",
        usage=None,
        finishedAt=None,
        approval=None,
        checkpoint=None,
        depth=depth,
        joinRound=join_round,
        join=None,
    )


def is_terminal(task: Task) -> bool:
    return task.phase in TERMINAL_PHASES


def is_terminal_phase(phase: str) -> bool:
    return phase in TERMINAL_PHASES


def counted_failures(task: Task) -> int:
    """Attempts that count against maxAttempts (releases by a draining agent do not)."""
    return sum(1 for a in task.attempts if a.outcome in wire.COUNTED_OUTCOMES)


def fence_problem(task: Task, ref: wire.LeaseRef, holder: str) -> str | None:
    """Why a heartbeat/result for ``ref`` from ``holder`` must be refused, or None if it holds."""
    if task.phase == "Cancelled":
        return f"task {task.id} was cancelled"
    if task.phase != "Running" or task.attempt != ref.attempt:
        return (
            f"lease for attempt {ref.attempt} of task {task.id} is stale: "
            f"the task is {task.phase} at attempt {task.attempt}"
        )
    if task.agent != holder:
        return f"lease for attempt {ref.attempt} of task {task.id} is held by {task.agent}, not {holder}"
    return None


def start_for(task: Task, agent: wire.AgentInfo, now: float, lease_seconds: float) -> Task:
    """``start_attempt`` for a registered agent (its holder id and template hash)."""
    holder = agent_id(agent.namespace, agent.name)
    return start_attempt(task, holder, agent.templateHash, now, lease_seconds)


def start_attempt(
    task: Task, holder: str, template_hash: str, now: float, lease_seconds: float
) -> Task:
    number = task.attempt + 1
    attempt = Attempt.model_construct(
        number=number,
        agent=holder,
        templateHash=template_hash,
        startedAt=now,
        endedAt=None,
        outcome=None,
        reason="",
    )
    return task.model_copy(
        update={
            "phase": "Running",
            "agent": holder,
            "attempt": number,
            "leaseExpiresAt": now + lease_seconds,
            "deadlineAt": now + parse_duration(task.timeout),
            "attempts": [*task.attempts, attempt],
        }
    )


def to_lease(task: Task) -> wire.Lease:
    assert task.leaseExpiresAt is not None and task.deadlineAt is not None
    return wire.Lease(
        taskId=task.id,
        attempt=task.attempt,
        capability=task.capability,
        input=task.input,
        priority=task.priority,
        traceId=task.traceId,
        parentTaskId=task.parentTaskId,
        leaseExpiresAt=task.leaseExpiresAt,
        deadlineAt=task.deadlineAt,
        approval=task.approval,
        checkpoint=task.checkpoint,
    )


def extend_lease(task: Task, now: float, lease_seconds: float) -> Task:
    return task.model_copy(update={"leaseExpiresAt": now + lease_seconds})


def renew_lease(
    task: Task | None, ref: wire.LeaseRef, holder: str, now: float, lease_seconds: float
) -> tuple[Task | None, wire.LeaseStatus]:
    """One lease of a heartbeat: the task with its lease extended if the fencing token holds
    (None: nothing to write; ``task`` None: there is no such task) and the agent's answer."""
    problem = "no such task" if task is None else fence_problem(task, ref, holder)
    if task is None or problem is not None:
        cancelled = task is not None and task.phase == "Cancelled"
        status = wire.LeaseStatus(
            taskId=ref.taskId,
            attempt=ref.attempt,
            status="cancelled" if cancelled else "stale",
            message=problem,
        )
        return None, status
    extended = extend_lease(task, now, lease_seconds)
    status = wire.LeaseStatus(
        taskId=ref.taskId,
        attempt=ref.attempt,
        status="extended",
        leaseExpiresAt=extended.leaseExpiresAt,
    )
    return extended, status


def _end_attempt(task: Task, outcome: AttemptOutcome, reason: str, now: float) -> list[Attempt]:
    last = task.attempts[-1].model_copy(
        update={"endedAt": now, "outcome": outcome, "reason": reason}
    )
    return [*task.attempts[:-1], last]


def succeed(
    task: Task, result: dict[str, object] | None, usage: wire.TokenUsage | None, now: float
) -> Task:
    return task.model_copy(
        update={
            "phase": "Succeeded",
            "attempts": _end_attempt(task, "Succeeded", "", now),
            "result": result or {},
            "usage": usage,
            "error": "",
            "leaseExpiresAt": None,
            "deadlineAt": None,
            "finishedAt": now,
        }
    )


def fail(
    task: Task,
    outcome: AttemptOutcome,
    reason: str,
    now: float,
    policy: RetryPolicy,
    retryable: bool = True,
) -> Task:
    """End the running attempt badly: re-queue with backoff, dead-letter, or fail for good."""
    attempts = _end_attempt(task, outcome, reason, now)
    ended = task.model_copy(
        update={"attempts": attempts, "leaseExpiresAt": None, "deadlineAt": None, "error": reason}
    )
    if outcome == "Released":
        return ended.model_copy(update={"phase": "Queued", "availableAt": now})
    if not retryable:
        return ended.model_copy(
            update={"phase": "Failed", "finishedAt": now, "error": f"not retryable: {reason}"}
        )
    failures = counted_failures(ended)
    if failures >= task.maxAttempts:
        summary = "; ".join(
            f"attempt {a.number}: {a.outcome}: {a.reason}" for a in attempts if a.outcome
        )
        return ended.model_copy(
            update={
                "phase": "DeadLettered",
                "finishedAt": now,
                "error": f"gave up after {failures} failed attempts ({summary})"[
                    : wire.MAX_ERROR_CHARS
                ],
            }
        )
    delay = policy.delay(task.id, failures)
    return ended.model_copy(update={"phase": "Queued", "availableAt": now + delay})


def expire(task: Task, now: float, policy: RetryPolicy) -> Task | None:
    """The task after its lease ran out or its attempt timed out, or None while it is fine."""
    if task.phase != "Running":
        return None
    if task.deadlineAt is not None and now >= task.deadlineAt:
        return fail(
            task, "TimedOut", f"attempt exceeded its timeout of {task.timeout}", now, policy
        )
    if task.leaseExpiresAt is not None and now >= task.leaseExpiresAt:
        return fail(
            task, "LeaseExpired", f"agent {task.agent} stopped renewing its lease", now, policy
        )
    return None


def cancel(task: Task, now: float) -> Task | None:
    """The cancelled task, or None when it had already ended."""
    if is_terminal(task):
        return None
    update: dict[str, object] = {
        "phase": "Cancelled",
        "finishedAt": now,
        "leaseExpiresAt": None,
        "deadlineAt": None,
        "error": "cancelled",
    }
    if task.phase == "Running":
        update["attempts"] = _end_attempt(task, "Cancelled", "cancelled by a caller", now)
    return task.model_copy(update=update)


def apply_result(
    task: Task | None, report: wire.TaskResult, holder: str, now: float, policy: RetryPolicy
) -> tuple[Task | None, wire.ResultAck]:
    """Record an agent's report if its fencing token holds; the new task (None: nothing to
    write; ``task`` None: there is no such task) and the ack."""
    if task is None:
        problem: str | None = f"task {report.taskId} does not exist"
    else:
        problem = fence_problem(task, report, holder)
    if task is None or problem is not None:
        ack = wire.ResultAck(
            taskId=report.taskId,
            attempt=report.attempt,
            status="stale",
            phase=None if task is None else task.phase,
            message=problem,
        )
        return None, ack
    if report.outcome == "succeeded":
        updated = succeed(task, report.result, report.usage, now)
    elif report.outcome == "released":
        updated = fail(
            task, "Released", report.error or "agent released the lease", now, RetryPolicy()
        )
    else:
        updated = fail(task, "Failed", report.error or "failed", now, policy, report.retryable)
    if report.usage is not None and report.outcome != "succeeded":
        updated = updated.model_copy(update={"usage": report.usage})
    ack = wire.ResultAck(
        taskId=report.taskId, attempt=report.attempt, status="recorded", phase=updated.phase
    )
    return updated, ack


def restart_grace(task: Task, now: float, lease_seconds: float) -> Task | None:
    """After a router restart, running leases get a fresh period so agents can heartbeat again."""
    if task.phase != "Running":
        return None
    return extend_lease(task, now, lease_seconds)


# -- approvals: a task parked while a person decides on a tool call ------------------------


def park_for_approval(
    task: Task,
    request: wire.ApprovalRequest,
    holder: str,
    policies: list[str],
    timeout_seconds: float,
    on_rejection: wire.OnRejection,
    now: float,
) -> Task:
    """The lease ends (released: it does not count against maxAttempts) and the task waits,
    holding no agent, with the call and the skill's checkpoint stored. Fenced by the caller."""
    approval = wire.Approval(
        id=f"{task.id}.{task.attempt}.{len(task.attempts)}",
        tool=request.tool,
        arguments=request.arguments,
        toolCallId=request.toolCallId,
        agent=holder,
        attempt=task.attempt,
        policies=policies,
        reason=request.reason,
        requestedAt=now,
        deadlineAt=now + timeout_seconds,
        onRejection=on_rejection,
    )
    return task.model_copy(
        update={
            "phase": "AwaitingApproval",
            "attempts": _end_attempt(
                task, "Released", f"waiting for approval of {request.tool}", now
            ),
            "leaseExpiresAt": None,
            "deadlineAt": approval.deadlineAt,
            "approval": approval,
            "checkpoint": request.checkpoint,
        }
    )


def decide_approval(
    task: Task, decision: wire.ApprovalDecision, who: str, reason: str, now: float
) -> Task | None:
    """Record a person's (or the deadline's) decision: the task queues again to resume, or
    fails when the Policy says a rejection ends it. None when nothing waits (decided already)."""
    if task.phase != "AwaitingApproval" or task.approval is None:
        return None
    approval = task.approval.model_copy(
        update={"decision": decision, "decidedBy": who, "decidedAt": now, "decisionReason": reason}
    )
    update: dict[str, object] = {"approval": approval, "deadlineAt": None}
    if decision != "Approved" and approval.onRejection == "fail":
        verb = "timed out" if decision == "TimedOut" else f"rejected by {who}"
        error = f"the call of tool {approval.tool} was {verb}" + (f": {reason}" if reason else "")
        update |= {"phase": "Failed", "finishedAt": now, "error": error}
    else:
        update |= {"phase": "Queued", "availableAt": now}
    return task.model_copy(update=update)


def save_checkpoint(task: Task, checkpoint: dict[str, object]) -> Task:
    return task.model_copy(update={"checkpoint": checkpoint})


# -- fan-out and join: a parent parked while the children it started run -------------------

UNSUCCESSFUL_PHASES: frozenset[str] = frozenset({"Failed", "DeadLettered", "Cancelled"})


def child_request(
    request: wire.SubmitTask, parent: Task, join_round: int, index: int
) -> wire.SubmitTask:
    """A child as the router stores it: under its parent and on the root's trace. Its id
    comes from its place in the round (``child_task_id``), not from an idempotency key."""
    return request.model_copy(
        update={"parentTaskId": parent.id, "traceId": parent.traceId, "idempotencyKey": None}
    )


def child_task_id(parent_id: str, join_round: int, index: int) -> str:
    """The id of a parent's ``index``-th child of a round: a retried start creates it once."""
    digest = hashlib.blake2b(f"{parent_id}.{join_round}.{index}".encode(), digest_size=12)
    return "t-" + digest.hexdigest()


def park_for_children(
    task: Task, join: wire.JoinMode, children: int, checkpoint: dict[str, object], now: float
) -> Task:
    """The lease ends (released: it does not count against maxAttempts) and the task waits,
    holding no agent, for the children its attempt starts. Fenced by the caller."""
    return task.model_copy(
        update={
            "phase": "WaitingForChildren",
            "attempts": _end_attempt(task, "Released", f"waiting for {children} children", now),
            "leaseExpiresAt": None,
            "deadlineAt": None,
            "checkpoint": checkpoint,
            "join": wire.Join(round=task.attempt, mode=join, children=children, waitingSince=now),
        }
    )


def waits_for(parent: Task, child: Task) -> bool:
    """Is ``parent`` waiting for ``child`` (a child of its current round)?"""
    return (
        parent.phase == "WaitingForChildren"
        and parent.join is not None
        and child.parentTaskId == parent.id
        and child.joinRound == parent.join.round
    )


def join_ends(mode: wire.JoinMode, phases: Mapping[str, int]) -> bool:
    """Given the phases of a round's children (phase -> count), does the join end now:
    every child ended, or (failFast) one of them did not succeed?"""
    if all(phase in TERMINAL_PHASES for phase, n in phases.items() if n > 0):
        return True
    return mode == "failFast" and any(
        n > 0 for phase, n in phases.items() if phase in UNSUCCESSFUL_PHASES
    )


def settle_join(parent: Task, phases: Mapping[str, int], now: float) -> Task | None:
    """The join, level-based: given the phases of the round's children (phase -> count),
    the parent queued again to resume, or None while it must keep waiting (or is not
    waiting at all). Applying it twice changes nothing: only a waiting parent resumes."""
    join = parent.join
    if parent.phase != "WaitingForChildren" or join is None:
        return None
    if not join_ends(join.mode, phases):
        return None
    failed = sum(n for phase, n in phases.items() if phase in UNSUCCESSFUL_PHASES)
    resumed = join.model_copy(
        update={
            "resumedAt": now,
            "succeeded": phases.get("Succeeded", 0),
            "failed": failed,
            "reason": "childFailed" if join.mode == "failFast" and failed else "allEnded",
        }
    )
    return parent.model_copy(update={"phase": "Queued", "availableAt": now, "join": resumed})


MAX_CHILD_RESULTS_BYTES = 8 * 1024 * 1024
"""Children's inputs and results a resumed lease carries, in all (1,000 children of
256 KiB each would otherwise make a 256 MiB lease)."""


MARKER_BYTES = 200
"""At most what an omitted child's marker adds to the lease (its task id and a reason)."""


def child_outcome(child: Task, omit: bool = False) -> wire.ChildOutcome:
    """``omit``: the result (and input) left out, a marker naming the child instead."""
    return wire.ChildOutcome(
        taskId=child.id,
        fleet=child.fleet,
        capability=child.capability,
        phase=child.phase,
        input={} if omit else child.input,
        result=omitted_marker(child.id) if omit else child.result,
        error=child.error,
    )


def omitted_marker(task_id: str) -> dict[str, object]:
    """What a resumed lease carries for a child whose result is too large to carry."""
    return {
        "omitted": True,
        "taskId": task_id,
        "reason": "too large to carry in the parent's lease: GET /v1/tasks/" + task_id,
    }


def child_outcomes(
    children: list[Task], budget: int = MAX_CHILD_RESULTS_BYTES
) -> list[wire.ChildOutcome]:
    """The round's outcomes for the resumed parent's lease, within ``budget`` bytes of JSON
    in all: the smallest inputs and results are carried whole while they fit (room kept for
    a marker per child), a larger one as a marker with its task id (fetch it by that)."""
    sizes = [_payload_bytes(child) for child in children]
    omit = [True] * len(children)
    left = budget
    by_size = sorted(range(len(children)), key=sizes.__getitem__)
    for place, index in enumerate(by_size):
        markers = MARKER_BYTES * (len(children) - place - 1)
        if sizes[index] + markers > left:
            break  # every larger one is left out too
        omit[index] = False
        left -= sizes[index]
    return [child_outcome(c, o) for c, o in zip(children, omit, strict=True)]


def _payload_bytes(child: Task) -> int:
    return len(to_json(child.input)) + len(to_json(child.result))
