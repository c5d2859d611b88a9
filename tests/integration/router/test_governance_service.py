"""The router's governance use cases on every real backend (SQLite, SQLite FULL, NATS):
an approval parks a task without a lease and resumes it once, with its checkpoint; a
deadline times it out; a second replica (NATS) sees a halt and an approval the first one
recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agentarmy.api import wire
from agentarmy.api.rules import ApprovalRule, FleetRules, NamespaceRules, RuleLimit, SentinelRule
from agentarmy.router.auth import Principal
from agentarmy.router.errors import ApiError
from agentarmy.router.service import RouterService
from agentarmy.router.store.base import TaskStore

OpenStore = Callable[..., Awaitable[TaskStore]]
ADMIN = Principal("ops", "admin")
WAITING_APPROVAL = (
    'agentarmy_router_tasks_waiting{fleet="f",namespace="ns",phase="AwaitingApproval"}'
)
AGENT = Principal("agents", "agent", namespace="ns", fleet="f")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def service_on(open_store: OpenStore, clock: Clock) -> RouterService:
    store = await open_store()
    service = RouterService(store, clock=clock)
    await service.governor.start()
    await service._load_approval_deadlines()
    return service


async def leased(service: RouterService) -> wire.Lease:
    await service.register(
        AGENT, wire.RegisterAgent(namespace="ns", name="a", fleet="f", capabilities=["chat"])
    )
    await service.submit(ADMIN, [wire.SubmitTask(namespace="ns", fleet="f", capability="chat")])
    claimed = await service.claim(AGENT, "ns", "a", wire.ClaimRequest(max=1))
    (lease,) = claimed.tasks
    return lease


RULES = FleetRules(
    fleet="f",
    approvalTools=[ApprovalRule(tool="refund", policy="ns/humans")],
    approvalTimeoutSeconds=RuleLimit(value=60, policy="ns/humans"),
    sentinel=SentinelRule(maxErrorRate=RuleLimit(value=0.5, policy="ns/guard")),
)


async def test_an_approval_parks_without_a_lease_and_resumes_once(
    store_factory: tuple[str, OpenStore],
) -> None:
    _, open_store = store_factory
    clock = Clock()
    service = await service_on(open_store, clock)
    await service.replace_namespace_rules(ADMIN, "ns", _namespace_rules())
    lease = await leased(service)
    assert lease.tools is not None and lease.tools.approvalTools[0].tool == "refund"
    ask = wire.ApprovalRequest(
        attempt=lease.attempt,
        tool="refund",
        arguments={"amount": 5},
        toolCallId="c1",
        checkpoint={"messages": [{"role": "user", "content": "refund it"}]},
    )
    parked = await service.request_approval(AGENT, "ns", "a", lease.taskId, ask)
    assert parked.phase == "AwaitingApproval" and parked.leaseExpiresAt is None
    assert parked.attempts[-1].outcome == "Released"
    assert f"{WAITING_APPROVAL} 1.0" in (await service.render_metrics()).decode()
    with pytest.raises(ApiError) as stale:  # the lease is gone: no second park, no result
        await service.request_approval(AGENT, "ns", "a", lease.taskId, ask)
    assert stale.value.status == 409

    pending = await service.pending_approvals(ADMIN, "ns")
    assert [p.taskId for p in pending.approvals] == [lease.taskId]
    with pytest.raises(ApiError) as refused:
        await service.decide(AGENT, lease.taskId, True, "")
    assert refused.value.status == 403

    decided = await service.decide(ADMIN, lease.taskId, True, "ok")
    assert decided.phase == "Queued"
    assert f"{WAITING_APPROVAL} 0.0" in (await service.render_metrics()).decode()
    with pytest.raises(ApiError) as twice:
        await service.decide(ADMIN, lease.taskId, False, "changed my mind")
    assert twice.value.status == 409 and "already approved" in twice.value.message
    resumed = await service.claim(AGENT, "ns", "a", wire.ClaimRequest(max=1))
    (again,) = resumed.tasks
    assert again.attempt == lease.attempt + 1
    assert again.approval is not None and again.approval.decision == "Approved"
    assert again.approval.decidedBy == "admin:ops"
    assert again.checkpoint == {"messages": [{"role": "user", "content": "refund it"}]}
    await service.governor.stop()


async def test_a_deadline_rejects_and_another_replica_sees_it(
    store_factory: tuple[str, OpenStore],
) -> None:
    kind, open_store = store_factory
    clock = Clock()
    first = await service_on(open_store, clock)
    await first.replace_namespace_rules(ADMIN, "ns", _namespace_rules())
    lease = await leased(first)
    ask = wire.ApprovalRequest(attempt=lease.attempt, tool="refund", toolCallId="c1")
    await first.request_approval(AGENT, "ns", "a", lease.taskId, ask)
    # A restart (SQLite) or a second replica (NATS) learns of the wait from the store.
    second = await service_on(open_store, clock)
    assert len(second.approvals) == 1
    clock.now += 61
    await second.time_out_approvals()
    task = await second.get(ADMIN, lease.taskId)
    assert task.phase == "Queued"
    assert task.approval is not None and task.approval.decision == "TimedOut"
    await first.time_out_approvals()  # the first replica finds it decided: nothing twice
    assert (await first.get(ADMIN, lease.taskId)).approval == task.approval
    if kind == "nats":
        halt = wire.Halt(
            namespace="ns",
            fleet="f",
            rule="maxErrorRate",
            policy="ns/guard",
            measured=1.0,
            bound=0.5,
            sample=20,
            message="halted",
            haltedAt=clock.now,
        )
        await first.governor.state.halt(halt)
        for _ in range(100):
            if second.governor.halted("ns", "f"):
                break
            await asyncio.sleep(0.02)
        assert second.governor.halted("ns", "f")
    await first.governor.stop()
    await second.governor.stop()


def _namespace_rules() -> NamespaceRules:
    return NamespaceRules(fleets=[RULES])


async def test_loosening_the_breached_bound_resumes_a_halted_fleet(
    store_factory: tuple[str, OpenStore],
) -> None:
    _, open_store = store_factory
    service = await service_on(open_store, Clock())
    strict = FleetRules(
        fleet="f",
        sentinel=SentinelRule(
            maxErrorRate=RuleLimit(value=0.1, policy="ns/guard"),
            minTasks=RuleLimit(value=2, policy="ns/guard"),
        ),
    )
    await service.replace_namespace_rules(ADMIN, "ns", NamespaceRules(fleets=[strict]))
    for _ in range(2):
        lease = await leased(service)
        failed = wire.TaskResult(
            taskId=lease.taskId, attempt=lease.attempt, outcome="failed", error="x", retryable=False
        )
        await service.report(AGENT, "ns", "a", [failed])
    assert service.governor.halted("ns", "f")
    still_strict = strict.model_copy(update={"policies": ["ns/guard", "ns/other"]})
    await service.replace_namespace_rules(ADMIN, "ns", NamespaceRules(fleets=[still_strict]))
    assert service.governor.halted("ns", "f")  # an unrelated change is no resume
    loose = FleetRules(
        fleet="f", sentinel=SentinelRule(maxErrorRate=RuleLimit(value=1.0, policy="ns/guard"))
    )
    await service.replace_namespace_rules(ADMIN, "ns", NamespaceRules(fleets=[loose]))
    assert not service.governor.halted("ns", "f")
    assert service.halts(ADMIN).halts == []
    await service.governor.stop()
