"""The whole system on the local control plane: a Fleet's agents run as real
processes (pod runner), take tasks from the router, and a crashed agent is
seen (Degraded), replaced, and no accepted task is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentarmy.api import wire
from agentarmy.devcluster.stack import Stack, local_stack, wait_for_agents
from agentarmy.router.client import RouterClient
from tests.integration.operator_process import get_json, ready, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(cluster, "e2e-fleet", tmp_path_factory.mktemp("stack")) as running:
        yield running


def agent_pids(namespace: str, agent: str) -> list[int]:
    """Local processes the pod runner started for ``namespace/agent``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"AGENTARMY_AGENT_NAME={agent}".encode() in environ
            and f"AGENTARMY_NAMESPACE={namespace}".encode() in environ
        ):
            pids.append(int(entry.name))
    return pids


async def run_tasks(stack: Stack, count: int, text: str) -> list[wire.Task]:
    async with RouterClient(stack.router_url, stack.client_token) as client:
        submitted = await client.submit_batch(
            [
                wire.SubmitTask(
                    namespace=stack.namespace,
                    fleet="echo",
                    capability="echo",
                    input={"text": f"{text} {i}"},
                    timeout="20s",
                    maxAttempts=5,
                )
                for i in range(count)
            ]
        )
        ids = [r.task.id for r in submitted.results]
        return list(await asyncio.gather(*(client.wait(i, timeout_seconds=90) for i in ids)))


def test_fleet_runs_tasks_and_survives_an_agent_crash(cluster: Any, stack: Stack) -> None:
    ns = stack.namespace
    cluster.kubectl("apply", "-n", ns, "-f", str(REPO / "manifests/examples/fleet-echo.yaml"))
    cluster.kubectl("wait", "-n", ns, "--for=condition=Available", "fleet/echo", "--timeout=120s")
    agents = get_json(cluster, "agents", "-n", ns)["items"]
    names = sorted(a["metadata"]["name"] for a in agents)
    assert len(names) == 3
    wait_for(lambda: all(agent_pids(ns, n) for n in names), 60, what="agent processes")
    asyncio.run(wait_for_agents(stack.router_url, stack.admin_token, ns, 3))

    first = asyncio.run(run_tasks(stack, 60, "before"))
    assert [t.phase for t in first] == ["Succeeded"] * 60
    assert len({t.agent for t in first}) >= 2, "tasks should spread over agents"

    victim = names[0]
    (pid,) = agent_pids(ns, victim)
    pod_uid = get_json(cluster, "pod", victim, "-n", ns)["metadata"]["uid"]
    os.kill(pid, signal.SIGKILL)

    def degraded_seen() -> bool:
        events = cluster.kubectl(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            f"involvedObject.name={victim},reason=AgentExited",
        ).stdout
        status = get_json(cluster, "agent", victim, "-n", ns)["status"]
        return "AgentExited" in events and status["podRestarts"] >= 1

    wait_for(degraded_seen, 60, what="the crash to be reported on the Agent")

    def replaced() -> bool:
        pod = get_json(cluster, "pod", victim, "-n", ns)
        return pod["metadata"]["uid"] != pod_uid and ready(pod) and bool(agent_pids(ns, victim))

    wait_for(replaced, 90, what="a new pod and process for the crashed agent")
    cluster.kubectl("wait", "-n", ns, "--for=condition=Ready", f"agent/{victim}", "--timeout=60s")
    status = get_json(cluster, "agent", victim, "-n", ns)["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Degraded"] == "False"

    after = asyncio.run(run_tasks(stack, 60, "after"))
    assert [t.phase for t in after] == ["Succeeded"] * 60

    # The router's counts reach Agent status at a coarse interval (not per task).
    def counted() -> int:
        items = get_json(cluster, "agents", "-n", ns)["items"]
        return sum(a["status"].get("tasksSucceeded", 0) for a in items)

    wait_for(lambda: counted() >= 120, 60, what="task counts in Agent status")
    for item in get_json(cluster, "agents", "-n", ns)["items"]:
        assert item["status"]["lastHeartbeatTime"], item["metadata"]["name"]
    assert get_json(cluster, "fleet", "echo", "-n", ns)["status"]["queueDepth"] == 0


def test_fleet_autoscales_on_queue_depth(cluster: Any, stack: Stack) -> None:
    ns = stack.namespace
    fleet = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": "elastic"},
        "spec": {
            "replicas": 1,
            "template": {"spec": {"capabilities": ["slow"], "skills": {"slow": "test"}}},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetQueueDepthPerAgent": 2,
                "scaleDownStabilization": "8s",
            },
        },
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(fleet))
    cluster.kubectl("wait", "-n", ns, "--for=condition=Available", "fleet/elastic", "--timeout=60s")
    asyncio.run(wait_for_agents(stack.router_url, stack.admin_token, ns, 4))  # 3 echo + 1

    async def submit_slow_work() -> list[str]:
        async with RouterClient(stack.router_url, stack.client_token) as client:
            done = await client.submit_batch(
                [
                    wire.SubmitTask(
                        namespace=ns,
                        fleet="elastic",
                        capability="slow",
                        input={"sleep": 2},
                        timeout="30s",
                    )
                    for _ in range(16)
                ]
            )
            return [r.task.id for r in done.results]

    ids = asyncio.run(submit_slow_work())

    def replicas() -> int:
        return int(get_json(cluster, "fleet", "elastic", "-n", ns)["spec"]["replicas"])

    wait_for(lambda: replicas() == 3, 60, what="the fleet to scale up to maxReplicas")
    events = cluster.kubectl(
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.name=elastic,reason=Autoscaled",
    ).stdout
    assert "scaled from 1 to 3 agents" in events

    async def wait_all() -> list[wire.Task]:
        async with RouterClient(stack.router_url, stack.client_token) as client:
            return list(await asyncio.gather(*(client.wait(i, timeout_seconds=60) for i in ids)))

    assert [t.phase for t in asyncio.run(wait_all())] == ["Succeeded"] * 16
    wait_for(lambda: replicas() == 1, 60, what="the fleet to scale back down after the window")

    def agents_follow() -> bool:
        return get_json(cluster, "fleet", "elastic", "-n", ns)["status"].get("replicas") == 1

    wait_for(agents_follow, 60, what="agents to follow the scale-down")
