"""The operator against the real control plane: Fleets make Agents, Agents make
Pods, status flows back up, and nothing is left behind."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.operator_process import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    apply,
    get_json,
    ready,
    wait_for,
)

pytestmark = pytest.mark.integration


def fleet_manifest(
    name: str, replicas: int, image_tag: str = "1", min_ready_seconds: int = 0, **strategy: Any
) -> str:
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Fleet",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "minReadySeconds": min_ready_seconds,
                "template": {
                    "metadata": {"labels": {"team": "test"}},
                    "spec": {
                        "capabilities": ["echo"],
                        "image": f"ghcr.io/agentarmy/agent:{image_tag}",
                    },
                },
                "strategy": {"rollingUpdate": strategy or {"maxUnavailable": 1, "maxSurge": 1}},
            },
        }
    )


@pytest.fixture(scope="module")
def operator(cluster: Any) -> Iterator[OperatorProcess]:
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    process = OperatorProcess(cluster.kubeconfig, "operator-test").start()
    try:
        wait_for(process.is_leader, 40, what="the operator to lead")
        yield process
    finally:
        process.stop()


def agents(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(cluster, "agents", "-n", namespace)["items"]
    return items


def pods(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(cluster, "pods", "-n", namespace)["items"]
    return items


def wait_fleet(cluster: Any, namespace: str, name: str, replicas: int, timeout: float = 60) -> None:
    def converged() -> bool:
        fleet = get_json(cluster, "fleet", name, "-n", namespace)
        status = fleet.get("status", {})
        live = [a for a in agents(cluster, namespace) if not a["metadata"].get("deletionTimestamp")]
        return (
            status.get("observedGeneration") == fleet["metadata"]["generation"]
            and status.get("readyReplicas") == replicas == status.get("updatedReplicas")
            and status.get("replicas") == replicas
            and len(live) == replicas
        )

    wait_for(converged, timeout, what=f"fleet {name} to converge on {replicas}")


def test_fleet_makes_agents_and_pods(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, fleet_manifest("crew", 5))
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Available", "fleet/crew", "--timeout=60s"
    )
    wait_fleet(cluster, namespace, "crew", 5)
    agent_items = agents(cluster, namespace)
    assert len(agent_items) == 5
    assert all(ready(a) for a in agent_items)
    pod_items = pods(cluster, namespace)
    assert sorted(p["metadata"]["name"] for p in pod_items) == sorted(
        a["metadata"]["name"] for a in agent_items
    )
    for pod in pod_items:
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["controller"]) == ("Agent", True)
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        container = spec["containers"][0]["securityContext"]
        assert container["allowPrivilegeEscalation"] is False
        assert container["capabilities"]["drop"] == ["ALL"]
        assert container["readOnlyRootFilesystem"] is True
    fleet = get_json(cluster, "fleet", "crew", "-n", namespace)
    assert fleet["status"]["selector"] == "agentarmy.io/fleet=crew"
    assert fleet["status"]["phase"] == "Available"
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=Fleet"
    ).stdout
    assert "ScaledUp" in events


def test_pods_pass_restricted_pod_security(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    apply(cluster, namespace, fleet_manifest("strict", 2))
    wait_fleet(cluster, namespace, "strict", 2)


def test_scale_up_and_down(cluster: Any, namespace: str, operator: OperatorProcess) -> None:
    apply(cluster, namespace, fleet_manifest("elastic", 5))
    wait_fleet(cluster, namespace, "elastic", 5)
    cluster.kubectl("scale", "-n", namespace, "fleet/elastic", "--replicas=12")
    wait_fleet(cluster, namespace, "elastic", 12)
    cluster.kubectl("scale", "-n", namespace, "fleet/elastic", "--replicas=2")
    wait_fleet(cluster, namespace, "elastic", 2)
    wait_for(lambda: len(pods(cluster, namespace)) == 2, 30, what="pods to follow agents down")


def test_rolling_update_keeps_enough_agents_ready(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    replicas, max_unavailable = 6, 1
    apply(cluster, namespace, fleet_manifest("roll", replicas))
    wait_fleet(cluster, namespace, "roll", replicas)
    old_hash = get_json(cluster, "fleet", "roll", "-n", namespace)["status"]["currentTemplateHash"]

    lowest = [replicas]
    done = threading.Event()

    def watch_readiness() -> None:
        while not done.is_set():
            count = sum(
                ready(a)
                for a in agents(cluster, namespace)
                if not a["metadata"].get("deletionTimestamp")
            )
            lowest[0] = min(lowest[0], count)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_readiness)
    watcher.start()
    try:
        apply(cluster, namespace, fleet_manifest("roll", replicas, image_tag="2"))
        wait_for(
            lambda: (
                get_json(cluster, "fleet", "roll", "-n", namespace)["status"].get(
                    "currentTemplateHash"
                )
                not in (None, old_hash)
            ),
            30,
            what="new template",
        )
        wait_fleet(cluster, namespace, "roll", replicas, timeout=120)
    finally:
        done.set()
        watcher.join()
    assert lowest[0] >= replicas - max_unavailable, f"only {lowest[0]} agents ready at one point"
    images = {
        p["spec"]["containers"][0]["image"]
        for p in pods(cluster, namespace)
        if not p["metadata"].get("deletionTimestamp")
    }
    assert images == {"ghcr.io/agentarmy/agent:2"}


def test_deleted_pod_comes_back(cluster: Any, namespace: str, operator: OperatorProcess) -> None:
    apply(cluster, namespace, fleet_manifest("heal", 1))
    wait_fleet(cluster, namespace, "heal", 1)
    (pod,) = pods(cluster, namespace)
    cluster.kubectl("delete", "pod", "-n", namespace, pod["metadata"]["name"], "--wait=false")

    def replaced() -> bool:
        current = pods(cluster, namespace)
        return (
            len(current) == 1
            and current[0]["metadata"]["uid"] != pod["metadata"]["uid"]
            and ready(current[0])
        )

    wait_for(replaced, 60, what="a new ready pod")
    wait_fleet(cluster, namespace, "heal", 1)


def test_delete_fleet_leaves_nothing(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, fleet_manifest("gone", 3))
    wait_fleet(cluster, namespace, "gone", 3)
    cluster.kubectl("delete", "fleet", "gone", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: not agents(cluster, namespace) and not pods(cluster, namespace),
        60,
        what="agents and pods to be garbage-collected",
    )
    fleet = get_json(cluster, "fleets", "-n", namespace)["items"]
    assert fleet == []


def test_standalone_agent_gets_a_pod(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    agent = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "solo"},
        "spec": {
            "capabilities": ["echo"],
            "model": {
                "provider": "openai-compatible",
                "name": "m",
                "apiKeySecretRef": {"name": "llm", "key": "apiKey"},
            },
        },
    }
    apply(cluster, namespace, json.dumps(agent))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "agent/solo", "--timeout=60s")
    pod = get_json(cluster, "pod", "solo", "-n", namespace)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    # The key reaches the pod by reference only.
    assert env["AGENTARMY_MODEL_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "llm",
        "key": "apiKey",
    }
    assert "value" not in env["AGENTARMY_MODEL_API_KEY"]
    status = get_json(cluster, "agent", "solo", "-n", namespace)["status"]
    assert status["phase"] == "Running"
    assert status["observedGeneration"] == 1
    assert status["podName"] == "solo"


def test_agent_spec_change_replaces_its_pod(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    agent = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "a1"},
        "spec": {"capabilities": ["echo"], "concurrency": 1},
    }
    apply(cluster, namespace, json.dumps(agent))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "agent/a1", "--timeout=60s")
    first = get_json(cluster, "pod", "a1", "-n", namespace)["metadata"]["uid"]
    agent["spec"]["concurrency"] = 3
    apply(cluster, namespace, json.dumps(agent))

    def replaced() -> bool:
        out = cluster.kubectl("get", "pod", "a1", "-n", namespace, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        pod = json.loads(out.stdout)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        return pod["metadata"]["uid"] != first and env["AGENTARMY_CONCURRENCY"] == "3"

    wait_for(replaced, 60, what="the pod to be replaced")
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "agent/a1", "--timeout=60s")
