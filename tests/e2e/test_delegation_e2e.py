"""Delegation from the llm skill, as users set it up: a lead Fleet whose Agent spec names a
delegate tool (ask-reviewer -> fleet reviewers), applied with kubectl to the real control
plane; operator, router and agent processes are real, the model is tests/e2e/fakemodel.py
on loopback. The model's call becomes a child task on the reviewers fleet; the lead waits
holding no lease and its model's turn resumes with the child's result."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentarmy.api import runtime_env as env
from agentarmy.api import wire
from agentarmy.devcluster.stack import Stack, local_stack
from agentarmy.router.client import RouterClient
from tests.e2e.fakemodel import FakeModel, fake_model

pytestmark = pytest.mark.e2e

ARMYCTL = [sys.executable, "-m", "agentarmy.cli.main"]
PROMPT = 'call:ask-reviewer {"prompt": "review the plan", "sleep": 3}'


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(cluster, "e2e-delegation", tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
async def model() -> AsyncIterator[FakeModel]:
    async with fake_model() as running:
        yield running


def fleets(model: FakeModel) -> list[dict[str, Any]]:
    resources = {"limits": {"cpu": "500m", "memory": "256Mi"}}
    lead = {
        "role": "lead",
        "capabilities": ["chat"],
        "skills": {"chat": "llm"},
        "model": {"provider": "openai-compatible", "name": "fake", "endpoint": model.url},
        "delegates": [
            {
                "tool": "ask-reviewer",
                "fleet": "reviewers",
                "capability": "review",
                "description": "Ask the reviewer fleet for a review.",
            }
        ],
        "resources": resources,
    }
    reviewer = {
        "role": "reviewer",
        "capabilities": ["review"],
        "skills": {"review": "test"},  # sleeps as asked, returns its attempt and agent
        "resources": resources,
    }
    return [
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Fleet",
            "metadata": {"name": name},
            "spec": {"replicas": 1, "template": {"spec": spec}},
        }
        for name, spec in (("lead", lead), ("reviewers", reviewer))
    ]


async def phase_of(
    admin: RouterClient, task_id: str, phases: set[str], seconds: float
) -> wire.Task:
    deadline = time.monotonic() + seconds
    while True:
        task = await admin.get(task_id)
        if task.phase in phases or time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.1)


async def test_the_model_asks_another_fleet_and_resumes_with_its_answer(
    stack: Stack, model: FakeModel
) -> None:
    ns, cluster = stack.namespace, stack.cluster
    await asyncio.to_thread(cluster.apply, fleets(model), "-n", ns)
    await asyncio.to_thread(
        cluster.kubectl,
        "wait",
        "-n",
        ns,
        "--for=condition=Available",
        "fleet/lead",
        "fleet/reviewers",
        "--timeout=120s",
    )
    async with RouterClient(stack.router_url, stack.admin_token) as admin:
        submitted = await admin.submit(
            wire.SubmitTask(namespace=ns, fleet="lead", capability="chat", input={"prompt": PROMPT})
        )
        lead_id = submitted.task.id
        waiting = await phase_of(admin, lead_id, {"WaitingForChildren"}, 60)
        assert waiting.phase == "WaitingForChildren", waiting
        # While the reviewer works, the lead holds no lease: its fleet runs nothing.
        stats = await admin.stats()
        (lead_fleet,) = [f for f in stats.fleets if f.namespace == ns and f.fleet == "lead"]
        assert (lead_fleet.running, lead_fleet.waitingForChildren) == (0, 1)
        assert waiting.agent == "" or waiting.leaseExpiresAt is None

        done = await phase_of(admin, lead_id, {"Succeeded", "Failed", "DeadLettered"}, 60)
        assert done.phase == "Succeeded", done.error
        tree = (await admin.tree(lead_id)).tasks

    assert [(t.depth, t.fleet, t.capability, t.phase) for t in tree] == [
        (0, "lead", "chat", "Succeeded"),
        (1, "reviewers", "review", "Succeeded"),
    ]
    lead, child = tree
    assert child.input == {"prompt": "review the plan", "sleep": 3}
    assert child.traceId == lead.traceId
    assert [a.outcome for a in lead.attempts] == ["Released", "Succeeded"]
    assert child.attempts[-1].agent.startswith(f"{ns}/reviewers-")
    # The model was asked twice: the call, then the answer with the child's result.
    assert len(model.calls) == 2
    answered = [m for m in model.calls[1]["messages"] if m["role"] == "tool"]
    assert [json.loads(m["content"]) for m in answered] == [child.result]
    assert done.result is not None
    assert json.loads(done.result["content"]) == child.result
    assert done.result["toolCalls"] == [
        {
            "name": "ask-reviewer",
            "arguments": {"prompt": "review the plan", "sleep": 3},
            "ok": True,
            "taskId": child.id,
        }
    ]
    offered = [t["function"]["name"] for t in model.calls[0]["tools"]]
    assert "ask-reviewer" in offered

    shown = await asyncio.to_thread(
        subprocess.run,
        [*ARMYCTL, "tasks", "tree", lead_id, "-n", ns, "--router", stack.router_url],
        env={**os.environ, env.ROUTER_TOKEN: stack.admin_token},
        capture_output=True,
        text=True,
        check=True,
    )
    print("\n" + shown.stdout)
    lines = shown.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == [lead_id, child.id]
    assert lines[2].startswith("  ") and "reviewers" in lines[2]
