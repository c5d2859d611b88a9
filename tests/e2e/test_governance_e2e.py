"""Runtime governance end to end: real router processes (SQLite, and three replicas on one
NATS for the rate limit), real agent processes with the ``test`` and ``llm`` skills, and a
local OpenAI-compatible model server. Rules reach the router as the operator sends them
(PUT /v1/rules/{namespace}); tests/integration/test_runtime_rules.py covers the operator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentarmy.api import runtime_env as env
from agentarmy.api import wire
from agentarmy.api.rules import BudgetRule, FleetRules, RuleLimit, SentinelRule, ToolAllowList
from agentarmy.devcluster.processes import stop_process
from agentarmy.router.client import RouterClient, RouterError, TokenSource
from agentarmy.router.testing import NatsServer, RouterProcess, write_token_file
from tests.e2e.fakemodel import fake_model

pytestmark = pytest.mark.e2e

ADMIN = "gov-admin-token-000001"
AGENT = "gov-agent-token-000001"
NS = "team"
ROUTER_ARGS = ["--lease", "5s", "--reap-interval", "200ms", "--retry-backoff", "200ms"]


def tokens(path: Path, fleet: str) -> Path:
    return write_token_file(
        path,
        [
            {"token": ADMIN, "name": "ops", "role": "admin"},
            {"token": AGENT, "name": "agents", "role": "agent", "namespace": NS, "fleet": fleet},
        ],
    )


def limit(value: float, policy: str = f"{NS}/guard") -> RuleLimit:
    return RuleLimit(value=value, policy=policy)


class Agents:
    def __init__(self, router_url: str, token_file: Path, logs: Path) -> None:
        self.router_url, self.token_file, self.logs = router_url, token_file, logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, fleet: str, capability: str, count: int = 1, **extra: str) -> None:
        for _ in range(count):
            name = f"{fleet}-{len(self.processes)}"
            agent_env = {
                **os.environ,
                env.ROUTER_URL: self.router_url,
                env.AGENT_NAME: name,
                env.NAMESPACE: NS,
                env.FLEET: fleet,
                env.CAPABILITIES: capability,
                env.CONCURRENCY: "2",
                env.HEARTBEAT_INTERVAL: "1s",
                env.TOKEN_FILE: str(self.token_file),
                **extra,
            }
            log = (self.logs / f"{name}.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "agentarmy.cli.main", "agent"],
                    env=agent_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process, grace=10)


@pytest.fixture
def agents_and_router(tmp_path: Path) -> Iterator[tuple[RouterProcess, Agents]]:
    token_file = tokens(tmp_path / "tokens.yaml", "f")
    router = RouterProcess(
        f"sqlite:///{tmp_path}/router.db",
        token_file,
        tmp_path / "router.log",
        extra_args=ROUTER_ARGS,
    )
    agent_tokens = tmp_path / "agent-token"
    agent_tokens.write_text(AGENT)
    with router:
        agents = Agents(router.url, agent_tokens, tmp_path)
        try:
            yield router, agents
        finally:
            agents.stop()


@pytest.fixture
async def admin(agents_and_router: tuple[RouterProcess, Agents]) -> AsyncIterator[RouterClient]:
    router, _ = agents_and_router
    async with RouterClient(router.url, TokenSource(ADMIN)) as client:
        yield client


async def armyctl(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line as a person runs it, with the admin token."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agentarmy.cli.main", *args, "-n", NS, "--router", router.url],
        env={**os.environ, env.ROUTER_TOKEN: ADMIN},
        capture_output=True,
        text=True,
        check=False,
    )


async def wait_all(client: RouterClient, ids: list[str], seconds: float = 60) -> list[wire.Task]:
    deadline = time.monotonic() + seconds
    ended: list[wire.Task] = []
    for task_id in ids:
        task = await client.get(task_id)
        while not task.finishedAt and time.monotonic() < deadline:
            task = await client.wait(task_id, 10)
        ended.append(task)
    return ended


# -- rate limit ---------------------------------------------------------------------------


async def test_rate_limit_is_exact_across_three_router_replicas(tmp_path: Path) -> None:
    token_file = tokens(tmp_path / "tokens.yaml", "f")
    with NatsServer(tmp_path / "nats") as nats:
        routers = [
            RouterProcess(
                nats.url, token_file, tmp_path / f"router-{i}.log", extra_args=ROUTER_ARGS
            )
            for i in range(3)
        ]
        for router in routers:
            router.start()
        try:
            async with RouterClient(routers[0].url, TokenSource(ADMIN)) as first:
                rules = FleetRules(
                    fleet="f", tasksPerMinute=limit(1), burst=limit(30), policies=[f"{NS}/guard"]
                )
                await first.put_rules(NS, [rules])
                await asyncio.sleep(0.5)  # the other replicas hear of it through the KV watch
                clients = [RouterClient(r.url, TokenSource(ADMIN)) for r in routers]
                outcomes = await asyncio.gather(
                    *(
                        clients[i % 3].submit(
                            wire.SubmitTask(namespace=NS, fleet="f", capability="test")
                        )
                        for i in range(90)
                    ),
                    return_exceptions=True,
                )
                for client in clients:
                    await client.close()
            accepted = [o for o in outcomes if isinstance(o, wire.SubmitResponse)]
            refused = [o for o in outcomes if isinstance(o, RouterError)]
            assert len(accepted) == 30, f"{len(accepted)} accepted across 3 replicas, burst 30"
            assert len(refused) == 60
            assert {(e.status, e.code) for e in refused} == {(429, "RateLimited")}
            assert all(f"policy {NS}/guard, rule taskRateLimit" in e.message for e in refused)
            # The header and body, as any HTTP client sees them.
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{routers[1].url}/v1/tasks",
                    json={"namespace": NS, "fleet": "f", "capability": "test"},
                    headers={"Authorization": f"Bearer {ADMIN}"},
                ) as reply,
            ):
                body = await reply.json()
                assert reply.status == 429
                assert int(reply.headers["Retry-After"]) >= 1
                assert body["error"]["policy"] == f"{NS}/guard"
                assert body["error"]["rule"] == "taskRateLimit"
        finally:
            for router in routers:
                router.stop()


# -- token budget -------------------------------------------------------------------------


async def test_a_token_budget_stops_an_llm_fleet_within_its_bound(
    agents_and_router: tuple[RouterProcess, Agents], admin: RouterClient
) -> None:
    _, agents = agents_and_router
    budget = 1500
    await admin.put_rules(
        NS,
        [
            FleetRules(
                fleet="f",
                tokenBudgets=[BudgetRule(tokens=budget, windowSeconds=3600, policy=f"{NS}/budget")],
            )
        ],
    )
    async with fake_model() as model:
        agents.start(
            "f",
            "chat",
            count=2,
            **{
                env.SKILLS: '{"chat": "llm"}',
                env.MODEL_ENDPOINT: model.url,
                env.MODEL_NAME: "tiny",
                env.MODEL_MAX_OUTPUT_TOKENS: "100",
            },
        )
        submitted = [
            (
                await admin.submit(
                    wire.SubmitTask(
                        namespace=NS,
                        fleet="f",
                        capability="chat",
                        input={"prompt": f"question {i}"},
                        maxAttempts=1,
                    )
                )
            ).task.id
            for i in range(20)
        ]
        ended = await wait_all(admin, submitted)
        succeeded = [t for t in ended if t.phase == "Succeeded"]
        failed = [t for t in ended if t.phase != "Succeeded"]
        used = sum(t.usage.totalTokens for t in succeeded if t.usage)
        # Each call reserves its prompt (estimated) plus 100 reply tokens and uses 150, so
        # every call that ran was reserved in full: the budget is never overshot here.
        assert 0 < len(succeeded) < 20
        assert used <= budget
        assert all("rule tokenBudget" in t.error and f"{NS}/budget" in t.error for t in failed)
        assert len(model.calls) == len(succeeded)  # no model call the budget could not afford
        with pytest.raises(RouterError) as refused:
            await admin.submit(wire.SubmitTask(namespace=NS, fleet="f", capability="chat"))
        assert refused.value.status == 429 and refused.value.code == "BudgetExhausted"
        assert "resets in" in refused.value.message


# -- tools --------------------------------------------------------------------------------


async def test_a_tool_the_policies_do_not_allow_fails_the_task_naming_the_rule(
    agents_and_router: tuple[RouterProcess, Agents], admin: RouterClient
) -> None:
    _, agents = agents_and_router
    await admin.put_rules(
        NS,
        [FleetRules(fleet="f", allowedTools=[ToolAllowList(policy=f"{NS}/tools", globs=["echo"])])],
    )
    async with fake_model() as model:
        agents.start(
            "f",
            "chat",
            **{
                env.SKILLS: '{"chat": "llm"}',
                env.MODEL_ENDPOINT: model.url,
                env.ALLOWED_TOOLS: "echo,http",  # the Agent allows both; the Policy only echo
            },
        )
        ask: dict[str, Any] = {"namespace": NS, "fleet": "f", "capability": "chat"}
        good = await admin.submit(wire.SubmitTask(**ask, input={"prompt": "call:echo"}))
        bad = await admin.submit(
            wire.SubmitTask(**ask, input={"prompt": "call:http"}, maxAttempts=3)
        )
        done_good, done_bad = await wait_all(admin, [good.task.id, bad.task.id])
    assert done_good.phase == "Succeeded", done_good.error
    assert done_bad.phase == "Failed"
    assert done_bad.attempt == 1  # refused for good: a retry would be refused again
    assert f"policy {NS}/tools, rule allowedTools" in done_bad.error
    assert '"http" is not allowed' in done_bad.error
    _, metrics = await admin.raw("GET", "/metrics")
    assert 'decision="tool-refused",fleet="f",namespace="team"} 1.0' in metrics.decode()


# -- sentinel -----------------------------------------------------------------------------


async def test_the_sentinel_halts_a_failing_fleet_until_a_person_resumes_it(
    agents_and_router: tuple[RouterProcess, Agents], admin: RouterClient
) -> None:
    router, agents = agents_and_router
    await admin.put_rules(
        NS,
        [
            FleetRules(
                fleet="f",
                sentinel=SentinelRule(
                    maxErrorRate=limit(0.5), minTasks=limit(6), windowSeconds=limit(60)
                ),
            )
        ],
    )
    agents.start("f", "test", count=2)
    ask: dict[str, Any] = {"namespace": NS, "fleet": "f", "capability": "test", "maxAttempts": 1}
    failing = [
        (await admin.submit(wire.SubmitTask(**ask, input={"fail": "broken tool"}))).task.id
        for _ in range(6)  # the sixth failure halts: none is left queued behind it
    ]
    await wait_all(admin, failing)
    # A result is readable as soon as it is stored; the halt it causes is recorded right
    # after, in the same call. The bound promised is dispatch stopped within 1 s.
    deadline = time.monotonic() + 1.0
    halts = (await admin.halts()).halts
    while not halts and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        halts = (await admin.halts()).halts
    assert len(halts) == 1
    halt = halts[0]
    assert (halt.fleet, halt.rule, halt.policy) == ("f", "maxErrorRate", f"{NS}/guard")
    assert halt.sample >= 6 and halt.measured > 0.5
    assert "error rate" in halt.message

    # Halted: new work is accepted and stays queued; nothing is dispatched.
    waiting = [(await admin.submit(wire.SubmitTask(**ask))).task.id for _ in range(4)]
    await asyncio.sleep(2.0)
    assert {(await admin.get(t)).phase for t in waiting} == {"Queued"}

    resume = await armyctl(router, "resume", "fleet/f", "--reason", "tool fixed")
    assert resume.returncode == 0, resume.stderr
    assert f"fleet {NS}/f resumed by admin:ops" in resume.stdout
    assert {t.phase for t in await wait_all(admin, waiting)} == {"Succeeded"}
    assert (await admin.halts()).halts == []
    again = await armyctl(router, "resume", "fleet/f")
    assert "was not halted" in again.stdout
    metrics = await admin.raw("GET", "/metrics")
    text = metrics[1].decode()
    assert (
        'agentarmy_router_governance_decisions_total{decision="halted",fleet="f",namespace="team"}'
        " 1.0" in text
    )
    assert 'decision="resumed"' in text


async def test_an_agent_token_can_neither_set_rules_nor_resume(
    agents_and_router: tuple[RouterProcess, Agents],
) -> None:
    router, _ = agents_and_router
    async with RouterClient(router.url, TokenSource(AGENT)) as agent:
        with pytest.raises(RouterError) as refused:
            await agent.put_rules(NS, [FleetRules(fleet="f", tasksPerMinute=limit(1))])
        assert refused.value.status == 403
        with pytest.raises(RouterError) as refused:
            await agent.resume(NS, "f")
        assert refused.value.status == 403
