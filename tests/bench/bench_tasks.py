"""N Task objects created at once: time until all are Complete, status writes per
Task and the operator's RSS.

    .venv/bin/python tests/bench/bench_tasks.py [--tasks 1000] [--agents 4]

The whole system on the local control plane (router, operator, pod runner, agent
processes running the echo skill). Writes are counted from a watch on the
namespace that starts at the resourceVersion before the create, so every write
to every Task is seen. Numbers, not pass/fail; the goal is at most 4 writes per
Task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from lightkube import Client, KubeConfig

from agentarmy.api import crdgen
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.stack import local_stack, wait_for_agents
from agentarmy.operator.kube import TaskResource

NAMESPACE = "bench-tasks"


def _peak_rss_mib(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmHWM", float("nan")), values.get("VmRSS", float("nan"))


class Writes:
    """MODIFIED events per Task name, from a watch started at ``resource_version``."""

    def __init__(self, kubeconfig: Path, resource_version: str) -> None:
        self.client = Client(KubeConfig.from_file(kubeconfig))
        self.counts: Counter[str] = Counter()
        self.rv = resource_version
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for kind, obj in self.client.watch(
                TaskResource, namespace=NAMESPACE, resource_version=self.rv
            ):
                if kind == "MODIFIED":
                    self.counts[obj.metadata.name] += 1
        except Exception:
            if not self.stopped.is_set():
                raise

    def stop(self) -> Counter[str]:
        self.stopped.set()
        counts = Counter(self.counts)
        self.client.close()
        return counts


def task_list(n: int) -> str:
    items = [
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Task",
            "metadata": {"name": f"t{i:05d}"},
            "spec": {"fleet": "echo", "capability": "echo", "input": {"i": i}},
        }
        for i in range(n)
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def succeeded(cluster: DevCluster) -> int:
    out = cluster.kubectl(
        "get", "tasks", "-n", NAMESPACE, "-o", "jsonpath={.items[*].status.phase}"
    ).stdout
    return out.split().count("Succeeded")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=4)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n = args.tasks
    fleet = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": args.agents,
            "template": {"spec": {"capabilities": ["echo"], "concurrency": 16}},
        },
    }
    print("starting a control plane ...", flush=True)
    with DevCluster() as cluster, tempfile.TemporaryDirectory() as workdir:
        cluster.install_crds(crdgen.default_output())
        with local_stack(cluster, NAMESPACE, Path(workdir)) as stack:
            cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(fleet))
            cluster.kubectl(
                "wait", "-n", NAMESPACE, "--for=condition=Available", "fleet/echo", "--timeout=120s"
            )
            asyncio.run(
                wait_for_agents(stack.router_url, stack.admin_token, NAMESPACE, args.agents)
            )
            listed = json.loads(
                cluster.kubectl("get", "tasks", "-n", NAMESPACE, "-o", "json").stdout
            )
            writes = Writes(cluster.kubeconfig, listed["metadata"]["resourceVersion"])
            rss_before = _peak_rss_mib(stack.operator.pid)
            started = time.monotonic()
            cluster.kubectl("create", "-n", NAMESPACE, "-f", "-", input=task_list(n), timeout=600)
            created = time.monotonic() - started
            print(f"created {n} Tasks in {created:.1f}s", flush=True)
            done = 0
            while done < n:
                if time.monotonic() - started > 900:
                    raise TimeoutError(f"only {done}/{n} Tasks Complete after 900 s")
                time.sleep(1.0)
                done = succeeded(cluster)
            total = time.monotonic() - started
            time.sleep(5)  # trailing writes would show here
            counts = writes.stop()
            hwm, rss = _peak_rss_mib(stack.operator.pid)
            patches = {
                k: v
                for k, v in stack.operator.metrics().items()
                if k.startswith("agentarmy_operator_api_writes_total{") and 'kind="Task"' in k
            }
    per_task = [counts.get(f"t{i:05d}", 0) for i in range(n)]
    spread = Counter(per_task)
    print()
    print(f"{n} Tasks Complete {total:.1f}s after the create began ({created:.1f}s to create)")
    print(
        f"status writes per Task: mean {sum(per_task) / n:.2f}, max {max(per_task)}, "
        f"spread {dict(sorted(spread.items()))}"
    )
    print(f"operator Task write requests (incl. conflicts): {patches}")
    print(
        f"operator RSS: {rss_before[1]:.0f} MiB before, {rss:.0f} MiB after, "
        f"peak (VmHWM) {hwm:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
