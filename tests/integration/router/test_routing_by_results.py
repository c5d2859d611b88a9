"""Routing by results through the router's own use cases on every real backend (SQLite,
SQLite FULL, NATS): five agents share a full queue; one fails half its tasks, and its share
of the tasks drops well below a fair one, its breaker trip is a decision and a metric, the
stats show its score; once it heals its share comes back.

The agents are driven step by step on a controlled clock (one step = one second; each agent
asks for one task per step, without long-polling, and reports it a step later), so shares
are counted exactly and the test does not depend on the machine's speed. Then a real router
process: a breaker trip shows in ``armyctl agents``, and a bad AGENTARMY_ROUTING stops the
router with an error naming it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agentarmy.api import wire
from agentarmy.router.auth import Principal
from agentarmy.router.client import RouterClient
from agentarmy.router.service import RouterService
from agentarmy.router.store.base import TaskStore
from agentarmy.router.testing import RouterProcess, write_token_file

OpenStore = Callable[..., Awaitable[TaskStore]]
ADMIN = Principal("ops", "admin")
AGENTS = Principal("agents", "agent", namespace="ns", fleet="f")
NAMES = [f"agent-{i}" for i in range(5)]
FLAKY = NAMES[0]
SICK_STEPS = 150
HEALED_STEPS = 300


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def step(
    service: RouterService, clock: Clock, sick: bool, rng: random.Random, flaky_runs: list[int]
) -> list[str]:
    """One second: each agent asks for a task, runs it for the second, reports it. Returns
    the agents that got a task."""
    running: list[tuple[str, wire.Lease]] = []
    for name in NAMES:
        claimed = await service.claim(AGENTS, "ns", name, wire.ClaimRequest(max=1, waitSeconds=0))
        running += [(name, lease) for lease in claimed.tasks]
    clock.now += 1.0
    for name, lease in running:
        fails = False
        if name == FLAKY and sick:
            flaky_runs[0] += 1
            # Its first three fail (a breaker trip for sure), then a coin decides.
            fails = flaky_runs[0] <= 3 or rng.random() < 0.5
        result = wire.TaskResult(
            taskId=lease.taskId,
            attempt=lease.attempt,
            outcome="failed" if fails else "succeeded",
            error="flaky on purpose" if fails else "",
        )
        (ack,) = await service.report(AGENTS, "ns", name, [result])
        assert ack.status == "recorded"
    return [name for name, _ in running]


def flaky_share(steps: list[list[str]]) -> float:
    counts = Counter(name for granted in steps for name in granted)
    return counts[FLAKY] / sum(counts.values())


async def test_an_agent_failing_half_its_tasks_loses_its_share_and_wins_it_back(
    store_factory: tuple[str, OpenStore], caplog: pytest.LogCaptureFixture
) -> None:
    _, open_store = store_factory
    clock = Clock()
    service = RouterService(await open_store(), clock=clock)
    await service.governor.start()
    for name in NAMES:
        await service.register(
            AGENTS,
            wire.RegisterAgent(namespace="ns", name=name, fleet="f", capabilities=["work"]),
        )
    # A queue that never runs dry: every agent could take a task at every step.
    total = 5 * (SICK_STEPS + HEALED_STEPS)
    for _ in range(0, total, 1000):
        batch = [
            wire.SubmitTask(namespace="ns", fleet="f", capability="work", maxAttempts=1)
            for _ in range(1000)
        ]
        await service.submit(ADMIN, batch)
    rng = random.Random(14)
    flaky_runs = [0]
    caplog.set_level(logging.INFO, logger="agentarmy.router.decisions")

    sick = [await step(service, clock, True, rng, flaky_runs) for _ in range(SICK_STEPS)]
    stats = await service.stats(ADMIN)
    (fleet,) = stats.fleets
    by_name = {agent.name: agent for agent in fleet.agents}
    healed = [await step(service, clock, False, rng, flaky_runs) for _ in range(HEALED_STEPS)]

    # Sick: well under half a fair share (a fair share is 1/5), after the first 20 s.
    assert flaky_share(sick[20:]) < 0.1
    assert by_name[FLAKY].score < 0.5 and by_name[FLAKY].successRate < 0.8
    assert all(by_name[name].score == 1.0 for name in NAMES[1:])
    assert {a.breaker for a in fleet.agents} <= {"closed", "open", "half-open"}
    trips = [r for r in caplog.records if r.getMessage() == "breaker-open"]
    assert trips and trips[0].fields["agent"] == FLAKY  # type: ignore[attr-defined]
    assert trips[0].fields["reason"] == "3 failed attempts in a row"  # type: ignore[attr-defined]
    opened = service.metrics.breaker_transitions.labels("ns", "f", "open")._value.get()
    assert opened == len(trips)
    # Healed: back to a fair share within the last 100 s of 300.
    assert flaky_share(healed[-100:]) > 0.17
    final = {a.name: a for a in (await service.stats(ADMIN)).fleets[0].agents}
    assert final[FLAKY].breaker == "closed" and final[FLAKY].score > 0.9
    # Capacity held: every step the four healthy agents each got a task.
    assert all(sum(1 for n in granted if n != FLAKY) == 4 for granted in sick + healed)


def token_file(tmp_path: Path) -> Path:
    return write_token_file(
        tmp_path / "tokens.yaml",
        [
            {"token": "admin-token-0001", "name": "ops", "role": "admin"},
            {
                "token": "agent-token-0001",
                "name": "agents",
                "role": "agent",
                "namespace": "ns",
                "fleet": "f",
            },
        ],
    )


async def test_a_breaker_trip_shows_in_armyctl_agents(tmp_path: Path) -> None:
    tokens = token_file(tmp_path)
    with RouterProcess(
        f"sqlite:///{tmp_path}/router.db", tokens, tmp_path / "router.log"
    ) as router:
        async with (
            RouterClient(router.url, "admin-token-0001") as admin,
            RouterClient(router.url, "agent-token-0001") as agents,
        ):
            for name in ("steady", "flaky"):
                registration = wire.RegisterAgent(
                    namespace="ns", name=name, fleet="f", capabilities=["work"]
                )
                await agents.register(registration)
            work = wire.SubmitTask(namespace="ns", fleet="f", capability="work", maxAttempts=1)
            await admin.submit_batch([work] * 5)
            steady = await agents.claim("ns", "steady", wire.ClaimRequest(max=1, waitSeconds=0))
            await agents.report("ns", "steady", [_result(steady.tasks[0], failed=False)])
            for _ in range(3):  # a long-poll: its pacing after each failure is a short wait
                claimed = await agents.claim("ns", "flaky", wire.ClaimRequest(max=1, waitSeconds=5))
                await agents.report("ns", "flaky", [_result(claimed.tasks[0], failed=True)])
            # Open: no task for the flaky agent, though one is queued.
            held = await agents.claim("ns", "flaky", wire.ClaimRequest(max=1, waitSeconds=0))
            assert held.tasks == []
        command = [sys.executable, "-m", "agentarmy.cli.main", "agents", "-n", "ns"]
        shown = await asyncio.to_thread(
            subprocess.run,
            [*command, "--router", router.url],
            env={**os.environ, "AGENTARMY_ROUTER_TOKEN": "admin-token-0001"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == [
        "NAMESPACE", "FLEET", "AGENT", "LIVE", "RUNNING", "SUCCEEDED", "FAILED",
        "SUCCESS", "LATENCY", "SCORE", "BREAKER", "HEARTBEAT",
    ]  # fmt: skip
    by_agent = {row.split()[2]: row.split() for row in rows}
    assert by_agent["flaky"][6] == "3" and by_agent["flaky"][10] == "open"
    # 0 of 3 with a prior of 2 successes: 40%; weighed against the fleet's 3 of 6.
    assert by_agent["flaky"][7] == "40%" and float(by_agent["flaky"][9]) < 1.0
    assert by_agent["steady"][9:11] == ["1.00", "closed"]
    assert '"breaker-open"' in (tmp_path / "router.log").read_text()


def _result(lease: wire.Lease, failed: bool) -> wire.TaskResult:
    return wire.TaskResult(
        taskId=lease.taskId,
        attempt=lease.attempt,
        outcome="failed" if failed else "succeeded",
        error="on purpose" if failed else "",
    )


def test_an_unknown_routing_mode_stops_the_router_naming_the_variable(tmp_path: Path) -> None:
    router = RouterProcess(
        f"sqlite:///{tmp_path}/router.db",
        token_file(tmp_path),
        tmp_path / "router.log",
        env={"AGENTARMY_ROUTING": "fastest"},
    )
    with pytest.raises(RuntimeError, match="exited with 2"):
        router.start(timeout=30)
    assert (
        "AGENTARMY_ROUTING='fastest' is not a routing mode" in (tmp_path / "router.log").read_text()
    )
