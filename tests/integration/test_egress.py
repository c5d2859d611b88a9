"""A Policy's egress rules become one NetworkPolicy per Fleet, on the real API server.

The devcluster has no network plugin, so nothing enforces these NetworkPolicies
here: this checks the object (accepted by the API server's validation, its content,
its owner, its life cycle), not the traffic it would stop.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.operator_process import (
    OperatorProcess,
    apply,
    get_json,
    wait_for,
)
from tests.integration.test_operator import fleet_manifest, operator, wait_fleet
from tests.unit.operator.test_netpol import DNS_RULE, ROUTER_RULE

pytestmark = pytest.mark.integration
__all__ = ["operator"]  # the module-scoped operator fixture of test_operator


def policy_manifest(name: str, mode: str = "enforce", **egress: Any) -> str:
    rules: dict[str, Any] = {"egress": egress} if egress else {"maxReplicasPerFleet": 100}
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Policy",
            "metadata": {"name": name},
            "spec": {"mode": mode, "selector": {"matchLabels": {"team": "test"}}, "rules": rules},
        }
    )


def network_policy(cluster: Any, namespace: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", "networkpolicy", name, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        assert "NotFound" in out.stderr, out.stderr
        return None
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def wait_egress(
    cluster: Any, namespace: str, fleet: str, rules: list[dict[str, Any]]
) -> dict[str, Any]:
    def rendered() -> dict[str, Any] | None:
        found = network_policy(cluster, namespace, f"{fleet}-egress")
        return found if found and found["spec"].get("egress") == rules else None

    result: dict[str, Any] = wait_for(rendered, 30, what=f"{fleet}-egress to allow {rules}")
    return result


def test_policy_egress_renders_one_network_policy_per_fleet(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply(
        cluster,
        namespace,
        policy_manifest("egress", cidrs=["192.168.0.0/16", "10.0.0.0/8"], ports=[8443, 443]),
    )
    apply(cluster, namespace, fleet_manifest("crew", 2))
    wait_fleet(cluster, namespace, "crew", 2)

    allowed = {
        "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"ipBlock": {"cidr": "192.168.0.0/16"}}],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}],
    }
    netpol = wait_egress(cluster, namespace, "crew", [ROUTER_RULE, DNS_RULE, allowed])
    fleet = get_json(cluster, "fleet", "crew", "-n", namespace)
    assert netpol["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Fleet",
            "name": "crew",
            "uid": fleet["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert netpol["metadata"]["labels"] == {
        "agentarmy.io/fleet": "crew",
        "app.kubernetes.io/managed-by": "agentarmy-operator",
    }
    assert netpol["metadata"]["annotations"]["agentarmy.io/policies"] == f"{namespace}/egress"
    assert netpol["spec"]["policyTypes"] == ["Egress"]
    selector = netpol["spec"]["podSelector"]["matchLabels"]
    pods = get_json(
        cluster, "pods", "-n", namespace, "-l", ",".join(f"{k}={v}" for k, v in selector.items())
    )
    assert len(pods["items"]) == 2  # exactly the Fleet's agent Pods

    # What the server stored is what we render: reconciles leave it alone.
    version = netpol["metadata"]["resourceVersion"]
    cluster.kubectl("scale", "-n", namespace, "fleet/crew", "--replicas=3")
    wait_fleet(cluster, namespace, "crew", 3)
    after = network_policy(cluster, namespace, "crew-egress")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == version

    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=crew"
    ).stdout
    assert "EgressPolicyCreated" in events


def test_tightened_then_lifted_then_cascades(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, policy_manifest("wide", cidrs=["10.0.0.0/8"], ports=[443, 80]))
    apply(cluster, namespace, fleet_manifest("crew", 1))
    wait_egress(
        cluster,
        namespace,
        "crew",
        [
            ROUTER_RULE,
            DNS_RULE,
            {
                "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}],
            },
        ],
    )

    # A second enforce-mode Policy narrows it (strictest wins); audit-mode adds nothing.
    apply(
        cluster,
        namespace,
        policy_manifest("narrow", cidrs=["10.1.0.0/16"], ports=[443], allowDNS=False),
    )
    apply(cluster, namespace, policy_manifest("audit", mode="audit", cidrs=["0.0.0.0/0"]))
    netpol = wait_egress(
        cluster,
        namespace,
        "crew",
        [
            ROUTER_RULE,
            {
                "to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
                "ports": [{"protocol": "TCP", "port": 443}],
            },
        ],
    )
    assert netpol["metadata"]["annotations"]["agentarmy.io/policies"] == (
        f"{namespace}/narrow,{namespace}/wide"
    )

    # Egress rules gone from every enforce-mode Policy: the NetworkPolicy goes.
    apply(cluster, namespace, policy_manifest("narrow"))
    apply(cluster, namespace, policy_manifest("wide"))
    wait_for(
        lambda: network_policy(cluster, namespace, "crew-egress") is None,
        30,
        what="crew-egress to be deleted",
    )

    # And back; deleting the Fleet takes it along (owner reference, garbage collector).
    apply(cluster, namespace, policy_manifest("wide", cidrs=["10.0.0.0/8"]))
    wait_for(lambda: network_policy(cluster, namespace, "crew-egress"), 30, what="crew-egress")
    cluster.kubectl("delete", "fleet", "crew", "-n", namespace, "--wait=false")
    wait_for(
        lambda: network_policy(cluster, namespace, "crew-egress") is None,
        60,
        what="the garbage collector to delete crew-egress with its Fleet",
    )


def test_fleets_no_policy_restricts_get_none(
    cluster: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, policy_manifest("audit", mode="audit", cidrs=["10.0.0.0/8"]))
    apply(cluster, namespace, fleet_manifest("free", 1))
    wait_fleet(cluster, namespace, "free", 1)
    items = get_json(cluster, "networkpolicies", "-n", namespace)["items"]
    assert items == []
