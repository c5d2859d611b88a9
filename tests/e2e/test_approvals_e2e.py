"""Human approval end to end: a real router process (SQLite), real agent processes running the
llm skill against a local model server, and a tool with a side effect we can count (the
http skill posting to that server). The task parks holding no agent, survives a router
SIGKILL, is decided through armyctl (an agent token may not), and the approved call runs
exactly once even when the agents are killed right after the approval."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentarmy.api import runtime_env as env
from agentarmy.api import wire
from agentarmy.api.rules import ApprovalRule, FleetRules, RuleLimit
from agentarmy.router.client import RouterClient, RouterError, TokenSource
from agentarmy.router.testing import RouterProcess
from tests.e2e.fakemodel import FakeModel, fake_model
from tests.e2e.test_governance_e2e import (
    ADMIN,
    AGENT,
    NS,
    ROUTER_ARGS,
    Agents,
    armyctl,
    tokens,
)

pytestmark = pytest.mark.e2e

HUMANS = f"{NS}/humans"


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    token_file = tokens(tmp_path / "tokens.yaml", "f")
    with RouterProcess(
        f"sqlite:///{tmp_path}/router.db",
        token_file,
        tmp_path / "router.log",
        extra_args=ROUTER_ARGS,
    ) as process:
        yield process


@pytest.fixture
async def model() -> AsyncIterator[FakeModel]:
    async with fake_model() as running:
        yield running


@pytest.fixture
def agents(router: RouterProcess, tmp_path: Path) -> Iterator[Agents]:
    token_file = tmp_path / "agent-token"
    token_file.write_text(AGENT)
    running = Agents(router.url, token_file, tmp_path)
    yield running
    running.stop()


def start_llm_agents(agents: Agents, model: FakeModel, count: int = 2) -> None:
    host = model.side_effect_url.split("/")[2]
    agents.start(
        "f",
        "chat",
        count=count,
        **{
            env.SKILLS: '{"chat": "llm"}',
            env.MODEL_ENDPOINT: model.url,
            env.ALLOWED_TOOLS: "http,echo",
            env.HTTP_ALLOW_LIST: host,
        },
    )


async def governed(
    admin: RouterClient, approval_seconds: float = 60, on_rejection: str = "continue"
) -> None:
    await admin.put_rules(
        NS,
        [
            FleetRules(
                fleet="f",
                approvalTools=[ApprovalRule(tool="http", policy=HUMANS)],
                approvalTimeoutSeconds=RuleLimit(value=approval_seconds, policy=HUMANS),
                onRejection=on_rejection,  # type: ignore[arg-type]
            )
        ],
    )


def side_effect_task(model: FakeModel) -> wire.SubmitTask:
    arguments = json.dumps({"url": model.side_effect_url, "method": "POST"})
    return wire.SubmitTask(
        namespace=NS, fleet="f", capability="chat", input={"prompt": f"call:http {arguments}"}
    )


async def phase_becomes(
    client: RouterClient, task_id: str, phase: str, seconds: float = 30
) -> wire.Task:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        task = await client.get(task_id)
        if task.phase == phase:
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} is {task.phase}, not {phase}, after {seconds}s")


async def test_an_approval_survives_a_router_kill_and_the_call_runs_once(
    router: RouterProcess, agents: Agents, model: FakeModel
) -> None:
    async with RouterClient(router.url, TokenSource(ADMIN)) as admin:
        await governed(admin)
        start_llm_agents(agents, model)
        task_id = (await admin.submit(side_effect_task(model))).task.id
        parked = await phase_becomes(admin, task_id, "AwaitingApproval")
        assert parked.approval is not None
        assert parked.approval.tool == "http" and parked.approval.policies == [HUMANS]
        assert parked.approval.arguments["url"] == model.side_effect_url
        assert parked.approval.agent.startswith(f"{NS}/f-")
        assert model.side_effects == 0
        stats = await admin.stats()
        (fleet,) = [f for f in stats.fleets if f.fleet == "f"]
        assert fleet.awaitingApproval == 1 and fleet.running == 0  # no agent is held

    router.kill()  # SIGKILL while the task waits for a person
    router.start()
    async with RouterClient(router.url, TokenSource(ADMIN)) as admin:
        listed = await armyctl(router, "approvals", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        (waiting,) = wire.ApprovalList.model_validate_json(listed.stdout).approvals
        assert waiting.taskId == task_id and waiting.approval.tool == "http"

        async with RouterClient(router.url, TokenSource(AGENT)) as agent_token:
            with pytest.raises(RouterError) as refused:
                await agent_token.decide(task_id, True, "I approve myself")
            assert refused.value.status == 403

        agents.stop()  # the agents die right after the approval: the call still runs once
        approved = await armyctl(router, "approve", task_id, "--reason", "looks fine")
        assert approved.returncode == 0, approved.stderr
        assert "approved: call of http" in approved.stdout and "admin:ops" in approved.stdout
        start_llm_agents(agents, model, count=1)
        done = await phase_becomes(admin, task_id, "Succeeded")
        assert model.side_effects == 1
        assert done.approval is not None
        assert (done.approval.decision, done.approval.decidedBy) == ("Approved", "admin:ops")
        assert done.approval.decisionReason == "looks fine"
        assert [c["ok"] for c in done.result["toolCalls"]] == [True]  # type: ignore[index]
        again = await armyctl(router, "approve", task_id)
        assert again.returncode == 1 and "Succeeded" in again.stderr


async def test_a_rejection_is_told_to_the_model_and_a_timeout_rejects(
    router: RouterProcess, agents: Agents, model: FakeModel
) -> None:
    async with RouterClient(router.url, TokenSource(ADMIN)) as admin:
        await governed(admin, approval_seconds=2)
        start_llm_agents(agents, model)
        rejected = (await admin.submit(side_effect_task(model))).task.id
        timed_out = (await admin.submit(side_effect_task(model))).task.id
        await phase_becomes(admin, rejected, "AwaitingApproval")
        no_reason = await armyctl(router, "reject", rejected, "--reason", " ")
        assert no_reason.returncode != 0 and "needs a reason" in no_reason.stderr
        said_no = await armyctl(router, "reject", rejected, "--reason", "not on a Friday")
        assert said_no.returncode == 0, said_no.stderr
        told = await phase_becomes(admin, rejected, "Succeeded")
        assert "not on a Friday" in told.result["content"]  # type: ignore[index]
        late = await phase_becomes(admin, timed_out, "Succeeded", seconds=20)
        assert late.approval is not None and late.approval.decision == "TimedOut"
        assert "TimedOut" in late.result["content"]  # type: ignore[index]
        assert model.side_effects == 0


async def test_a_policy_can_make_a_rejection_fail_the_task(
    router: RouterProcess, agents: Agents, model: FakeModel
) -> None:
    async with RouterClient(router.url, TokenSource(ADMIN)) as admin:
        await governed(admin, on_rejection="fail")
        start_llm_agents(agents, model, count=1)
        task_id = (await admin.submit(side_effect_task(model))).task.id
        await phase_becomes(admin, task_id, "AwaitingApproval")
        await admin.decide(task_id, False, "too risky")
        failed = await phase_becomes(admin, task_id, "Failed")
        assert failed.error == "the call of tool http was rejected by admin:ops: too risky"
        assert model.side_effects == 0
