"""The router's API handlers: each turns one call (who, path, query, parsed body) into a wire
model by way of the service. They know nothing of HTTP beyond the status a creation returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from agentarmy.api import wire
from agentarmy.api.common import parse_duration
from agentarmy.api.task import TaskPhase
from agentarmy.router.auth import Principal
from agentarmy.router.errors import bad_request
from agentarmy.router.service import RouterService
from agentarmy.router.store.base import TaskQuery


@dataclass
class Call:
    """What a handler gets: who is calling, the path parameters, the query and the body.

    Defined here rather than beside the endpoint table so that the table can import the
    handlers without an import cycle."""

    principal: Principal
    path: dict[str, str]
    query: dict[str, str]
    body: Any


async def submit(service: RouterService, call: Call) -> tuple[int, BaseModel]:
    (item,) = await service.submit(call.principal, [call.body])
    return (201 if item.created else 200), wire.SubmitResponse(task=item.task, created=item.created)


async def submit_batch(service: RouterService, call: Call) -> BaseModel:
    items = await service.submit(call.principal, call.body.tasks)
    return wire.SubmitBatchResponse(
        results=[wire.SubmitResponse(task=i.task, created=i.created) for i in items]
    )


async def get_task(service: RouterService, call: Call) -> BaseModel:
    return await service.get(call.principal, call.path["task_id"])


async def list_tasks(service: RouterService, call: Call) -> BaseModel:
    limit = _int_query(call.query, "limit", 100, 1, 1000)
    after = _int_query(call.query, "after", 0, 0, 2**62)
    phase = call.query.get("phase")
    if phase is not None and phase not in TaskPhase.__args__:  # type: ignore[attr-defined]
        raise bad_request(f"phase must be one of {', '.join(TaskPhase.__args__)}", "phase")  # type: ignore[attr-defined]
    query = TaskQuery(
        namespace=call.query.get("namespace"),
        fleet=call.query.get("fleet"),
        phase=phase,
        parent=call.query.get("parent"),
        after_seq=after,
        limit=limit,
    )
    tasks = await service.list_tasks(call.principal, query)
    next_cursor = str(tasks[-1].seq) if len(tasks) == limit else None
    return wire.TaskList(tasks=tasks, next=next_cursor)


async def cancel_task(service: RouterService, call: Call) -> BaseModel:
    return await service.cancel(call.principal, call.path["task_id"])


async def wait_task(service: RouterService, call: Call) -> BaseModel:
    raw = call.query.get("timeout", "30s")
    try:
        timeout = parse_duration(raw)
    except ValueError as error:
        raise bad_request(str(error), "timeout") from error
    if timeout > wire.MAX_WAIT_SECONDS:
        raise bad_request(f"timeout must be at most {wire.MAX_WAIT_SECONDS:.0f}s", "timeout")
    return await service.wait(call.principal, call.path["task_id"], timeout)


async def register(service: RouterService, call: Call) -> BaseModel:
    return await service.register(call.principal, call.body)


async def claim(service: RouterService, call: Call) -> BaseModel:
    return await service.claim(call.principal, call.path["namespace"], call.path["name"], call.body)


async def heartbeat(service: RouterService, call: Call) -> BaseModel:
    return await service.heartbeat(
        call.principal, call.path["namespace"], call.path["name"], call.body
    )


async def report(service: RouterService, call: Call) -> BaseModel:
    acks = await service.report(
        call.principal, call.path["namespace"], call.path["name"], call.body.results
    )
    return wire.ReportResponse(results=acks)


async def extend_one(service: RouterService, call: Call) -> BaseModel:
    ref = wire.LeaseRef(taskId=call.path["task_id"], attempt=call.body.attempt)
    return await service.extend_one(call.principal, call.path["namespace"], call.path["name"], ref)


async def complete_one(service: RouterService, call: Call) -> BaseModel:
    body: wire.CompleteRequest = call.body
    result = wire.TaskResult(
        taskId=call.path["task_id"],
        attempt=body.attempt,
        outcome="succeeded",
        result=body.result,
        usage=body.usage,
    )
    return await service.report_one(
        call.principal, call.path["namespace"], call.path["name"], result
    )


async def fail_one(service: RouterService, call: Call) -> BaseModel:
    body: wire.FailRequest = call.body
    result = wire.TaskResult(
        taskId=call.path["task_id"],
        attempt=body.attempt,
        outcome="failed",
        error=body.error,
        retryable=body.retryable,
    )
    return await service.report_one(
        call.principal, call.path["namespace"], call.path["name"], result
    )


async def hand_off(service: RouterService, call: Call) -> tuple[int, BaseModel]:
    item = await service.hand_off(
        call.principal, call.path["namespace"], call.path["name"], call.path["task_id"], call.body
    )
    return (201 if item.created else 200), wire.SubmitResponse(task=item.task, created=item.created)


async def spawn_children(service: RouterService, call: Call) -> tuple[int, BaseModel]:
    response = await service.spawn_children(
        call.principal, call.path["namespace"], call.path["name"], call.path["task_id"], call.body
    )
    return 201, response


async def task_tree(service: RouterService, call: Call) -> BaseModel:
    limit = _int_query(call.query, "limit", 1000, 1, 10000)
    return await service.tree(call.principal, call.path["task_id"], limit)


async def stats(service: RouterService, call: Call) -> BaseModel:
    return await service.stats(call.principal)


async def watch_stats(service: RouterService, call: Call) -> BaseModel:
    limit = int(wire.MAX_WAIT_SECONDS)
    timeout = _int_query(call.query, "timeoutSeconds", 30, 0, limit)
    return await service.watch_stats(call.principal, call.query.get("since", ""), timeout)


def _int_query(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer", name) from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}", name)
    return value


# -- runtime governance ---------------------------------------------------------------------


async def reserve_tokens(service: RouterService, call: Call) -> BaseModel:
    return await service.reserve_tokens(
        call.principal, call.path["namespace"], call.path["name"], call.path["task_id"], call.body
    )


async def settle_tokens(service: RouterService, call: Call) -> BaseModel:
    return await service.settle_tokens(
        call.principal, call.path["namespace"], call.path["name"], call.path["task_id"], call.body
    )


async def replace_rules(service: RouterService, call: Call) -> BaseModel:
    return await service.replace_rules(call.principal, call.body)


async def replace_namespace_rules(service: RouterService, call: Call) -> BaseModel:
    return await service.replace_namespace_rules(call.principal, call.path["namespace"], call.body)


async def get_rules(service: RouterService, call: Call) -> BaseModel:
    return service.rules_in_force(call.principal, call.query.get("namespace"))


async def halts(service: RouterService, call: Call) -> BaseModel:
    return service.halts(call.principal)


async def resume(service: RouterService, call: Call) -> BaseModel:
    return await service.resume(
        call.principal, call.path["namespace"], call.path["name"], call.body
    )


async def request_approval(service: RouterService, call: Call) -> BaseModel:
    return await service.request_approval(
        call.principal, call.path["namespace"], call.path["name"], call.path["task_id"], call.body
    )


async def save_checkpoint(service: RouterService, call: Call) -> BaseModel:
    return await service.save_checkpoint(
        call.principal, call.path["namespace"], call.path["name"], call.path["task_id"], call.body
    )


async def list_approvals(service: RouterService, call: Call) -> BaseModel:
    return await service.pending_approvals(call.principal, call.query.get("namespace"))


async def approve(service: RouterService, call: Call) -> BaseModel:
    return await service.decide(call.principal, call.path["task_id"], True, call.body.reason)


async def reject(service: RouterService, call: Call) -> BaseModel:
    return await service.decide(call.principal, call.path["task_id"], False, call.body.reason)
