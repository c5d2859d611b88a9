"""The router tells a Fleet's templates apart: the Pods the operator makes carry the
Agent's template hash (AGENTARMY_TEMPLATE_HASH), so attempts are counted per template —
the signal a canary rollout is judged by. Real control plane, router, operator, agents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentarmy.api import wire
from agentarmy.devcluster.stack import Stack, local_stack
from agentarmy.router.client import RouterClient
from tests.integration.operator_process import apply, get_json, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(cluster, "e2e-templates", tmp_path_factory.mktemp("stack")) as running:
        yield running


def fleet(version: str) -> str:
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Fleet",
            "metadata": {"name": "versions"},
            "spec": {
                "replicas": 1,
                "template": {
                    "spec": {
                        "capabilities": ["test"],
                        "env": [{"name": "VERSION", "value": version}],
                    }
                },
            },
        }
    )


def run_tasks(stack: Stack, count: int) -> None:
    async def run() -> None:
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            ids = [
                (
                    await admin.submit(
                        wire.SubmitTask(
                            namespace=stack.namespace, fleet="versions", capability="test"
                        )
                    )
                ).task.id
                for _ in range(count)
            ]
            for task_id in ids:
                assert (await admin.wait(task_id, 30)).phase == "Succeeded"

    asyncio.run(run())


def router_templates(stack: Stack) -> dict[str, int]:
    async def read() -> dict[str, int]:
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            stats = await admin.stats()
        (versions,) = [
            f for f in stats.fleets if f.namespace == stack.namespace and f.fleet == "versions"
        ]
        return {t.templateHash: t.attempts for t in versions.templates}

    return asyncio.run(read())


def serving(stack: Stack) -> set[str]:
    """Template hashes of the fleet's agents the router may dispatch to (live and ready)."""

    async def read() -> set[str]:
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            stats = await admin.stats()
        return {
            a.templateHash
            for f in stats.fleets
            if f.namespace == stack.namespace and f.fleet == "versions"
            for a in f.agents
            if a.live and a.ready
        }

    return asyncio.run(read())


def rolled_out(cluster: Any, stack: Stack) -> str:
    cluster.kubectl(
        "wait",
        "-n",
        stack.namespace,
        "--for=condition=Available",
        "fleet/versions",
        "--timeout=90s",
    )

    def complete() -> bool:
        status = get_json(cluster, "fleet", "versions", "-n", stack.namespace)["status"]
        return status.get("updatedReplicas") == status.get("replicas") == 1

    wait_for(complete, 90)
    current: str = get_json(cluster, "fleet", "versions", "-n", stack.namespace)["status"][
        "currentTemplateHash"
    ]
    return current


def test_a_fleets_two_templates_show_up_apart_in_the_router(cluster: Any, stack: Stack) -> None:
    apply(cluster, stack.namespace, fleet("1"))
    first = rolled_out(cluster, stack)
    run_tasks(stack, 3)
    apply(cluster, stack.namespace, fleet("2"))
    second = rolled_out(cluster, stack)
    assert second != first
    wait_for(lambda: first not in _agent_hashes(cluster, stack), 90)  # the old agent is gone
    wait_for(lambda: serving(stack) == {second}, 90)  # and the router sends it nothing more
    run_tasks(stack, 4)
    assert router_templates(stack) == {first: 3, second: 4}


def _agent_hashes(cluster: Any, stack: Stack) -> set[str]:
    agents = get_json(cluster, "agents", "-n", stack.namespace, "-l", "agentarmy.io/fleet=versions")
    return {a["metadata"]["labels"].get("agentarmy.io/template-hash", "") for a in agents["items"]}
