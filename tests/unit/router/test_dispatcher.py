"""Dispatch among waiting agents: least loaded first, waits end on drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo, Task
from agentarmy.router.dispatcher import Dispatcher
from agentarmy.router.store.base import StoreSettings
from agentarmy.router.store.sqlite import SqliteStore

NOW = 1_800_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "r.db", StoreSettings())
    await opened.open(NOW)
    try:
        yield opened
    finally:
        await opened.close()


async def test_least_loaded_waiting_agent_gets_the_next_task(store: SqliteStore) -> None:
    claimed: list[tuple[str, list[Task]]] = []
    dispatcher = Dispatcher(
        store, lambda: NOW, lambda agent, tasks: claimed.append((agent.name, tasks))
    )
    busy, idle = [
        await store.register(
            wire.RegisterAgent(
                namespace="default", name=name, fleet="f", capabilities=["echo"], concurrency=2
            ),
            NOW,
        )
        for name in ("busy", "idle")
    ]
    await store.submit([wire.SubmitTask(fleet="f", capability="echo")], NOW)
    assert len(await dispatcher.claim(busy, 1, 0)) == 1  # busy now runs 1 of 2
    # busy starts waiting first, idle second; a new task must still go to idle.
    waits = [asyncio.create_task(dispatcher.claim(agent, 1, 2.0)) for agent in (busy, idle)]
    await asyncio.sleep(0.05)
    await store.submit([wire.SubmitTask(fleet="f", capability="echo")], NOW)
    dispatcher.notify("default", "f")
    done, _ = await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
    assert [claimed[-1][0]] == ["idle"] and waits[1] in done
    dispatcher.end_waits("default", "busy")  # a draining agent's long-poll ends at once
    assert await asyncio.wait_for(waits[0], 1.0) == []


async def test_claim_without_work_and_without_wait_returns_nothing(store: SqliteStore) -> None:
    dispatcher = Dispatcher(store, lambda: NOW, lambda agent, tasks: None)
    agent = AgentInfo(
        namespace="default",
        name="a",
        fleet="f",
        capabilities=["echo"],
        registeredAt=NOW,
        lastHeartbeat=NOW,
        ready=True,
    )
    assert await dispatcher.claim(agent, 5, 0) == []
    assert await dispatcher.claim(agent, 5, 0.05) == []


async def test_a_task_for_a_waiting_agent_is_leased_in_the_write_that_stores_it(
    store: SqliteStore,
) -> None:
    dispatcher = Dispatcher(store, lambda: NOW, lambda agent, tasks: None)
    waiting = await store.register(
        wire.RegisterAgent(namespace="default", name="w", fleet="f", capabilities=["echo"]),
        NOW,
    )
    wait = asyncio.create_task(dispatcher.claim(waiting, 1, 2.0))
    await asyncio.sleep(0.05)
    (item,) = await dispatcher.submit([wire.SubmitTask(fleet="f", capability="echo")], NOW)
    (leased,) = await asyncio.wait_for(wait, 1.0)
    assert leased.id == item.task.id and leased.attempts[0].startedAt == item.task.createdAt
    stored = await store.get(item.task.id)
    assert stored is not None and stored.phase == "Running" and stored.agent == "default/w"


async def test_lease_counts_are_read_back_from_the_table_after_a_rollback(
    store: SqliteStore,
) -> None:
    worker = await store.register(
        wire.RegisterAgent(
            namespace="default", name="a", fleet="f", capabilities=["echo"], concurrency=2
        ),
        NOW,
    )
    await store.submit([wire.SubmitTask(fleet="f", capability="echo")] * 2, NOW)
    assert len(await store.claim(worker, 1, NOW)) == 1

    def lease_then_fail(conn: object) -> None:
        assert len(store._lease(conn, worker, 1, NOW)) == 1  # type: ignore[arg-type]
        raise RuntimeError("operation fails after leasing")

    with pytest.raises(RuntimeError):
        await store._write(lease_then_fail)
    assert await store.running_counts("default", "f") == {"default/a": 1}


async def test_a_submission_goes_to_the_least_loaded_waiter_that_has_the_capability(
    store: SqliteStore,
) -> None:
    dispatcher = Dispatcher(store, lambda: NOW, lambda agent, tasks: None)
    agents = {
        name: await store.register(
            wire.RegisterAgent(
                namespace="default",
                name=name,
                fleet="f",
                capabilities=capabilities,
                concurrency=2,
            ),
            NOW,
        )
        for name, capabilities in (
            ("other", ["summarize"]),  # idle, but cannot run echo
            ("busy", ["echo"]),
            ("full", ["echo"]),
            ("idle", ["echo", "summarize"]),
        )
    }
    await store.submit([wire.SubmitTask(fleet="f", capability="echo")] * 3, NOW)
    assert len(await dispatcher.claim(agents["busy"], 1, 0)) == 1  # runs 1 of 2
    assert len(await dispatcher.claim(agents["full"], 2, 0)) == 2  # runs 2 of 2
    waits = {
        name: asyncio.create_task(dispatcher.claim(agent, 1, 2.0)) for name, agent in agents.items()
    }
    await asyncio.sleep(0.05)
    (first,) = await dispatcher.submit([wire.SubmitTask(fleet="f", capability="echo")], NOW)
    assert [t.id for t in await asyncio.wait_for(waits["idle"], 1.0)] == [first.task.id]
    (second,) = await dispatcher.submit([wire.SubmitTask(fleet="f", capability="echo")], NOW)
    assert [t.id for t in await asyncio.wait_for(waits["busy"], 1.0)] == [second.task.id]
    assert not waits["other"].done() and not waits["full"].done()
    for name in ("other", "full"):
        dispatcher.end_waits("default", name)
    assert await asyncio.gather(waits["other"], waits["full"]) == [[], []]
