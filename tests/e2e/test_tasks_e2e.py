"""Task objects on the real control plane, with the real router, operator and agent
processes: a Task runs and `kubectl wait` returns; an operator SIGKILLed after the
submit does not submit twice; a Task for a missing Fleet waits for it; deleting a
running Task cancels it in the router; a simple Task costs at most 4 status writes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, KubeConfig

from agentarmy.api import wire
from agentarmy.devcluster.stack import Stack, local_stack
from agentarmy.operator.kube import TaskResource
from agentarmy.router.client import RouterClient
from tests.integration.operator_process import apply, get_json, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(cluster, "e2e-tasks", tmp_path_factory.mktemp("stack")) as running:
        yield running


def fleet(name: str, capabilities: dict[str, str], replicas: int = 1) -> str:
    """A Fleet whose capabilities map to skills (capability -> skill)."""
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Fleet",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "template": {
                    "spec": {
                        "capabilities": sorted(capabilities),
                        "skills": {c: s for c, s in capabilities.items() if c != s},
                        "concurrency": 2,
                    }
                },
            },
        }
    )


def task(name: str, fleet_name: str, capability: str, **input_: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Task",
            "metadata": {"name": name},
            "spec": {
                "fleet": fleet_name,
                "capability": capability,
                "input": input_,
                "timeout": "60s",
            },
        }
    )


def start_fleet(cluster: Any, stack: Stack, manifest: str, name: str) -> None:
    apply(cluster, stack.namespace, manifest)
    cluster.kubectl(
        "wait", "-n", stack.namespace, "--for=condition=Available", f"fleet/{name}", "--timeout=90s"
    )


def router_tasks(stack: Stack, idempotency_key: str) -> list[wire.Task]:
    """Every router task of the namespace with this idempotency key."""

    async def scan() -> list[wire.Task]:
        found: list[wire.Task] = []
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            after = 0
            while True:
                page = await admin.list(namespace=stack.namespace, after=after, limit=1000)
                found += [t for t in page.tasks if t.idempotencyKey == idempotency_key]
                if page.next is None:
                    return found
                after = int(page.next)

    return asyncio.run(scan())


def router_task(stack: Stack, task_id: str) -> wire.Task:
    async def get() -> wire.Task:
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            return await admin.get(task_id)

    return asyncio.run(get())


def router_tree(stack: Stack, task_id: str) -> list[wire.Task]:
    """The task and its descendants, depth first (GET /v1/tasks/{id}/tree)."""

    async def get() -> list[wire.Task]:
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            return (await admin.tree(task_id)).tasks

    return asyncio.run(get())


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {
        c["type"]: (c["status"], c["reason"], c.get("message", ""))
        for c in obj.get("status", {}).get("conditions", [])
    }


def events(cluster: Any, namespace: str, name: str) -> list[str]:
    items = get_json(
        cluster,
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=Task,involvedObject.name={name}",
    )["items"]
    return [e["reason"] for e in items]


class StatusWrites:
    """Counts every write to one Task after its creation, from a watch that starts at the
    creation's resourceVersion (so none is missed or coalesced)."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str, resource_version: str) -> None:
        self.client = Client(KubeConfig.from_file(kubeconfig))
        self.namespace, self.name, self.rv = namespace, name, resource_version
        self.phases: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for kind, obj in self.client.watch(
                TaskResource,
                namespace=self.namespace,
                fields={"metadata.name": self.name},
                resource_version=self.rv,
            ):
                if kind == "MODIFIED":
                    self.phases.append((obj.status or {}).get("phase", ""))
                if kind == "DELETED" or self.done.is_set():
                    return
        except Exception:  # the client was closed under the watch: stop() was called
            if not self.done.is_set():
                raise

    def stop(self) -> list[str]:
        self.done.set()
        phases = list(self.phases)
        self.client.close()  # ends the open watch request (or the cluster's stop does)
        self.thread.join(timeout=5)
        return phases


