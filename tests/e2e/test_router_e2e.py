"""End to end: a router process and 20 agent processes run 10,000 tasks while the router
is SIGKILLed and restarted twice and random agents are SIGKILLed mid-task.

At the end every accepted task has exactly one recorded outcome — succeeded, or
dead-lettered with a reason for every attempt — and nothing else exists.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentarmy.api import runtime_env as env
from agentarmy.api import wire
from agentarmy.devcluster.processes import stop_process
from agentarmy.router.client import TRANSIENT, RouterClient, RouterError
from agentarmy.router.testing import RouterProcess, write_token_file

pytestmark = pytest.mark.e2e

TASKS = 10_000
AGENTS = 20
AGENT_CONCURRENCY = 4
BATCH = 250
ROUTER_KILLS_AT = (2_500, 6_500)  # accepted-task counts at which the router is SIGKILLed
AGENT_KILL_EVERY = 1.5  # seconds
ADMIN_TOKEN = "e2e-admin-token-00001"
AGENT_TOKEN = "e2e-agent-token-00001"
ROUTER_ARGS = [
    "--lease",
    "3s",
    "--retry-backoff",
    "200ms",
    "--retry-backoff-max",
    "2s",
    "--reap-interval",
    "200ms",
]


def task_input(index: int) -> tuple[dict[str, object], int]:
    """Input and maxAttempts: 1% always fail, 10% fail once, the rest sleep a little."""
    if index % 100 == 0:
        return {"fail": "always fails"}, 3
    if index % 10 == 1:
        return {"failAttempts": 1, "sleep": 0.01}, 6
    return {"sleep": random.choice((0.0, 0.01, 0.05, 0.2))}, 6


class Fleet:
    """Agent processes; kill one at random and start a replacement."""

    def __init__(self, router_url: str, token_file: Path, logs: Path) -> None:
        self.router_url = router_url
        self.token_file = token_file
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0
        self.killed = 0

    def start(self) -> None:
        name = f"agent-{self.started}"
        self.started += 1
        agent_env = {
            **os.environ,
            env.ROUTER_URL: self.router_url,
            env.AGENT_NAME: name,
            env.NAMESPACE: "default",
            env.FLEET: "e2e",
            env.CAPABILITIES: "test",
            env.CONCURRENCY: str(AGENT_CONCURRENCY),
            env.HEARTBEAT_INTERVAL: "1s",
            env.TOKEN_FILE: str(self.token_file),
            "AGENTARMY_LOG_LEVEL": "WARNING",
        }
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "agentarmy.cli.main", "agent"],
            env=agent_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill_one(self) -> None:
        name = random.choice(sorted(self.processes))
        process = self.processes.pop(name)
        process.kill()
        process.wait()
        self.killed += 1
        self.start()

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process(process, grace=15)


async def submit_all(client: RouterClient, accepted: dict[int, str]) -> None:
    """Submit in batches; a batch that fails (router down) is resent with the same keys."""
    for start in range(0, TASKS, BATCH):
        batch = []
        for index in range(start, min(TASKS, start + BATCH)):
            task_in, attempts = task_input(index)
            batch.append(
                wire.SubmitTask(
                    fleet="e2e",
                    capability="test",
                    input=task_in,
                    maxAttempts=attempts,
                    idempotencyKey=f"e2e-{index}",
                )
            )
        while True:
            try:
                reply = await client.submit_batch(batch)
                break
            except (RouterError, *TRANSIENT):
                await asyncio.sleep(0.2)
        for index, result in zip(range(start, start + len(batch)), reply.results, strict=True):
            assert accepted.setdefault(index, result.task.id) == result.task.id, (
                "key mapped to two tasks"
            )


async def chaos(
    router: RouterProcess, fleet: Fleet, accepted: dict[int, str], done: asyncio.Event
) -> int:
    router_kills = 0
    last_agent_kill = time.monotonic()
    while not done.is_set():
        await asyncio.sleep(0.1)
        if router_kills < len(ROUTER_KILLS_AT) and len(accepted) >= ROUTER_KILLS_AT[router_kills]:
            router.kill()
            router_kills += 1
            await asyncio.sleep(1.0)
            await asyncio.to_thread(router.start, 60)
        if time.monotonic() - last_agent_kill >= AGENT_KILL_EVERY:
            fleet.kill_one()
            last_agent_kill = time.monotonic()
    return router_kills


async def wait_until_all_ended(client: RouterClient, deadline: float) -> wire.FleetStats:
    while time.monotonic() < deadline:
        try:
            stats = await client.stats()
        except (RouterError, *TRANSIENT):
            await asyncio.sleep(0.5)
            continue
        fleets = [f for f in stats.fleets if f.fleet == "e2e"]
        if fleets and fleets[0].queued + fleets[0].running == 0:
            return fleets[0]
        await asyncio.sleep(0.5)
    raise AssertionError(f"tasks still open after the deadline: {stats}")


async def all_tasks(client: RouterClient) -> list[wire.Task]:
    tasks: list[wire.Task] = []
    after = 0
    while True:
        page = await client.list(fleet="e2e", limit=1000, after=after)
        tasks += page.tasks
        if page.next is None:
            return tasks
        after = int(page.next)


def router_starts(router_log: Path) -> list[float]:
    """When each router lifetime began listening (log timestamps)."""
    return [
        json.loads(line)["ts"]
        for line in router_log.read_text().splitlines()
        if '"msg":"router listening' in line
    ]


def outcome_lines(router_log: Path) -> collections.Counter[str]:
    """How many times the router logged a final outcome per task (over all its lifetimes)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in router_log.read_text().splitlines():
        if '"event":"succeeded"' in line or '"event":"dead-lettered"' in line:
            counts[json.loads(line)["taskId"]] += 1
    return counts


