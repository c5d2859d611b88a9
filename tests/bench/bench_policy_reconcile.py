"""A Policy edit under N Agents: how long until every condition is right, and what it wrote.

    .venv/bin/python tests/bench/bench_policy_reconcile.py [--agents 1000]

Two Fleets of N/2 Agents each (labels team=a and team=b) run under the operator.
A Policy selecting team=a that requires a cpu limit (which neither template sets)
is created: the N/2 Agents of team=a and their Fleet must turn PolicyCompliant=False,
team=b must not be touched. Then the Policy is deleted and they must turn back.
Prints the seconds to the last right condition and the operator's status patches
and Events per step (the goal: writes only to objects whose verdict changed, so
about N/2 + 1 of each). Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from agentarmy.api import crdgen
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.operator_process import OPERATOR_NAMESPACE, OperatorProcess

NS = "bench-policy"


def fleet(team: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": f"team-{team}", "labels": {"team": team}},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"team": team}},
                "spec": {"capabilities": ["echo"], "resources": {"limits": {"memory": "64Mi"}}},
            },
        },
    }


POLICY = {
    "apiVersion": "agentarmy.io/v1alpha1",
    "kind": "Policy",
    "metadata": {"name": "cpu-limits"},
    "spec": {
        "selector": {"matchLabels": {"team": "a"}},
        "rules": {"requireResourceLimits": ["cpu"]},
    },
}


def items(cluster: DevCluster, kind: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", kind, "-n", NS, "-o", "json", timeout=300).stdout
    found: list[dict[str, Any]] = json.loads(out)["items"]
    return found


def compliant(obj: dict[str, Any]) -> str:
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == "PolicyCompliant":
            return str(condition["status"])
    return "Unknown"


def wrong(cluster: DevCluster, violated: bool) -> int:
    """How many objects of team=a / team=b still show the wrong verdict."""
    count = 0
    for kind in ("agents", "fleets"):
        for obj in items(cluster, kind):
            team = obj["metadata"].get("labels", {}).get("team")
            want = "False" if violated and team == "a" else "True"
            count += compliant(obj) != want
    return count


def writes(operator: OperatorProcess) -> dict[str, float]:
    totals: dict[str, float] = {}
    for key, value in operator.metrics().items():
        if key.startswith("agentarmy_operator_api_writes_total{"):
            totals[key.split("{", 1)[1].rstrip("}")] = value
    return totals


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def step(cluster: DevCluster, operator: OperatorProcess, what: str, violated: bool) -> None:
    before = writes(operator)
    started = time.monotonic()
    if violated:
        cluster.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(POLICY))
    else:
        cluster.kubectl("delete", "policy", "cpu-limits", "-n", NS)
    while (left := wrong(cluster, violated)) > 0:
        if time.monotonic() - started > 300:
            raise TimeoutError(f"{left} objects still wrong after 300 s")
        time.sleep(0.5)
    seconds = time.monotonic() - started
    time.sleep(3)  # trailing writes, if any, count too
    print(
        f"{what}: every condition right after {seconds:.1f}s; writes: {delta(before, writes(operator))}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    half = args.agents // 2
    nodes = max(3, -(-args.agents * 2 // 1000))
    print(f"starting a control plane with {nodes} kwok nodes ...", flush=True)
    with DevCluster(nodes=nodes) as cluster:
        cluster.install_crds(crdgen.default_output())
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
        cluster.kubectl("create", "namespace", NS)
        operator = OperatorProcess(cluster.kubeconfig, "bench", lease_seconds=15).start()
        try:
            for team in ("a", "b"):
                cluster.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(fleet(team, half)))
            deadline = time.monotonic() + 900
            while wrong(cluster, violated=False) > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the Agents did not all become compliant")
                time.sleep(2)
            print(f"{2 * half} Agents in two Fleets, all PolicyCompliant=True", flush=True)
            step(cluster, operator, f"Policy created (selects {half} Agents)", violated=True)
            step(cluster, operator, "Policy deleted", violated=False)
        finally:
            operator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
