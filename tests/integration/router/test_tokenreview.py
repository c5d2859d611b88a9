"""TokenReview on the real local control plane: projected ServiceAccount tokens
(audience agentarmy-router, bound to a pod) authenticate agents of the pod's fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentarmy.api import labels, runtime_env
from agentarmy.router.auth import KubeAccess, TokenReviewer
from agentarmy.router.testing import RouterProcess, write_token_file

pytestmark = pytest.mark.integration


def create_pod(cluster: Any, namespace: str, name: str, labels: dict[str, str]) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "serviceAccountName": "agents",
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "ghcr.io/agentarmy/agent:0.1.0"}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))


def token(cluster: Any, namespace: str, account: str, audience: str, pod: str | None = None) -> str:
    args = [
        "create",
        "token",
        account,
        "-n",
        namespace,
        "--audience",
        audience,
        "--duration",
        "10m",
    ]
    if pod is not None:
        args += ["--bound-object-kind", "Pod", "--bound-object-name", pod]
    return str(cluster.kubectl(*args).stdout.strip())


@pytest.fixture
def tokens(cluster: Any, namespace: str) -> dict[str, str]:
    for account in ("agents", "operator", "scraper"):
        cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    create_pod(
        cluster,
        namespace,
        "fa-0-pod",
        {labels.FLEET: "fa", labels.AGENT: "fa-0"},
    )
    create_pod(cluster, namespace, "loner", {labels.AGENT: "loner"})
    create_pod(cluster, namespace, "unlabelled", {})
    audience = runtime_env.TOKEN_AUDIENCE
    return {
        "pod": token(cluster, namespace, "agents", audience, "fa-0-pod"),
        "standalone": token(cluster, namespace, "agents", audience, "loner"),
        "unlabelled": token(cluster, namespace, "agents", audience, "unlabelled"),
        "other-audience": token(
            cluster, namespace, "agents", "https://kubernetes.default.svc", "fa-0-pod"
        ),
        "unbound": token(cluster, namespace, "agents", audience),
        "operator": token(cluster, namespace, "operator", audience),
        "scraper": token(cluster, namespace, "scraper", audience),
    }


def kube_access(cluster: Any) -> KubeAccess:
    return KubeAccess(
        cluster.server,
        str(cluster.ca_file),
        client_cert_file=str(cluster.admin_cert_file),
        client_key_file=str(cluster.admin_key_file),
    )


async def test_token_review_maps_pods_to_fleets(
    cluster: Any, namespace: str, tokens: dict[str, str]
) -> None:
    reviewer = TokenReviewer(kube_access(cluster), admins=[f"{namespace}:operator"])
    try:
        agent = await reviewer.authenticate(tokens["pod"])
        assert agent is not None
        assert (agent.role, agent.namespace, agent.fleet, agent.agent) == (
            "agent",
            namespace,
            "fa",
            "fa-0",
        )
        standalone = await reviewer.authenticate(tokens["standalone"])
        assert standalone is not None and standalone.fleet == "loner"
        admin = await reviewer.authenticate(tokens["operator"])
        assert admin is not None and admin.role == "admin"
        for refused in ("unlabelled", "other-audience", "unbound"):
            assert await reviewer.authenticate(tokens[refused]) is None, refused
        assert await reviewer.authenticate("not-a-token") is None
    finally:
        await reviewer.close()


async def test_router_lets_a_pod_act_only_for_its_fleet(
    cluster: Any, namespace: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    static = write_token_file(
        tmp_path / "tokens.yaml",
        [
            {"token": "static-admin-token-01", "name": "admin", "role": "admin"},
        ],
    )
    args = [
        "--token-review",
        "--kube-server",
        cluster.server,
        "--kube-ca-file",
        str(cluster.ca_file),
        "--kube-client-cert",
        str(cluster.admin_cert_file),
        "--kube-client-key",
        str(cluster.admin_key_file),
        "--admin-sa",
        f"{namespace}:operator",
        "--metrics-sa",
        f"{namespace}:scraper",
    ]
    with RouterProcess(
        f"sqlite:///{tmp_path}/router.db", static, tmp_path / "router.log", extra_args=args
    ) as router:
        async with aiohttp.ClientSession(base_url=router.url) as http:

            async def register(bearer: str, name: str, fleet: str) -> int:
                body = {
                    "namespace": namespace,
                    "name": name,
                    "fleet": fleet,
                    "capabilities": ["echo"],
                }
                async with http.post(
                    "/v1/agents", json=body, headers={"Authorization": f"Bearer {bearer}"}
                ) as r:
                    return r.status

            assert await register(tokens["pod"], "fa-0", "fa") == 200
            assert await register(tokens["pod"], "fa-0", "fb") == 403  # another fleet
            assert await register(tokens["pod"], "fa-1", "fa") == 403  # another agent of its fleet
            assert await register(tokens["other-audience"], "fa-0", "fa") == 401
            async with http.get(
                "/v1/stats", headers={"Authorization": f"Bearer {tokens['operator']}"}
            ) as r:
                assert r.status == 200
                assert any(f["fleet"] == "fa" for f in (await r.json())["fleets"])
            async with http.get(
                "/v1/stats", headers={"Authorization": f"Bearer {tokens['pod']}"}
            ) as r:
                assert r.status == 403


async def test_a_metrics_service_account_reads_metrics_only(
    cluster: Any, namespace: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    static = write_token_file(
        tmp_path / "tokens.yaml",
        [{"token": "static-admin-token-01", "name": "admin", "role": "admin"}],
    )
    args = [
        "--token-review",
        "--kube-server",
        cluster.server,
        "--kube-ca-file",
        str(cluster.ca_file),
        "--kube-client-cert",
        str(cluster.admin_cert_file),
        "--kube-client-key",
        str(cluster.admin_key_file),
        "--metrics-sa",
        f"{namespace}:scraper",
    ]
    with RouterProcess(
        f"sqlite:///{tmp_path}/router.db", static, tmp_path / "router.log", extra_args=args
    ) as router:
        scraper = {"Authorization": f"Bearer {tokens['scraper']}"}
        task = {"namespace": namespace, "fleet": "fa", "capability": "echo"}
        async with aiohttp.ClientSession(base_url=router.url) as http:
            async with http.get("/metrics", headers=scraper) as r:
                assert r.status == 200
                assert "agentarmy_router_tasks_waiting" in await r.text()
            for method, path, body in [
                ("GET", "/v1/stats", None),
                ("GET", f"/v1/tasks?namespace={namespace}", None),
                ("POST", "/v1/tasks", task),
                ("GET", "/v1/approvals", None),
            ]:
                async with http.request(method, path, json=body, headers=scraper) as r:
                    assert r.status == 403, (method, path, await r.text())
            # Without --metrics-sa the same account is nobody: the role is not implied.
            async with http.get(
                "/metrics", headers={"Authorization": f"Bearer {tokens['operator']}"}
            ) as r:
                assert r.status == 401