async def test_every_accepted_task_ends_exactly_once(tmp_path: Path) -> None:
    random.seed(5)
    tokens = write_token_file(
        tmp_path / "tokens.yaml",
        [
            {"token": ADMIN_TOKEN, "name": "e2e-admin", "role": "admin"},
            {
                "token": AGENT_TOKEN,
                "name": "e2e-agents",
                "role": "agent",
                "namespace": "default",
                "fleet": "e2e",
            },
        ],
    )
    agent_token = tmp_path / "agent.token"
    agent_token.write_text(AGENT_TOKEN)
    router_log = tmp_path / "router.log"
    router = RouterProcess(
        f"sqlite:///{tmp_path}/router.db", tokens, router_log, extra_args=ROUTER_ARGS
    )
    router.start()
    fleet = Fleet(router.url, agent_token, tmp_path)
    started = time.monotonic()
    try:
        for _ in range(AGENTS):
            fleet.start()
        accepted: dict[int, str] = {}
        done = asyncio.Event()
        async with RouterClient(router.url, ADMIN_TOKEN, timeout=30) as client:
            chaos_task = asyncio.create_task(chaos(router, fleet, accepted, done))
            await submit_all(client, accepted)
            # Keep killing agents while the backlog drains, then let the rest finish.
            await asyncio.sleep(8)
            done.set()
            router_kills = await chaos_task
            final_stats = await wait_until_all_ended(client, time.monotonic() + 240)
            tasks = await all_tasks(client)
    finally:
        fleet.stop()
        router.stop()
    elapsed = time.monotonic() - started

    by_id = {t.id: t for t in tasks}
    phases = collections.Counter(t.phase for t in tasks)
    attempts = collections.Counter(a.outcome for t in tasks for a in t.attempts)
    logged = outcome_lines(router_log)
    print(
        f"\ne2e: {len(accepted)} accepted, {len(tasks)} stored, phases {dict(phases)}, "
        f"attempt outcomes {dict(attempts)}, router kills {router_kills}, agent kills {fleet.killed}, "
        f"{elapsed:.0f}s"
    )

    assert router_kills == 2 and fleet.killed >= 5
    assert len(accepted) == TASKS and len(set(accepted.values())) == TASKS
    assert set(by_id) == set(accepted.values()), "stored tasks differ from accepted ones"
    assert phases["Succeeded"] + phases["DeadLettered"] == TASKS
    assert (
        final_stats.succeeded == phases["Succeeded"]
        and final_stats.deadLettered == phases["DeadLettered"]
    )
    for index, task_id in accepted.items():
        task = by_id[task_id]
        wins = sum(1 for a in task.attempts if a.outcome == "Succeeded")
        assert all(a.outcome is not None and a.endedAt is not None for a in task.attempts), task
        if task.phase == "Succeeded":
            assert wins == 1, task
        else:
            assert wins == 0 and task.error, task
            assert all(a.reason for a in task.attempts), task
        if index % 100 == 0:
            assert task.phase == "DeadLettered" and "always fails" in task.error, task
        assert logged[task_id] <= 1, f"{task_id} logged {logged[task_id]} final outcomes"
    assert attempts["LeaseExpired"] > 0, "no agent was killed mid-task"
    # An outcome is logged after its commit, so a SIGKILL in between eats the line: such
    # gaps may only sit just before a restart, at most one group commit's worth per kill.
    unlogged = [by_id[task_id] for task_id in accepted.values() if logged[task_id] == 0]
    restarts = router_starts(router_log)[1:]
    for task in unlogged:
        assert task.finishedAt is not None
        assert any(0 <= at - task.finishedAt <= 10 for at in restarts), (task, restarts)
    assert len(unlogged) <= router_kills * AGENTS * AGENT_CONCURRENCY, len(unlogged)
