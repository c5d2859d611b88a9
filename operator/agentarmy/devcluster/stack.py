"""The whole system on a local control plane: router, operator and pod runner.

Used by the demo and the end-to-end tests, so both run exactly the same thing.
The router keeps its tasks in SQLite and authenticates agents through
TokenReview of their pods' ServiceAccount tokens; a client token (namespaced)
and an admin token are written to a 0600 file, never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agentarmy.devcluster.admission import install_admission, remove_admission
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.operator_process import OPERATOR_NAMESPACE, OperatorProcess
from agentarmy.devcluster.podrunner import pod_runner
from agentarmy.router.client import TRANSIENT, RouterClient, RouterError
from agentarmy.router.testing import RouterProcess, write_token_file


@dataclass
class Stack:
    cluster: DevCluster
    namespace: str
    router_url: str
    client_token: str
    admin_token: str
    router: RouterProcess
    operator: OperatorProcess
    workdir: Path


def _router(cluster: DevCluster, workdir: Path, tokens: list[dict[str, str]]) -> RouterProcess:
    """The router on SQLite in ``workdir``; agents authenticate by TokenReview."""
    token_file = write_token_file(workdir / "router-tokens.yaml", tokens)
    token_file.chmod(0o600)
    (workdir / "logs").mkdir(exist_ok=True)
    return RouterProcess(
        f"sqlite:///{workdir / 'router.db'}",
        token_file,
        workdir / "logs" / "router.log",
        extra_args=[
            "--token-review",
            f"--kube-server={cluster.server}",
            f"--kube-ca-file={cluster.ca_file}",
            f"--kube-client-cert={cluster.admin_cert_file}",
            f"--kube-client-key={cluster.admin_key_file}",
        ],
    )


@contextlib.contextmanager
def local_stack(
    cluster: DevCluster,
    namespace: str,
    workdir: Path,
    stats_seconds: float = 5.0,
    operator_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start router, operator and a pod runner for ``namespace``; stop them after.
    ``operator_env``: more environment for the operator (e.g. AGENTARMY_STATS_WATCH)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (OPERATOR_NAMESPACE, namespace):
        cluster.kubectl("create", "namespace", name, check=False)
    cluster.kubectl(
        "wait", "--for=create", "serviceaccount/default", "-n", namespace, "--timeout=60s"
    )
    client_token, admin_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    router = _router(
        cluster,
        workdir,
        [
            {"token": client_token, "name": "local-user", "role": "client", "namespace": namespace},
            {"token": admin_token, "name": "local-admin", "role": "admin"},
        ],
    )
    admission = install_admission(cluster, OPERATOR_NAMESPACE)
    router.start()
    admin_token_file = workdir / "operator-router.token"
    admin_token_file.write_text(admin_token)
    admin_token_file.chmod(0o600)
    operator = OperatorProcess(
        cluster.kubeconfig,
        f"local-{namespace}",
        router_url=router.url,
        extra_env={
            "AGENTARMY_ROUTER_TOKEN_FILE": str(admin_token_file),
            "AGENTARMY_STATS_SECONDS": str(stats_seconds),
            **(operator_env or {}),
        },
        admission=admission,
    )
    try:
        operator.start().wait_ready()
        with pod_runner(cluster.kubeconfig, workdir / "pods", "--namespace", namespace):
            yield Stack(
                cluster, namespace, router.url, client_token, admin_token, router, operator, workdir
            )
    finally:
        operator.stop()
        router.stop()
        remove_admission(cluster, OPERATOR_NAMESPACE)


async def wait_for_agents(
    router_url: str, admin_token: str, namespace: str, count: int, seconds: float = 90
) -> None:
    """Until ``count`` agents of ``namespace`` are registered with the router."""

    async def registered() -> int:
        stats = await admin.stats()
        return sum(len(f.agents) for f in stats.fleets if f.namespace == namespace)

    async with RouterClient(router_url, admin_token) as admin:
        try:
            async with asyncio.timeout(seconds):
                while True:
                    with contextlib.suppress(RouterError, *TRANSIENT):
                        if await registered() >= count:
                            return
                    await asyncio.sleep(0.5)
        except TimeoutError:
            raise TimeoutError(
                f"fewer than {count} agents of {namespace} registered in {seconds:.0f}s"
            ) from None
