"""What the operator does with a Policy that is stricter than what already runs
(admission cannot see those objects): it reports, holds growth, and removes nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.operator_process import OperatorProcess, apply, get_json, wait_for
from tests.integration.test_operator import agents, fleet_manifest, operator, pods, wait_fleet

pytestmark = pytest.mark.integration
__all__ = ["operator"]  # the module-scoped operator fixture, shared with test_operator

HOLD_SECONDS = 6.0
"""How long a held Fleet is watched for growth it must not make."""


def policy(name: str, **rules: Any) -> str:
    body = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"mode": "enforce", "rules": rules},
    }
    return json.dumps(body)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_]
    return found[0] if found else {}


def violating(cluster: Any, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    found = condition(get_json(cluster, kind, name, "-n", namespace), "PolicyCompliant")
    return found if found.get("status") == "False" else None


def pod_uids(cluster: Any, namespace: str) -> set[str]:
    return {p["metadata"]["uid"] for p in pods(cluster, namespace)}


def test_a_forbidden_image_keeps_running_pods_but_gets_no_new_ones(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, fleet_manifest("legacy", 2))
    wait_fleet(cluster, namespace, "legacy", 2)
    running = pod_uids(cluster, namespace)
    apply(cluster, namespace, policy("registries", allowedImageRegistries=["quay.io/acme/"]))

    found = wait_for(
        lambda: violating(cluster, namespace, "fleet", "legacy"), 30, what="Fleet violation"
    )
    assert found["reason"] == "PolicyViolation"
    assert f"policy {namespace}/registries, rule allowedImageRegistries" in found["message"]
    assert "no new Agents are created from this template" in found["message"]
    for agent in agents(cluster, namespace):
        name = agent["metadata"]["name"]
        wait_for(lambda n=name: violating(cluster, namespace, "agent", n), 30, what=name)

    # Scaled up (as before the webhook, or by someone it does not cover): no new Agents.
    cluster.kubectl("scale", "-n", namespace, "fleet/legacy", "--replicas=4")
    time.sleep(HOLD_SECONDS)
    assert len(agents(cluster, namespace)) == 2
    assert pod_uids(cluster, namespace) == running, "running Pods must be left alone"

    # A Pod that goes away is not replaced while the Policy forbids its spec.
    victim = sorted(running)[0]
    name = next(
        p["metadata"]["name"] for p in pods(cluster, namespace) if p["metadata"]["uid"] == victim
    )
    cluster.kubectl("delete", "pod", name, "-n", namespace, "--wait=true")

    def blocked() -> dict[str, Any] | None:
        ready = condition(get_json(cluster, "agent", name, "-n", namespace), "Ready")
        return ready if ready.get("reason") == "BlockedByPolicy" else None

    wait_for(blocked, 30, what="the Agent to report BlockedByPolicy")
    time.sleep(2)
    assert name not in {p["metadata"]["name"] for p in pods(cluster, namespace)}

    # Lifting the Policy lets the Fleet grow and the Agent run again.
    cluster.kubectl("delete", "policy", "registries", "-n", namespace)
    wait_fleet(cluster, namespace, "legacy", 4)
    events = get_json(cluster, "events", "-n", namespace)["items"]
    reasons = {(e["involvedObject"]["name"], e["reason"]) for e in events}
    assert ("legacy", "PolicyViolation") in reasons and ("legacy", "Compliant") in reasons


def test_a_fleet_above_a_new_replica_limit_is_held_not_shrunk(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, fleet_manifest("wide", 4))
    wait_fleet(cluster, namespace, "wide", 4)
    apply(cluster, namespace, policy("limit", maxReplicasPerFleet=2))
    found = wait_for(lambda: violating(cluster, namespace, "fleet", "wide"), 30, what="violation")
    assert "not scaled up past 2; its Agents keep running" in found["message"]

    cluster.kubectl("scale", "-n", namespace, "fleet/wide", "--replicas=6")
    time.sleep(HOLD_SECONDS)
    assert len(agents(cluster, namespace)) == 4, "held at what it had: nothing added or removed"

    cluster.kubectl("scale", "-n", namespace, "fleet/wide", "--replicas=1")
    wait_fleet(cluster, namespace, "wide", 1)
    wait_for(
        lambda: (
            condition(get_json(cluster, "fleet", "wide", "-n", namespace), "PolicyCompliant").get(
                "status"
            )
            == "True"
        ),
        30,
        what="compliant again once under the limit",
    )

    def policy_clear() -> Any:
        status = get_json(cluster, "policy", "limit", "-n", namespace)["status"]
        return status if status["violations"] == 0 else None

    # The Policy's own status follows a moment later (its passes are batched).
    assert wait_for(policy_clear, 15, what="the Policy to count no violation")["matchedFleets"] == 1
