"""Wake from zero on the real control plane: a Fleet the autoscaler may take to zero
(``minReplicas: 0``) sits at zero Agents until a task comes; the router's stats watch
tells the operator at once, the Fleet grows, an agent process starts and the task
completes — long before the coarse stats poll (two minutes here) could have noticed.
A Fleet a person stopped (``replicas: 0`` with ``minReplicas: 1``) stays stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentarmy.api import wire
from agentarmy.devcluster.coldstart import cold_fleet, first_result
from agentarmy.devcluster.stack import Stack, local_stack
from agentarmy.router.client import RouterClient
from tests.integration.operator_process import apply, get_json, wait_for

pytestmark = pytest.mark.e2e

COARSE_STATS_SECONDS = 120.0


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(
        cluster, "e2e-wake", tmp_path_factory.mktemp("stack"), stats_seconds=COARSE_STATS_SECONDS
    ) as running:
        yield running


def replicas(cluster: Any, stack: Stack, fleet: str) -> int:
    found: int = get_json(cluster, "fleet", fleet, "-n", stack.namespace)["spec"]["replicas"]
    return found


def events(cluster: Any, stack: Stack, fleet: str) -> str:
    selector = f"involvedObject.name={fleet},reason=Autoscaled"
    return str(
        cluster.kubectl("get", "events", "-n", stack.namespace, "--field-selector", selector).stdout
    )


def test_a_fleet_at_zero_wakes_on_the_first_submit(cluster: Any, stack: Stack) -> None:
    apply(cluster, stack.namespace, cold_fleet("sleepy"))
    wait_for(
        lambda: (
            get_json(cluster, "fleet", "sleepy", "-n", stack.namespace)
            .get("status", {})
            .get("observedGeneration")
        ),
        60,
        what="the operator to see the fleet",
    )
    assert replicas(cluster, stack, "sleepy") == 0
    assert get_json(cluster, "agents", "-n", stack.namespace)["items"] == []

    async def submit() -> tuple[wire.Task, float]:
        return await first_result(stack.router_url, stack.client_token, stack.namespace, "sleepy")

    submitted = time.monotonic()
    outcome: dict[str, tuple[wire.Task, float]] = {}

    async def run() -> None:
        waiting = asyncio.create_task(submit())
        # The Fleet grows within a few seconds of the submit (the coarse poll is minutes).
        await asyncio.to_thread(
            wait_for, lambda: replicas(cluster, stack, "sleepy") >= 1, 5.0, 0.1, "the wake"
        )
        outcome["result"] = await waiting

    asyncio.run(run())
    task, seconds = outcome["result"]
    assert task.phase == "Succeeded", task
    assert task.result == {"echo": {"text": "wake up"}}
    assert seconds < 30, f"submit to first result took {seconds:.1f}s"
    assert time.monotonic() - submitted < COARSE_STATS_SECONDS / 2
    assert "woke from zero: scaled from 0 to 1 agents: 1 queued" in events(cluster, stack, "sleepy")
    print(f"submit -> first result on a cold fleet: {seconds:.2f}s")


def test_a_fleet_a_person_stopped_stays_stopped(cluster: Any, stack: Stack) -> None:
    stopped = cold_fleet("stopped").replace('"minReplicas": 0', '"minReplicas": 1')
    apply(cluster, stack.namespace, stopped)
    wait_for(
        lambda: (
            get_json(cluster, "fleet", "stopped", "-n", stack.namespace)
            .get("status", {})
            .get("observedGeneration")
        ),
        60,
        what="the operator to see the fleet",
    )

    async def submit_and_wait() -> wire.Task:
        async with RouterClient(stack.router_url, stack.client_token) as client:
            submitted = await client.submit(
                wire.SubmitTask(namespace=stack.namespace, fleet="stopped", capability="echo")
            )
            await asyncio.sleep(4)  # several watch answers later
            return await client.get(submitted.task.id)

    task = asyncio.run(submit_and_wait())
    assert task.phase == "Queued"
    assert replicas(cluster, stack, "stopped") == 0
    assert events(cluster, stack, "stopped").count("Autoscaled") == 0
