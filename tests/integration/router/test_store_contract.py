"""The store contract, run against every backend (SQLite file; real nats-server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo
from agentarmy.router import lifecycle
from agentarmy.router.store.base import TaskQuery, TaskStore, UnknownAgent

T0 = 1_800_000_000.0  # the same fixed "now" the store fixtures open with

OpenStore = Callable[..., Awaitable[TaskStore]]


def task(fleet: str = "fleet-a", capability: str = "echo", **fields: object) -> wire.SubmitTask:
    return wire.SubmitTask(fleet=fleet, capability=capability, **fields)  # type: ignore[arg-type]


async def agent(
    store: TaskStore,
    name: str = "a1",
    fleet: str = "fleet-a",
    capabilities: tuple[str, ...] = ("echo",),
    concurrency: int = 10,
    template_hash: str = "h1",
    now: float = T0,
) -> AgentInfo:
    registration = wire.RegisterAgent(
        namespace="default",
        name=name,
        fleet=fleet,
        capabilities=list(capabilities),
        concurrency=concurrency,
        templateHash=template_hash,
    )
    return await store.register(registration, now)


def succeeded(t: wire.Task, output: dict[str, object] | None = None) -> wire.TaskResult:
    return wire.TaskResult(
        taskId=t.id, attempt=t.attempt, outcome="succeeded", result=output or {"ok": 1}
    )


def failed(t: wire.Task, error: str = "boom", retryable: bool = True) -> wire.TaskResult:
    return wire.TaskResult(
        taskId=t.id, attempt=t.attempt, outcome="failed", error=error, retryable=retryable
    )


async def test_submit_is_readable_and_listed(store: TaskStore) -> None:
    (item,) = await store.submit([task(input={"x": 1}, priority=7)], T0)
    assert item.created and item.task.phase == "Queued"
    fetched = await store.get(item.task.id)
    assert fetched is not None and fetched.input == {"x": 1} and fetched.priority == 7
    listed = await store.list_tasks(TaskQuery(fleet="fleet-a"))
    assert [t.id for t in listed] == [item.task.id]
    assert await store.get("t-missing") is None


async def test_idempotency_key_returns_the_first_task(store: TaskStore) -> None:
    (first,) = await store.submit([task(idempotencyKey="k1")], T0)
    (again,) = await store.submit([task(idempotencyKey="k1", input={"different": True})], T0 + 1)
    (other_ns,) = await store.submit([task(idempotencyKey="k1", namespace="other")], T0)
    assert first.created and not again.created and other_ns.created
    assert again.task.id == first.task.id and again.task.input == {}
    assert other_ns.task.id != first.task.id


async def test_claim_takes_priority_then_fifo(store: TaskStore) -> None:
    submitted = await store.submit(
        [
            task(priority=10, input={"n": 1}),
            task(priority=90, input={"n": 2}),
            task(priority=10, input={"n": 3}),
            task(priority=90, input={"n": 4}),
        ],
        T0,
    )
    worker = await agent(store)
    claimed = await store.claim(worker, 4, T0 + 1)
    assert [t.input["n"] for t in claimed] == [2, 4, 1, 3]
    assert all(t.phase == "Running" and t.attempt == 1 and t.agent == "default/a1" for t in claimed)
    assert {t.id for t in claimed} == {s.task.id for s in submitted}


async def test_claim_respects_fleet_capability_and_concurrency(store: TaskStore) -> None:
    await store.submit([task(capability="echo") for _ in range(5)] + [task(capability="llm")], T0)
    await store.submit([task(fleet="fleet-b")], T0)
    other_fleet = await agent(store, name="b1", fleet="fleet-b", capabilities=("echo",))
    echo_only = await agent(store, concurrency=2)
    assert [t.fleet for t in await store.claim(other_fleet, 10, T0)] == ["fleet-b"]
    first = await store.claim(echo_only, 10, T0)
    assert len(first) == 2 and all(t.capability == "echo" for t in first)
    assert await store.claim(echo_only, 10, T0) == []  # full: concurrency 2
    await store.report(echo_only, [succeeded(first[0])], T0 + 1)
    assert len(await store.claim(echo_only, 10, T0 + 1)) == 1
    llm = await agent(store, name="a2", capabilities=("llm",))
    assert [t.capability for t in await store.claim(llm, 10, T0)] == ["llm"]


async def test_fencing_refuses_stale_and_foreign_reports(store: TaskStore) -> None:
    await store.submit([task(maxAttempts=3)], T0)
    first_agent, second_agent = await agent(store, "a1"), await agent(store, "a2")
    (leased,) = await store.claim(first_agent, 1, T0)
    (foreign,) = await store.report(second_agent, [succeeded(leased)], T0 + 1)
    assert foreign.ack.status == "stale" and "held by default/a1" in foreign.ack.message
    # The lease runs out; the task goes back (backoff), and a second agent takes attempt 2.
    (expired,) = await store.expire_due(T0 + store.settings.lease_seconds + 1)
    assert expired.phase == "Queued" and expired.attempts[0].outcome == "LeaseExpired"
    retry_at = expired.availableAt
    assert retry_at > T0 + store.settings.lease_seconds + 1
    assert await store.claim(second_agent, 1, retry_at - 0.01) == []
    (second,) = await store.claim(second_agent, 1, retry_at)
    assert second.attempt == 2
    # The slow first agent wakes up: its result, heartbeat and failure are all stale.
    (late,) = await store.report(first_agent, [succeeded(leased, {"from": "late"})], retry_at + 1)
    assert late.ack.status == "stale" and late.task is None and "stale" in late.ack.message
    (beat,) = await store.heartbeat(
        first_agent, [wire.LeaseRef(taskId=leased.id, attempt=1)], False, retry_at
    )
    assert beat.status == "stale"
    (done,) = await store.report(
        second_agent, [succeeded(second, {"from": "second"})], retry_at + 2
    )
    assert (
        done.ack.status == "recorded" and done.task is not None and done.task.phase == "Succeeded"
    )
    (twice,) = await store.report(second_agent, [succeeded(second)], retry_at + 3)
    assert twice.ack.status == "stale"
    final = await store.get(leased.id)
    assert final is not None and final.result == {"from": "second"} and final.attempt == 2


async def test_heartbeat_keeps_the_lease(store: TaskStore) -> None:
    await store.submit([task()], T0)
    worker = await agent(store)
    (leased,) = await store.claim(worker, 1, T0)
    ref = wire.LeaseRef(taskId=leased.id, attempt=1)
    for step in range(1, 4):
        (status,) = await store.heartbeat(worker, [ref], False, T0 + step * 8)
        assert (
            status.status == "extended"
            and status.leaseExpiresAt == T0 + step * 8 + store.settings.lease_seconds
        )
        assert await store.expire_due(T0 + step * 8 + 5) == []
    assert len(await store.expire_due(T0 + 24 + store.settings.lease_seconds)) == 1


async def test_heartbeat_of_unknown_agent_is_refused(store: TaskStore) -> None:
    ghost = AgentInfo(
        namespace="default",
        name="ghost",
        fleet="fleet-a",
        capabilities=["echo"],
        registeredAt=T0,
        lastHeartbeat=T0,
        ready=True,
    )
    with pytest.raises(UnknownAgent):
        await store.heartbeat(ghost, [], False, T0)


async def test_failures_back_off_then_dead_letter_with_every_reason(store: TaskStore) -> None:
    (item,) = await store.submit([task(maxAttempts=3)], T0)
    worker = await agent(store)
    now, delays = T0, []
    for attempt in range(1, 4):
        (leased,) = await store.claim(worker, 1, now)
        assert leased.attempt == attempt
        (reported,) = await store.report(worker, [failed(leased, f"reason {attempt}")], now + 1)
        assert reported.task is not None
        if attempt < 3:
            assert reported.task.phase == "Queued"
            delays.append(reported.task.availableAt - (now + 1))
            now = reported.task.availableAt
    final = await store.get(item.task.id)
    assert final is not None and final.phase == "DeadLettered"
    assert [a.reason for a in final.attempts] == ["reason 1", "reason 2", "reason 3"]
    assert all(f"reason {n}" in final.error for n in (1, 2, 3))
    assert 0.8 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4  # exponential, with jitter


async def test_timeout_ends_the_attempt(store: TaskStore) -> None:
    await store.submit([task(timeout="5s", maxAttempts=1)], T0)
    worker = await agent(store)
    (leased,) = await store.claim(worker, 1, T0)
    assert leased.deadlineAt == T0 + 5
    (timed_out,) = await store.expire_due(T0 + 6)
    assert timed_out.phase == "DeadLettered" and timed_out.attempts[0].outcome == "TimedOut"


async def test_release_requeues_without_using_an_attempt(store: TaskStore) -> None:
    await store.submit([task(maxAttempts=1)], T0)
    worker = await agent(store)
    (leased,) = await store.claim(worker, 1, T0)
    release = wire.TaskResult(taskId=leased.id, attempt=1, outcome="released", error="draining")
    (reported,) = await store.report(worker, [release], T0 + 1)
    assert reported.task is not None and reported.task.phase == "Queued"
    (again,) = await store.claim(worker, 1, T0 + 1)
    assert again.attempt == 2
    (done,) = await store.report(worker, [succeeded(again)], T0 + 2)
    assert done.task is not None and done.task.phase == "Succeeded"


async def test_not_retryable_failure_fails_the_task(store: TaskStore) -> None:
    await store.submit([task(maxAttempts=5)], T0)
    worker = await agent(store)
    (leased,) = await store.claim(worker, 1, T0)
    (reported,) = await store.report(worker, [failed(leased, "bad input", retryable=False)], T0 + 1)
    assert reported.task is not None and reported.task.phase == "Failed"
    assert "bad input" in reported.task.error


async def test_cancel_reaches_queued_and_running_tasks(store: TaskStore) -> None:
    queued, running = await store.submit([task(priority=1), task(priority=99)], T0)
    worker = await agent(store)
    (leased,) = await store.claim(worker, 1, T0)
    assert leased.id == running.task.id
    for item in (queued, running):
        outcome = await store.cancel(item.task.id, T0 + 1)
        assert outcome is not None and outcome[1] and outcome[0].phase == "Cancelled"
    (status,) = await store.heartbeat(
        worker, [wire.LeaseRef(taskId=leased.id, attempt=1)], False, T0 + 2
    )
    assert status.status == "cancelled"
    (late,) = await store.report(worker, [succeeded(leased)], T0 + 3)
    assert late.ack.status == "stale" and "cancelled" in late.ack.message
    repeat = await store.cancel(queued.task.id, T0 + 4)
    assert repeat is not None and repeat[1] is False
    assert await store.cancel("t-nope", T0) is None
    assert await store.claim(worker, 5, T0 + 5) == []


async def test_stats_count_by_fleet_agent_and_template(store: TaskStore) -> None:
    await store.submit([task(priority=p) for p in (10, 10, 50, 50, 50)], T0)
    old, new = (
        await agent(store, "a1", template_hash="old"),
        await agent(store, "a2", template_hash="new"),
    )
    (t1,) = await store.claim(old, 1, T0)
    (t2,) = await store.claim(new, 1, T0)
    (t3,) = await store.claim(new, 1, T0)
    await store.report(old, [succeeded(t1)], T0 + 1)
    await store.report(new, [failed(t2), succeeded(t3)], T0 + 1)
    stats = await store.stats(T0 + 2)
    (fleet,) = stats.fleets
    assert (fleet.queued, fleet.running, fleet.succeeded) == (3, 0, 2)
    assert fleet.queuedByPriority == {"10": 2, "50": 1}
    by_name = {a.name: a for a in fleet.agents}
    assert (by_name["a1"].succeeded, by_name["a1"].failed) == (1, 0)
    assert (by_name["a2"].succeeded, by_name["a2"].failed) == (1, 1)
    assert by_name["a1"].live and by_name["a1"].templateHash == "old"
    rates = {t.templateHash: t.errorRate for t in fleet.templates}
    assert rates == {"old": 0.0, "new": 0.5}
    assert await store.queue_depths() == {
        ("default", "fleet-a", 10): 2,
        ("default", "fleet-a", 50): 1,
    }
    later = await store.stats(T0 + store.settings.liveness_seconds + 10)
    assert not any(a.live for a in later.fleets[0].agents)


async def test_stats_order_fleets_agents_and_templates_alike(store: TaskStore) -> None:
    await store.submit([task(fleet="fleet-b"), task(fleet="fleet-b"), task()], T0)
    late = await agent(store, "b2", fleet="fleet-b", template_hash="z")
    early = await agent(store, "b1", fleet="fleet-b", template_hash="y")
    await agent(store, "idle", fleet="fleet-c")
    (first,) = await store.claim(late, 1, T0)
    await store.report(late, [succeeded(first)], T0 + 1)
    (second,) = await store.claim(early, 1, T0 + 1)
    await store.report(early, [failed(second, retryable=False)], T0 + 2)
    stats = await store.stats(T0 + 3)
    assert [f.fleet for f in stats.fleets] == ["fleet-a", "fleet-b", "fleet-c"]
    fleet_a, fleet_b, fleet_c = stats.fleets
    assert (fleet_a.queued, fleet_a.agents, fleet_a.templates) == (1, [], [])
    assert (fleet_b.queued, fleet_b.succeeded, fleet_b.failed) == (0, 1, 1)
    assert [(a.name, a.succeeded, a.failed) for a in fleet_b.agents] == [
        ("b1", 0, 1),
        ("b2", 1, 0),
    ]
    assert [(t.templateHash, t.attempts, t.failures) for t in fleet_b.templates] == [
        ("y", 1, 1),
        ("z", 1, 0),
    ]
    assert [a.name for a in fleet_c.agents] == ["idle"] and fleet_c.queued == 0


async def test_unknown_tasks_are_stale_for_heartbeats_and_results(store: TaskStore) -> None:
    worker = await agent(store)
    ref = wire.LeaseRef(taskId="t-nope", attempt=1)
    (beat,) = await store.heartbeat(worker, [ref], False, T0)
    assert (beat.status, beat.message, beat.leaseExpiresAt) == ("stale", "no such task", None)
    result = wire.TaskResult(taskId="t-nope", attempt=1, outcome="succeeded")
    (reported,) = await store.report(worker, [result], T0)
    assert reported.task is None and reported.ack.status == "stale"
    assert reported.ack.message == "task t-nope does not exist"


async def test_list_filters_and_pages(store: TaskStore) -> None:
    parent, *_ = await store.submit([task(), task(fleet="fleet-b"), task(), task()], T0)
    (child,) = await store.submit([task(fleet="fleet-b", parentTaskId=parent.task.id)], T0)
    page1 = await store.list_tasks(TaskQuery(fleet="fleet-a", limit=2))
    page2 = await store.list_tasks(TaskQuery(fleet="fleet-a", limit=2, after_seq=page1[-1].seq))
    assert len(page1) == 2 and len(page2) == 1
    assert len({t.id for t in page1 + page2}) == 3
    children = await store.list_tasks(TaskQuery(parent=parent.task.id))
    assert [t.id for t in children] == [child.task.id]
    assert await store.list_tasks(TaskQuery(phase="Running")) == []


async def test_everything_survives_a_restart(store_factory: tuple[str, OpenStore]) -> None:
    _, open_store = store_factory
    first = await open_store()
    (queued,) = await first.submit([task(idempotencyKey="keep")], T0)
    (running_item,) = await first.submit([task(priority=99)], T0)
    worker = await agent(first)
    (leased,) = await first.claim(worker, 1, T0)
    assert leased.id == running_item.task.id
    await first.close()
    # Restart long after the lease would have run out: the agent gets a fresh lease period.
    later = T0 + 100  # past the 10s lease, within the 5m timeout
    second = await open_store(later)
    assert (await second.get(queued.task.id)) is not None
    (same,) = await second.submit([task(idempotencyKey="keep")], later)
    assert not same.created and same.task.id == queued.task.id
    assert await second.expire_due(later + 1) == []
    restarted_agent = await second.get_agent("default", "a1")
    assert restarted_agent is not None
    (done,) = await second.report(restarted_agent, [succeeded(leased)], later + 2)
    assert done.ack.status == "recorded"


async def test_batch_submit_of_many(store: TaskStore) -> None:
    items = await store.submit([task(input={"n": n}) for n in range(300)], T0)
    assert len({i.task.id for i in items}) == 300 and all(i.created for i in items)
    assert [i.task.seq for i in items] == sorted(i.task.seq for i in items)
    assert (await store.queue_depths())[("default", "fleet-a", 50)] == 300


async def test_concurrent_claims_never_share_a_task(store_factory: tuple[str, OpenStore]) -> None:
    """Many agents claiming at once (for NATS: through two replicas) get disjoint tasks."""
    kind, open_store = store_factory
    replicas = [await open_store()] + ([await open_store()] if kind == "nats" else [])
    await replicas[0].submit([task() for _ in range(200)], T0)
    await asyncio.sleep(0.3 if kind == "nats" else 0)  # let the second replica's mirror catch up
    workers = [await agent(replicas[0], f"a{i}", concurrency=50) for i in range(8)]

    async def drain(index: int) -> list[str]:
        replica = replicas[index % len(replicas)]
        worker = await replica.get_agent("default", workers[index].name) or workers[index]
        got: list[str] = []
        for _ in range(10):
            got += [t.id for t in await replica.claim(worker, 10, T0)]
        return got

    claimed = [
        tid for batch in await asyncio.gather(*(drain(i) for i in range(8))) for tid in batch
    ]
    assert len(claimed) == len(set(claimed)) == 200


async def test_claimable_never_counts_fewer_than_a_claim_finds(store: TaskStore) -> None:
    assert await store.claimable("default", "fleet-a", ["echo", "other"], T0, 10) == {
        "echo": 0,
        "other": 0,
    }
    await store.submit([task(), task(), task(capability="other")], T0)
    counts = await store.claimable("default", "fleet-a", ["echo", "other"], T0, 10)
    assert counts["echo"] >= 2 and counts["other"] >= 1
    assert (await store.claimable("default", "fleet-a", ["echo"], T0, 1))["echo"] == 1
    worker = await agent(store, capabilities=("echo", "other"))
    assert len(await store.claim(worker, 10, T0)) == 3
    after = await store.claimable("default", "fleet-a", ["echo", "other"], T0, 10)
    assert after == {"echo": 0, "other": 0}


async def test_submit_and_lease_never_puts_a_new_task_ahead_of_queued_work(
    store: TaskStore,
) -> None:
    idle = await agent(store, "idle", concurrency=2)
    [older] = await store.submit([task()], T0)
    submitted, [leased] = await store.submit_and_lease([task()], T0 + 1, [(idle, 2)])
    fifo = [older.task.id, submitted[0].task.id]
    assert [t.id for t in leased] == fifo[: len(leased)]  # if anything, the older one first
    claimed = await store.claim(idle, 2, T0 + 1)
    assert [t.id for t in leased + claimed] == fifo


async def test_submit_and_lease_stores_every_task_and_leases_each_at_most_once(
    store: TaskStore,
) -> None:
    busy = await agent(store, "busy", concurrency=2)
    idle = await agent(store, "idle", concurrency=2)
    await store.submit([task()], T0)
    assert len(await store.claim(busy, 1, T0)) == 1  # busy runs 1 of 2: room for 1 more
    submitted, leases = await store.submit_and_lease(
        [task(), task(), task()], T0, [(idle, 1), (busy, 2)]
    )
    assert [s.created for s in submitted] == [True, True, True]
    leased = [t.id for tasks in leases for t in tasks]
    assert len(leased) == len(set(leased))
    if store.leases_on_submit:  # in the order given, each within its room and concurrency
        assert [[t.agent for t in tasks] for tasks in leases] == [
            ["default/idle"],
            ["default/busy"],
        ]
        assert all(t.createdAt == t.attempts[0].startedAt for ts in leases for t in ts)
    else:
        assert leased == []
    for item in submitted:
        stored = await store.get(item.task.id)
        assert stored is not None
        assert stored.phase == ("Running" if item.task.id in leased else "Queued")


# -- fan-out and join ---------------------------------------------------------------------


async def leased_parent(store: TaskStore, holder: AgentInfo, **fields: object) -> wire.Task:
    await store.submit([task(fleet=holder.fleet, **fields)], T0)
    (parent,) = await store.claim(holder, 1, T0)
    return parent


def parker(
    parent: wire.Task, children: int, join: wire.JoinMode = "all"
) -> Callable[[wire.Task], wire.Task | None]:
    """The service's park step: fenced by the parent's lease, then lifecycle.park_for_children."""
    ref = wire.LeaseRef(taskId=parent.id, attempt=parent.attempt)

    def park(current: wire.Task) -> wire.Task | None:
        if lifecycle.fence_problem(current, ref, parent.agent) is not None:
            return None
        return lifecycle.park_for_children(current, join, children, {"step": 1}, T0)

    return park


async def spawn(
    store: TaskStore, parent: wire.Task, count: int, join: wire.JoinMode = "all"
) -> tuple[wire.Task, list[wire.Task]]:
    requests = [
        lifecycle.child_request(task(fleet="workers", input={"n": i}), parent, parent.attempt, i)
        for i in range(count)
    ]
    outcome = await store.spawn(parent.id, parker(parent, count, join), requests, T0)
    assert outcome is not None and outcome[1] is not None
    return outcome[0], outcome[1]


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """For NATS: a replica's watch delivers others' writes a moment later."""
    for _ in range(int(seconds / 0.02)):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_a_parent_waits_without_a_lease_and_resumes_once_when_its_children_end(
    store: TaskStore,
) -> None:
    told: list[wire.Task] = []
    store.listener = told.append
    lead = await agent(store, "lead", fleet="leads", concurrency=1)
    worker = await agent(store, "w1", fleet="workers", concurrency=10)
    parent = await leased_parent(store, lead, traceId="ab" * 16)
    parked, children = await spawn(store, parent, 3)

    assert parked.phase == "WaitingForChildren" and parked.join is not None
    assert parked.join.round == parent.attempt and parked.join.children == 3
    assert parked.leaseExpiresAt is None and parked.checkpoint == {"step": 1}
    assert parked.attempts[-1].outcome == "Released"
    assert (await store.running_counts("default", "leads")).get("default/lead", 0) == 0
    assert [c.depth for c in children] == [1, 1, 1]
    assert {c.traceId for c in children} == {"ab" * 16}
    assert {c.parentTaskId for c in children} == {parent.id}
    assert {c.joinRound for c in children} == {parent.attempt}
    assert [c.input for c in children] == [{"n": 0}, {"n": 1}, {"n": 2}]

    claimed = await store.claim(worker, 3, T0)
    assert len(claimed) == 3
    await store.report(worker, [succeeded(claimed[0]), failed(claimed[1], retryable=False)], T0)
    waiting = await store.get(parent.id)
    assert waiting is not None and waiting.phase == "WaitingForChildren"
    await store.report(worker, [succeeded(claimed[2])], T0 + 1)

    async def resumed() -> bool:
        current = await store.get(parent.id)
        return current is not None and current.phase == "Queued"

    await until(resumed)
    current = await store.get(parent.id)
    assert current is not None and current.join is not None
    assert (current.join.succeeded, current.join.failed, current.join.reason) == (2, 1, "allEnded")
    assert [t.id for t in told if t.id == parent.id] == [parent.id]  # told once
    (again,) = await store.claim(lead, 1, T0 + 2)
    assert again.id == parent.id and again.attempt == parent.attempt + 1


async def test_fail_fast_resumes_at_the_first_failure_and_cancels_the_siblings(
    store: TaskStore,
) -> None:
    lead = await agent(store, "lead", fleet="leads")
    worker = await agent(store, "w1", fleet="workers", concurrency=1)
    parent = await leased_parent(store, lead)
    _, children = await spawn(store, parent, 3, join="failFast")
    (running,) = await store.claim(worker, 1, T0)
    await store.report(worker, [failed(running, retryable=False)], T0)

    async def siblings_cancelled() -> bool:
        phases = [(await store.get(c.id)).phase for c in children]  # type: ignore[union-attr]
        return sorted(phases) == ["Cancelled", "Cancelled", "Failed"]

    await until(siblings_cancelled)
    current = await store.get(parent.id)
    assert current is not None and current.phase == "Queued" and current.join is not None
    assert current.join.reason == "childFailed"


async def test_cancelling_a_parent_cancels_its_children_and_grandchildren(
    store: TaskStore,
) -> None:
    lead = await agent(store, "lead", fleet="leads")
    parent = await leased_parent(store, lead)
    _, children = await spawn(store, parent, 2)
    middle = await agent(store, "middle", fleet="workers", concurrency=2)
    claimed = await store.claim(middle, 2, T0)
    _, grandchildren = await spawn(store, claimed[0], 2)
    assert {g.depth for g in grandchildren} == {2}
    outcome = await store.cancel(parent.id, T0 + 1)
    assert outcome is not None and outcome[1]

    async def all_cancelled() -> bool:
        ids = [c.id for c in children + grandchildren]
        phases = {(await store.get(i)).phase for i in ids}  # type: ignore[union-attr]
        return phases == {"Cancelled"}

    await until(all_cancelled)


async def test_a_stale_lease_cannot_start_children(store: TaskStore) -> None:
    lead = await agent(store, "lead", fleet="leads")
    parent = await leased_parent(store, lead)
    stale = parent.model_copy(update={"attempt": parent.attempt + 1})
    request = lifecycle.child_request(task(fleet="workers"), parent, stale.attempt, 0)
    outcome = await store.spawn(parent.id, parker(stale, 1), [request], T0)
    assert outcome is not None and outcome[1] is None and outcome[0].phase == "Running"
    assert await store.list_tasks(TaskQuery(parent=parent.id)) == []
