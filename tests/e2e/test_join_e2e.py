"""Fan-out and durable join with a real router process and real agent processes.

A parent starts 100 children and waits for them while the router is SIGKILLed twice (once
while children run, once as the last ones end): it resumes exactly once, with every
child's result, and held no lease while it waited. ``failFast`` cancels the siblings of a
failed child; cancelling a parent cancels its children and grandchildren.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentarmy.api import runtime_env as env
from agentarmy.api import wire
from agentarmy.devcluster.processes import stop_process
from agentarmy.router.client import TRANSIENT, RouterClient, RouterError
from agentarmy.router.testing import NatsServer, RouterProcess, write_token_file

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "join-admin-token-000001"
ROUTER_ARGS = ["--lease", "3s", "--retry-backoff", "200ms", "--reap-interval", "200ms"]
FLEETS = {"leads": (1, 1), "workers": (2, 8)}
"""fleet -> (agents, concurrency): one lead slot, so a parent that held it would block."""


@dataclass
class System:
    router: RouterProcess
    client: RouterClient
    agents: list[subprocess.Popen[bytes]]
    admin_token_file: Path


def agent_token(fleet: str) -> str:
    return f"join-agent-token-{fleet}"


def start_agent(router_url: str, tmp: Path, fleet: str, index: int, concurrency: int) -> Any:
    token_file = tmp / f"{fleet}.token"
    token_file.write_text(agent_token(fleet))
    name = f"{fleet}-{index}"
    agent_env = {
        **os.environ,
        env.ROUTER_URL: router_url,
        env.AGENT_NAME: name,
        env.NAMESPACE: "default",
        env.FLEET: fleet,
        env.CAPABILITIES: "test",
        env.CONCURRENCY: str(concurrency),
        env.HEARTBEAT_INTERVAL: "1s",
        env.TOKEN_FILE: str(token_file),
        "AGENTARMY_LOG_LEVEL": "INFO",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "agentarmy.cli.main", "agent"],
        env=agent_env,
        stdout=(tmp / f"{name}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(params=["sqlite", "nats"])
async def system(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[System]:
    """Router (SQLite file, or a real nats-server) and agent processes of both fleets."""
    if request.param == "nats":
        with NatsServer(tmp_path / "nats") as nats:
            async for running in _system(tmp_path, nats.url):
                yield running
    else:
        async for running in _system(tmp_path, f"sqlite:///{tmp_path}/router.db"):
            yield running


async def _system(tmp_path: Path, store_url: str) -> AsyncIterator[System]:
    tokens = write_token_file(
        tmp_path / "tokens.yaml",
        [{"token": ADMIN_TOKEN, "name": "join-admin", "role": "admin"}]
        + [
            {
                "token": agent_token(fleet),
                "name": f"join-{fleet}",
                "role": "agent",
                "namespace": "default",
                "fleet": fleet,
            }
            for fleet in FLEETS
        ],
    )
    router = RouterProcess(store_url, tokens, tmp_path / "router.log", extra_args=ROUTER_ARGS)
    router.start()
    agents = [
        start_agent(router.url, tmp_path, fleet, i, concurrency)
        for fleet, (count, concurrency) in FLEETS.items()
        for i in range(count)
    ]
    try:
        async with RouterClient(router.url, ADMIN_TOKEN, timeout=30) as client:
            admin_token_file = tmp_path / "admin.token"
            admin_token_file.write_text(ADMIN_TOKEN)
            yield System(router, client, agents, admin_token_file)
    finally:
        for process in agents:
            stop_process(process, grace=15)
        router.stop()


async def retrying(call: Callable[[], Awaitable[wire.Task]]) -> wire.Task:
    """A client call that waits out a router restart."""
    while True:
        try:
            return await call()
        except (RouterError, *TRANSIENT):
            await asyncio.sleep(0.2)


async def wait_phase(
    client: RouterClient, task_id: str, phases: set[str], seconds: float = 90
) -> wire.Task:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        task = await retrying(lambda: client.wait(task_id, 2))
        if task.phase in phases:
            return task
    raise AssertionError(f"task {task_id} is {task.phase}, not {phases}, after {seconds}s")


async def children_of(client: RouterClient, parent_id: str) -> list[wire.Task]:
    page = await client.list(parent=parent_id, limit=1000)
    return page.tasks


async def submit(client: RouterClient, **task_input: object) -> wire.Task:
    request = wire.SubmitTask(fleet="leads", capability="test", input=task_input, timeout="2m")
    return (await client.submit(request)).task


def fan_out(inputs: list[dict[str, object]], join: str = "all") -> dict[str, object]:
    return {"fleet": "workers", "capability": "test", "inputs": inputs, "join": join}


async def test_a_hundred_children_join_once_across_two_router_kills(system: System) -> None:
    client, router = system.client, system.router
    inputs: list[dict[str, object]] = [{"sleep": 0.3, "output": {"i": i}} for i in range(100)]
    parent = await submit(client, fanOut=fan_out(inputs))
    started = time.monotonic()

    async def ended_children() -> int:
        children = await retrying_list(client, parent.id)
        return sum(1 for c in children if c.phase == "Succeeded")

    await until_at_least(ended_children, 30)
    waiting = await retrying(lambda: client.get(parent.id))
    assert waiting.phase == "WaitingForChildren" and waiting.agent.startswith("default/leads-")

    # The lead's only slot is free while its parent waits: another task runs on it now.
    other = await submit(client, output={"other": True})
    ran = await wait_phase(client, other.id, {"Succeeded"}, 30)
    assert ran.agent == waiting.agent
    assert (await retrying(lambda: client.get(parent.id))).phase == "WaitingForChildren"

    router.kill()  # while children run
    await asyncio.to_thread(router.start, 60)
    await until_at_least(ended_children, 97)
    router.kill()  # as the last children end: the join may be committing now
    await asyncio.to_thread(router.start, 60)

    done = await wait_phase(client, parent.id, {"Succeeded", "Failed", "DeadLettered"})
    elapsed = time.monotonic() - started
    children = await retrying_list(client, parent.id)
    outcomes = collections.Counter(a.outcome for a in done.attempts)
    print(
        f"\njoin e2e ({router.store_url.split(':')[0]}): 100 children, 2 router kills, parent done in {elapsed:.1f}s; {outcomes}"
    )

    assert done.phase == "Succeeded", done
    assert len(children) == 100 and {c.phase for c in children} == {"Succeeded"}
    assert {c.traceId for c in children} == {done.traceId} and {c.depth for c in children} == {1}
    # Exactly one join: one attempt parked, the next one resumed and finished.
    assert done.join is not None and done.join.succeeded == 100 and done.join.resumedAt
    assert [a.outcome for a in done.attempts][-2:] == ["Released", "Succeeded"]
    assert sum(1 for a in done.attempts if a.reason.startswith("waiting for")) == 1
    assert done.result is not None
    results = done.result["children"]
    assert [r["result"]["i"] for r in results] == list(range(100))
    assert {r["phase"] for r in results} == {"Succeeded"}


async def test_fail_fast_cancels_the_siblings_of_a_failed_child(system: System) -> None:
    client = system.client
    inputs: list[dict[str, object]] = [{"fail": "no", "retryable": False}] + [
        {"sleep": 60} for _ in range(4)
    ]
    parent = await submit(client, fanOut=fan_out(inputs, join="failFast"))
    done = await wait_phase(client, parent.id, {"Succeeded", "Failed"}, 30)
    assert done.phase == "Succeeded" and done.join is not None
    assert done.join.reason == "childFailed"
    phases = [r["phase"] for r in (done.result or {})["children"]]
    assert phases == ["Failed", "Cancelled", "Cancelled", "Cancelled", "Cancelled"]
    children = await children_of(client, parent.id)
    assert sorted(c.phase for c in children) == ["Cancelled"] * 4 + ["Failed"]


async def test_cancelling_a_parent_cancels_children_and_grandchildren(system: System) -> None:
    client = system.client
    grandchildren: list[dict[str, object]] = [{"sleep": 60}, {"sleep": 60}]
    middle: dict[str, object] = {"fanOut": fan_out(grandchildren)}
    parent = await submit(client, fanOut=fan_out([middle, middle]))

    async def waiting_grandchildren() -> int:
        found = 0
        for child in await retrying_list(client, parent.id):
            found += sum(1 for g in await retrying_list(client, child.id) if g.phase == "Running")
        return found

    await until_at_least(waiting_grandchildren, 4)
    tree = await client.tree(parent.id)
    assert [t.depth for t in tree.tasks] == [0, 1, 2, 2, 1, 2, 2]
    cli = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "agentarmy.cli.main",
            "tree",
            parent.id,
            "--router",
            system.router.url,
            "--token-file",
            str(system.admin_token_file),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = cli.stdout.splitlines()
    print("\n" + "\n".join(shown))
    assert shown[0].split()[:4] == ["TASK", "FLEET", "CAPABILITY", "PHASE"]
    assert [line.split()[0] for line in shown[1:8]] == [t.id for t in tree.tasks]
    assert [len(line) - len(line.lstrip()) for line in shown[1:8]] == [0, 2, 4, 4, 2, 4, 4]
    assert "WaitingForChildren (2 children, all)" in shown[1]
    await client.cancel(parent.id)

    async def cancelled() -> int:
        tree = await client.tree(parent.id)
        return sum(1 for t in tree.tasks if t.phase == "Cancelled")

    await until_at_least(cancelled, 7, seconds=10)


async def retrying_list(client: RouterClient, parent_id: str) -> list[wire.Task]:
    while True:
        try:
            return await children_of(client, parent_id)
        except (RouterError, *TRANSIENT):
            await asyncio.sleep(0.2)


async def until_at_least(
    count: Callable[[], Awaitable[int]], wanted: int, seconds: float = 60
) -> None:
    deadline = time.monotonic() + seconds
    seen = 0
    while time.monotonic() < deadline:
        seen = await count()
        if seen >= wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"reached {seen}, wanted {wanted}, within {seconds}s")