def test_a_task_completes_and_kubectl_wait_returns(cluster: Any, stack: Stack) -> None:
    ns = stack.namespace
    start_fleet(cluster, stack, fleet("echo", {"echo": "echo"}), "echo")
    manifest = (REPO / "manifests/examples/task-hello.yaml").read_text()
    created = json.loads(
        cluster.kubectl("apply", "-n", ns, "-f", "-", "-o", "json", input=manifest).stdout
    )
    writes = StatusWrites(cluster.kubeconfig, ns, "hello", created["metadata"]["resourceVersion"])
    started = time.monotonic()
    cluster.kubectl("wait", "-n", ns, "--for=condition=Complete", "task/hello", "--timeout=60s")
    waited = time.monotonic() - started
    time.sleep(3)  # a write after the end would show here
    phases = writes.stop()

    obj = get_json(cluster, "task", "hello", "-n", ns)
    status = obj["status"]
    assert status["phase"] == "Succeeded"
    assert status["result"] == {"echo": {"text": "hello, agents"}}
    assert status["attempts"] == 1
    assert status["agent"].startswith(f"{ns}/echo-")
    assert status["startTime"] and status["completionTime"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    cond = conditions(obj)
    assert cond["Accepted"][:2] == ("True", "Submitted")
    assert cond["Complete"][:2] == ("True", "Succeeded")
    assert cond["Failed"][0] == cond["Reconciling"][0] == cond["Stalled"][0] == "False"
    (routed,) = router_tasks(stack, obj["metadata"]["uid"])
    assert routed.id == status["taskId"]
    assert routed.traceId == obj["metadata"]["uid"].replace("-", "")
    assert {"Submitted", "Succeeded"} <= set(events(cluster, ns, "hello"))

    print(f"status writes for a simple Task: {len(phases)} {phases}; kubectl wait {waited:.1f}s")
    assert 1 <= len(phases) <= 4, phases
    assert phases[-1] == "Succeeded"

    table = cluster.kubectl("get", "task", "hello", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "FLEET", "CAPABILITY", "PHASE", "ATTEMPTS", "AGE"]
    assert table[1].split()[:5] == ["hello", "echo", "echo", "Succeeded", "1"]


def test_a_task_for_a_missing_fleet_waits_for_it(cluster: Any, stack: Stack) -> None:
    ns = stack.namespace
    apply(cluster, ns, task("early", "later", "echo", text="patience"))

    def says_not_found() -> bool:
        return conditions(get_json(cluster, "task", "early", "-n", ns)).get("Accepted", ("",))[
            :2
        ] == ("False", "FleetNotFound")

    wait_for(says_not_found, 30, what="Accepted=False, FleetNotFound")
    obj = get_json(cluster, "task", "early", "-n", ns)
    assert obj["status"]["phase"] == "Pending"
    message = conditions(obj)["Accepted"][2]
    assert "fleet later" in message and f"namespace {ns}" in message
    assert "FleetNotFound" in events(cluster, ns, "early")
    assert router_tasks(stack, obj["metadata"]["uid"]) == []

    start_fleet(cluster, stack, fleet("later", {"echo": "echo"}), "later")
    cluster.kubectl("wait", "-n", ns, "--for=condition=Complete", "task/early", "--timeout=90s")
    obj = get_json(cluster, "task", "early", "-n", ns)
    assert obj["status"]["result"] == {"echo": {"text": "patience"}}
    assert conditions(obj)["Accepted"][:2] == ("True", "Submitted")


def test_an_operator_killed_after_the_submit_does_not_submit_twice(
    cluster: Any, stack: Stack
) -> None:
    ns = stack.namespace
    start_fleet(cluster, stack, fleet("slow", {"slow": "test"}), "slow")
    created = json.loads(
        cluster.kubectl(
            "apply", "-n", ns, "-f", "-", "-o", "json", input=task("once", "slow", "slow", sleep=4)
        ).stdout
    )
    uid = created["metadata"]["uid"]
    wait_for(lambda: router_tasks(stack, uid), 30, interval=0.05, what="the submit")
    stack.operator.kill()
    stack.operator.start().wait_ready()
    cluster.kubectl("wait", "-n", ns, "--for=condition=Complete", "task/once", "--timeout=120s")
    (routed,) = router_tasks(stack, uid)
    status = get_json(cluster, "task", "once", "-n", ns)["status"]
    assert status["taskId"] == routed.id
    assert routed.phase == "Succeeded"
    assert routed.attempt == 1


def test_deleting_a_running_task_cancels_it_in_the_router(cluster: Any, stack: Stack) -> None:
    ns = stack.namespace
    start_fleet(cluster, stack, fleet("slow", {"slow": "test"}), "slow")
    created = json.loads(
        cluster.kubectl(
            "apply", "-n", ns, "-f", "-", "-o", "json", input=task("long", "slow", "slow", sleep=60)
        ).stdout
    )
    uid = created["metadata"]["uid"]

    def running() -> bool:
        found = router_tasks(stack, uid)
        return bool(found) and found[0].phase == "Running"

    wait_for(running, 60, what="the router task to run")
    cluster.kubectl("delete", "task", "long", "-n", ns, "--wait=true", "--timeout=30s")
    (routed,) = router_tasks(stack, uid)

    wait_for(
        lambda: router_task(stack, routed.id).phase == "Cancelled",
        20,
        what="the router task to be cancelled",
    )


def test_a_task_deleted_while_no_operator_runs_is_cancelled_at_its_start(
    cluster: Any, stack: Stack
) -> None:
    ns = stack.namespace
    start_fleet(cluster, stack, fleet("slow", {"slow": "test"}), "slow")
    created = json.loads(
        cluster.kubectl(
            "apply",
            "-n",
            ns,
            "-f",
            "-",
            "-o",
            "json",
            input=task("orphan", "slow", "slow", sleep=60),
        ).stdout
    )
    uid = created["metadata"]["uid"]
    wait_for(lambda: router_tasks(stack, uid), 30, what="the submit")
    stack.operator.kill()
    # No finalizer: deletion does not wait for the operator.
    cluster.kubectl("delete", "task", "orphan", "-n", ns, "--wait=true", "--timeout=20s")
    (routed,) = router_tasks(stack, uid)
    assert routed.phase in ("Queued", "Running")
    stack.operator.start().wait_ready()
    wait_for(
        lambda: router_task(stack, routed.id).phase == "Cancelled",
        30,
        what="the orphaned router task to be cancelled",
    )
