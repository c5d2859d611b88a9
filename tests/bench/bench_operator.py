"""Fleet vs Deployment: time to N ready, on one control plane, in one run.

    .venv/bin/python tests/bench/bench_operator.py [--sizes 100,1000]

For each size N: a Deployment of N pause pods (the built-in ReplicaSet
controller, with kube-controller-manager at its default flags: the anchor) and
a Fleet of N agents (our operator), each timed from create to N ready. Prints
the ratio fleet/deployment, the operator's API writes per Agent and its peak
RSS. Pods run on kwok nodes; no agent processes are started (no pod runner),
so both sides measure control-plane work only. The admission webhook is on
(every Agent the operator creates passes it), unless --no-webhook. Numbers,
not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agentarmy.api import crdgen
from agentarmy.devcluster.admission import install_admission
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.operator_process import OPERATOR_NAMESPACE, OperatorProcess

POLL_SECONDS = 0.25


def _get(cluster: DevCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _wait_ready(
    cluster: DevCluster, kind: str, name: str, namespace: str, n: int, timeout: float
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = _get(cluster, kind, name, "-n", namespace).get("status", {})
        if status.get("readyReplicas") == n:
            return time.monotonic() - started
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{kind}/{name} did not reach {n} ready in {timeout}s")


def _namespace(cluster: DevCluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s")


def _drop_namespace(cluster: DevCluster, name: str) -> None:
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=300s", timeout=320)


def deployment_seconds(cluster: DevCluster, n: int) -> float:
    namespace = f"bench-deploy-{n}"
    _namespace(cluster, namespace)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "pause"},
        "spec": {
            "replicas": n,
            "selector": {"matchLabels": {"app": "pause"}},
            "template": {
                "metadata": {"labels": {"app": "pause"}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))
    seconds = _wait_ready(cluster, "deployment", "pause", namespace, n, timeout=900)
    _drop_namespace(cluster, namespace)
    return seconds


def _writes_by_kind(operator: OperatorProcess) -> dict[str, float]:
    return {
        k.split("{", 1)[1].rstrip("}"): v
        for k, v in operator.metrics().items()
        if k.startswith("agentarmy_operator_api_writes_total{")
    }


def _writes(operator: OperatorProcess) -> float:
    return sum(
        v
        for k, v in operator.metrics().items()
        if k.startswith("agentarmy_operator_api_writes_total{")
    )


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fleet_seconds(cluster: DevCluster, operator: OperatorProcess, n: int) -> tuple[float, float]:
    namespace = f"bench-fleet-{n}"
    _namespace(cluster, namespace)
    body = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": "bench"},
        "spec": {"replicas": n, "template": {"spec": {"capabilities": ["echo"]}}},
    }
    before, by_kind = _writes(operator), _writes_by_kind(operator)
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))
    seconds = _wait_ready(cluster, "fleet", "bench", namespace, n, timeout=900)
    time.sleep(3)  # let trailing status writes land before counting
    writes_per_agent = (_writes(operator) - before) / n
    after = _writes_by_kind(operator)
    spread = {k: round((v - by_kind.get(k, 0.0)) / n, 2) for k, v in after.items()}
    print(f"N={n}: writes per agent by kind: {spread}", flush=True)
    _drop_namespace(cluster, namespace)
    return seconds, writes_per_agent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument(
        "--no-webhook",
        action="store_true",
        help="without the admission webhook (by default every Agent and Fleet write goes "
        "through it, as on an installed cluster)",
    )
    args = parser.parse_args()
    # SIGTERM should stop the control plane and operator too, via the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",")]
    nodes = max(3, -(-max(sizes) * 2 // 1000))
    print(f"starting a control plane with {nodes} kwok nodes ...", flush=True)
    with DevCluster(nodes=nodes) as cluster:
        cluster.install_crds(crdgen.default_output())
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
        admission = None if args.no_webhook else install_admission(cluster, OPERATOR_NAMESPACE)
        print(f"admission webhook: {'off' if admission is None else 'on'}", flush=True)
        operator = OperatorProcess(
            cluster.kubeconfig, "bench", lease_seconds=15, admission=admission
        ).start()
        try:
            deadline = time.monotonic() + 60
            while not operator.is_leader() and time.monotonic() < deadline:
                time.sleep(0.2)
            rows = []
            for n in sizes:
                deploy = deployment_seconds(cluster, n)
                fleet, writes = fleet_seconds(cluster, operator, n)
                rows.append((n, fleet, deploy, writes))
                print(
                    f"N={n}: fleet {fleet:.1f}s, deployment {deploy:.1f}s, "
                    f"ratio {fleet / deploy:.2f}, {writes:.2f} API writes per agent",
                    flush=True,
                )
            rss = _peak_rss_mib(operator.pid)
        finally:
            operator.stop()
    print()
    print(
        f"{'N':>6} {'fleet s':>9} {'deploy s':>9} {'fleet/deploy':>13} "
        f"{'ms/agent':>9} {'writes/agent':>13}"
    )
    for n, fleet, deploy, writes in rows:
        print(
            f"{n:>6} {fleet:>9.1f} {deploy:>9.1f} {fleet / deploy:>13.2f} "
            f"{1000 * fleet / n:>9.1f} {writes:>13.2f}"
        )
    print(f"operator peak RSS (VmHWM) over the run: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
