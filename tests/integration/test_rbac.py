"""The deployment manifests: least-privilege RBAC that is enough to run the
operator, and workloads the `restricted` Pod Security Standard admits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.devcluster.operator_process import OperatorProcess
from tests.integration.operator_process import apply, get_json, wait_for
from tests.integration.test_egress import policy_manifest
from tests.integration.test_operator import fleet_manifest, wait_fleet

pytestmark = pytest.mark.integration

BASE = Path(__file__).resolve().parents[2] / "manifests" / "base"
SYSTEM = "agentarmy-system"
OPERATOR_SA = f"system:serviceaccount:{SYSTEM}:agentarmy-operator"
ROUTER_SA = f"system:serviceaccount:{SYSTEM}:agentarmy-router"
RBAC_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
}


def rendered(cluster: Any) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(BASE)).stdout) if d]


@pytest.fixture(scope="module")
def rbac(cluster: Any) -> Iterator[list[dict[str, Any]]]:
    docs = [d for d in rendered(cluster) if d["kind"] in RBAC_KINDS]
    cluster.kubectl("apply", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in docs))
    yield docs


def can(cluster: Any, who: str, verb: str, resource: str, namespace: str = "default") -> bool:
    """`kubectl auth can-i`; ``resource`` may name a subresource as ``kind/sub``."""
    resource, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    out = cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, f"--as={who}", "-n", namespace, check=False
    )
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("create", "agents.agentarmy.io", True),
        ("patch", "fleets.agentarmy.io/status", True),
        ("create", "pods", True),
        ("create", "events", True),
        ("update", "fleets.agentarmy.io", False),  # spec belongs to users
        ("patch", "fleets.agentarmy.io/scale", True),  # the autoscaler, like an HPA
        ("create", "networkpolicies.networking.k8s.io", True),  # a Fleet's egress
        ("update", "networkpolicies.networking.k8s.io", True),
        ("delete", "networkpolicies.networking.k8s.io", True),
        ("list", "networkpolicies.networking.k8s.io", False),  # read by name only
        ("get", "secrets", False),  # API keys stay by reference
        ("create", "pods/exec", False),
        ("create", "deployments.apps", False),
        ("delete", "namespaces", False),
    ],
)
def test_operator_permissions(
    cluster: Any, rbac: Any, verb: str, resource: str, allowed: bool
) -> None:
    assert can(cluster, OPERATOR_SA, verb, resource) is allowed


def test_operator_lease_only_in_its_namespace(cluster: Any, rbac: Any) -> None:
    assert can(cluster, OPERATOR_SA, "create", "leases.coordination.k8s.io", SYSTEM)
    assert not can(cluster, OPERATOR_SA, "create", "leases.coordination.k8s.io", "kube-system")


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("create", "tokenreviews.authentication.k8s.io", True),
        ("get", "pods", True),
        ("list", "pods", False),
        ("get", "secrets", False),
        ("create", "pods", False),
    ],
)
def test_router_permissions(
    cluster: Any, rbac: Any, verb: str, resource: str, allowed: bool
) -> None:
    assert can(cluster, ROUTER_SA, verb, resource) is allowed


def test_workloads_pass_restricted_pod_security(cluster: Any, rbac: Any) -> None:
    workloads = [
        d
        for d in rendered(cluster)
        if d["kind"] in ("Deployment", "Service", "PersistentVolumeClaim")
    ]
    out = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input="---\n".join(yaml.safe_dump(d) for d in workloads),
    )
    assert "Warning" not in out.stderr, out.stderr
    namespace = next(d for d in rendered(cluster) if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def service_account_kubeconfig(cluster: Any, path: Path) -> Path:
    token = cluster.kubectl(
        "create", "token", "agentarmy-operator", "-n", SYSTEM, "--duration=1h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.ca_file),
                },
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def network_policies(cluster: Any, namespace: str) -> list[str]:
    items = get_json(cluster, "networkpolicies", "-n", namespace)["items"]
    return [n["metadata"]["name"] for n in items]


def test_operator_runs_with_only_its_rbac(
    cluster: Any, rbac: Any, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "operator.kubeconfig")
    operator = OperatorProcess(kubeconfig, "rbac-test")
    operator.start()
    try:
        wait_for(operator.is_leader, 40, what="the operator to lead under its own RBAC")
        apply(cluster, namespace, policy_manifest("egress", cidrs=["10.0.0.0/8"]))
        apply(cluster, namespace, fleet_manifest("least", 3))
        wait_fleet(cluster, namespace, "least", 3)
        wait_for(lambda: network_policies(cluster, namespace) == ["least-egress"], 30)
        cluster.kubectl("scale", "-n", namespace, "fleet/least", "--replicas=1")
        wait_fleet(cluster, namespace, "least", 1)
        # RBAC denials name the ServiceAccount ("User ... cannot ..."). Other 403s are
        # expected: Agents left in namespaces of earlier tests that are still
        # terminating may not get new Pods.
        denied = [
            line
            for line in operator.log.read_text().splitlines()
            if f'User \\"{OPERATOR_SA}\\" cannot' in line
        ]
        assert denied == [], "RBAC denied the operator:\n" + "\n".join(denied)
    finally:
        operator.stop()
