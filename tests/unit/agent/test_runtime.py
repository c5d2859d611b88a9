"""The agent runtime against a real router HTTP server (in-process uvicorn, SQLite file)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from agentarmy.agent.runtime import AgentRuntime
from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import load_skills
from agentarmy.api import wire
from agentarmy.api.task import TERMINAL_PHASES
from agentarmy.devcluster.processes import free_port
from agentarmy.router.app import create_app
from agentarmy.router.auth import StaticToken, StaticTokens
from agentarmy.router.client import RouterClient
from agentarmy.router.lifecycle import RetryPolicy
from agentarmy.router.service import RouterService, ServiceSettings
from agentarmy.router.store.base import StoreSettings
from agentarmy.router.store.sqlite import SqliteStore

ADMIN = StaticToken(token="admin-token-0000000001", name="admin", role="admin")
AGENT = StaticToken(
    token="agent-token-0000000001", name="fa", role="agent", namespace="default", fleet="fa"
)


@pytest.fixture
async def router_url(tmp_path: Path) -> AsyncIterator[str]:
    store = SqliteStore(
        tmp_path / "router.db", StoreSettings(lease_seconds=3.0, retry=RetryPolicy(0.05, 0.5))
    )
    service = RouterService(store, ServiceSettings(reap_interval=0.1))
    app = create_app(service, StaticTokens([ADMIN, AGENT]))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


@pytest.fixture
async def caller(router_url: str) -> AsyncIterator[RouterClient]:
    async with RouterClient(router_url, ADMIN.token) as client:
        yield client


@pytest.fixture
async def start_agent(
    router_url: str,
) -> AsyncIterator[Callable[..., tuple[AgentRuntime, asyncio.Task[None]]]]:
    started: list[tuple[AgentRuntime, asyncio.Task[None], RouterClient]] = []

    def start(
        name: str = "a1", concurrency: int = 2, drain: float = 5.0
    ) -> tuple[AgentRuntime, asyncio.Task[None]]:
        settings = AgentSettings(
            router_url=router_url,
            name=name,
            namespace="default",
            fleet="fa",
            capabilities=["echo", "test"],
            concurrency=concurrency,
            heartbeat_interval=0.2,
        )
        client = RouterClient(router_url, AGENT.token)
        runtime = AgentRuntime(settings, client, load_skills(settings), drain_seconds=drain)
        running = asyncio.create_task(runtime.run())
        started.append((runtime, running, client))
        return runtime, running

    yield start
    for runtime, running, client in started:
        runtime.stop()
        await asyncio.wait_for(running, 15)
        await client.close()


async def submit(caller: RouterClient, capability: str = "test", **fields: Any) -> str:
    reply = await caller.submit(wire.SubmitTask(fleet="fa", capability=capability, **fields))
    return reply.task.id


async def until(
    caller: RouterClient, task_id: str, check: Callable[[wire.Task], bool], within: float = 10
) -> wire.Task:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        task = await caller.get(task_id)
        if check(task):
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} never got there: {task}")


async def test_agent_runs_tasks_and_reports_results(caller: RouterClient, start_agent: Any) -> None:
    start_agent()
    ids = [await submit(caller, "echo", input={"n": n}) for n in range(20)]
    ids.append(await submit(caller, input={"failAttempts": 1}))
    for task_id in ids:
        task = await caller.wait(task_id, 10)
        assert task.phase == "Succeeded", task
    assert (await caller.get(ids[0])).result == {"echo": {"n": 0}}
    assert [a.outcome for a in (await caller.get(ids[-1])).attempts] == ["Failed", "Succeeded"]


async def test_timeout_reaches_the_agent(caller: RouterClient, start_agent: Any) -> None:
    start_agent()
    task_id = await submit(caller, input={"sleep": 30}, timeout="500ms", maxAttempts=1)
    task = await until(caller, task_id, lambda t: t.phase in TERMINAL_PHASES)
    assert task.phase == "DeadLettered"
    assert task.attempts[0].outcome in ("Failed", "TimedOut") and "time" in task.attempts[0].reason


async def test_cancel_stops_the_running_skill(caller: RouterClient, start_agent: Any) -> None:
    runtime, _ = start_agent()
    task_id = await submit(caller, input={"sleep": 30})
    await until(caller, task_id, lambda t: t.phase == "Running")
    await caller.cancel(task_id)
    deadline = time.monotonic() + 5
    while runtime.free_slots < runtime.settings.concurrency and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert runtime.free_slots == runtime.settings.concurrency  # the heartbeat told it; it stopped
    assert (await caller.get(task_id)).phase == "Cancelled"


async def test_sigterm_drain_finishes_short_work_and_releases_long_work(
    caller: RouterClient, start_agent: Any
) -> None:
    runtime, running = start_agent(drain=1.0)
    short = await submit(caller, input={"sleep": 0.3})
    long = await submit(caller, input={"sleep": 60}, maxAttempts=1)
    await until(caller, long, lambda t: t.phase == "Running")
    await until(caller, short, lambda t: t.phase == "Running")
    runtime.stop()
    await asyncio.wait_for(running, 10)
    assert (await caller.get(short)).phase == "Succeeded"
    released = await caller.get(long)
    assert released.phase == "Queued" and released.attempts[-1].outcome == "Released"
    # maxAttempts=1, yet the release did not use it up: another agent can still run it.
    start_agent(name="a2")
    task = await until(caller, long, lambda t: t.phase == "Running" and t.agent == "default/a2")
    assert task.attempt == 2
