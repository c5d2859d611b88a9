"""Structured decision logs: one JSON line per decision, with ids a person can follow.

Events: assigned, succeeded, retried, dead-lettered, failed, released, cancelled,
stale (a refused fencing token). Each line carries taskId, traceId, namespace,
fleet, attempt and agent, so ``grep <traceId>`` follows a task from submit to result.
Decisions about an agent rather than a task (breaker-open, breaker-half-open,
breaker-closed) carry namespace, fleet and agent, and the task that tipped them.
"""

from __future__ import annotations

import logging
from typing import Any

from agentarmy.api.wire import Task
from agentarmy.logs import log_fields

decision_log = logging.getLogger("agentarmy.router.decisions")

_EVENT_BY_PHASE = {
    "Succeeded": "succeeded",
    "DeadLettered": "dead-lettered",
    "Failed": "failed",
    "Cancelled": "cancelled",
}


def decide(event: str, task: Task, **fields: Any) -> None:
    if not decision_log.isEnabledFor(logging.INFO):
        return
    record = {
        "event": event,
        "taskId": task.id,
        "traceId": task.traceId,
        "namespace": task.namespace,
        "fleet": task.fleet,
        "attempt": task.attempt,
        "agent": task.agent,
        **fields,
    }
    log_fields(decision_log, event, record)


def attempt_ended(task: Task) -> None:
    """Log what happened to a task whose attempt just ended."""
    last = task.attempts[-1] if task.attempts else None
    reason = last.reason if last else ""
    outcome = last.outcome if last else None
    if task.phase == "Queued":
        event = "released" if outcome == "Released" else "retried"
        decide(event, task, reason=reason, outcome=outcome, retryAt=round(task.availableAt, 3))
    else:
        decide(
            _EVENT_BY_PHASE.get(task.phase, task.phase), task, reason=task.error, outcome=outcome
        )


def about_agent(event: str, namespace: str, fleet: str, agent: str, **fields: Any) -> None:
    """A decision about an agent (its circuit breaker), not about one task."""
    if not decision_log.isEnabledFor(logging.INFO):
        return
    record = {"event": event, "namespace": namespace, "fleet": fleet, "agent": agent, **fields}
    log_fields(decision_log, event, record)
