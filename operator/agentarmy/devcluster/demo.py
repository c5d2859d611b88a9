"""The local demo, end to end, on one machine without docker:

a real control plane (etcd, kube-apiserver, controller-manager, scheduler,
kwok nodes) with the CRDs; the router (SQLite store, agents authenticated by
their pods' ServiceAccount tokens through TokenReview); the operator; the pod
runner, which runs each agent pod as a real `armyctl agent` process; the
example echo fleet; tasks submitted and their results printed. It then keeps
running so you can poke at it (Ctrl-C stops everything), unless --exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from agentarmy.api import crdgen, wire
from agentarmy.devcluster.cluster import DevCluster, free_port
from agentarmy.devcluster.operator_process import OPERATOR_NAMESPACE, OperatorProcess
from agentarmy.devcluster.podrunner import pod_runner
from agentarmy.router.client import RouterClient

REPO = Path(__file__).resolve().parents[3]
FLEET_EXAMPLE = REPO / "manifests" / "examples" / "fleet-echo.yaml"
NAMESPACE = "demo"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


@contextlib.contextmanager
def router_process(
    cluster: DevCluster, workdir: Path, client_token: str, admin_token: str
) -> Iterator[str]:
    """The router on a free loopback port; yields its URL."""
    tokens = workdir / "router-tokens.yaml"
    tokens.write_text(
        yaml.safe_dump(
            [
                {
                    "token": client_token,
                    "name": "demo-user",
                    "role": "client",
                    "namespace": NAMESPACE,
                },
                {"token": admin_token, "name": "demo-admin", "role": "admin"},
            ]
        )
    )
    tokens.chmod(0o600)
    port = free_port()
    log = (workdir / "logs" / "router.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentarmy.cli.main",
            "router",
            f"--store=sqlite:///{workdir / 'router.db'}",
            f"--listen=127.0.0.1:{port}",
            f"--token-file={tokens}",
            "--token-review",
            f"--kube-server={cluster.server}",
            f"--kube-ca-file={cluster.ca_file}",
            f"--kube-client-cert={cluster.admin_cert_file}",
            f"--kube-client-key={cluster.admin_key_file}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


async def wait_for_agents(client: RouterClient, count: int) -> None:
    while True:
        with contextlib.suppress(Exception):
            stats = await client.stats()
            live = sum(len(f.agents) for f in stats.fleets if f.namespace == NAMESPACE)
            if live >= count:
                return
        await asyncio.sleep(0.5)


async def flow_tasks(router_url: str, token: str, admin_token: str, count: int, agents: int) -> int:
    say(f"waiting for {agents} agent processes to register with the router")
    async with RouterClient(router_url, admin_token) as admin:
        try:
            async with asyncio.timeout(90):
                await wait_for_agents(admin, agents)
        except TimeoutError:
            raise TimeoutError(f"fewer than {agents} agents registered in 90s") from None
    async with RouterClient(router_url, token) as client:
        say(f"submitting {count} tasks to fleet {NAMESPACE}/echo")
        started = time.monotonic()
        submitted = await client.submit_batch(
            [
                wire.SubmitTask(
                    namespace=NAMESPACE,
                    fleet="echo",
                    capability="echo",
                    input={"text": f"hello agent, this is task {i}"},
                )
                for i in range(count)
            ]
        )
        ids = [r.task.id for r in submitted.results]
        results = await asyncio.gather(*(client.wait(i, timeout_seconds=60) for i in ids))
        elapsed = time.monotonic() - started
    print(f"\n{'task':<28} {'phase':<10} {'agent':<26} result")
    for task in results:
        print(f"{task.id:<28} {task.phase:<10} {task.agent:<26} {task.result}")
    done = sum(t.phase == "Succeeded" for t in results)
    print(f"\n{done}/{count} tasks succeeded in {elapsed:.2f}s\n")
    return 0 if done == count else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20, help="tasks to submit")
    parser.add_argument("--exit", action="store_true", help="stop after showing the results")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    say("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
    with DevCluster() as cluster:
        assert cluster.workdir is not None
        cluster.install_crds(crdgen.default_output())
        for namespace in (OPERATOR_NAMESPACE, NAMESPACE):
            cluster.kubectl("create", "namespace", namespace)
        cluster.kubectl(
            "wait", "--for=create", "serviceaccount/default", "-n", NAMESPACE, "--timeout=60s"
        )
        token, admin_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        with router_process(cluster, cluster.workdir, token, admin_token) as router_url:
            say(f"router at {router_url} (SQLite store, TokenReview for agents)")
            operator = OperatorProcess(cluster.kubeconfig, "demo", router_url=router_url).start()
            try:
                say("operator started; pod runner runs agent pods as local processes")
                with pod_runner(
                    cluster.kubeconfig, cluster.workdir / "pods", "--namespace", NAMESPACE
                ):
                    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(FLEET_EXAMPLE))
                    say("applied manifests/examples/fleet-echo.yaml; waiting for Available")
                    cluster.kubectl(
                        "wait",
                        "-n",
                        NAMESPACE,
                        "--for=condition=Available",
                        "fleet/echo",
                        "--timeout=120s",
                    )
                    print(cluster.kubectl("get", "fleets,agents,pods", "-n", NAMESPACE).stdout)
                    code = asyncio.run(
                        flow_tasks(router_url, token, admin_token, args.tasks, agents=3)
                    )
                    if args.exit:
                        return code
                    _explain(cluster, router_url, token)
                    with contextlib.suppress(KeyboardInterrupt):
                        while True:
                            time.sleep(3600)
                    return code
            finally:
                operator.stop()


def _explain(cluster: DevCluster, router_url: str, token: str) -> None:
    assert cluster.workdir is not None
    token_file = cluster.workdir / "demo-user.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    print("The demo keeps running. In another shell:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  kubectl get fleets,agents,pods -n {NAMESPACE}")
    print(f"  kubectl scale fleet/echo -n {NAMESPACE} --replicas=5")
    print(
        f"  .venv/bin/armyctl submit --router {router_url} --token-file {token_file} "
        f'-n {NAMESPACE} --input \'{{"text": "hi"}}\' --wait echo echo'
    )
    print(f"Logs: {cluster.workdir}/logs and {cluster.workdir}/pods. Ctrl-C stops everything.")


if __name__ == "__main__":
    sys.exit(main())
