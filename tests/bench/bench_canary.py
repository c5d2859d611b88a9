"""Time from a canary's error bound being crossed to the abort being written.

    .venv/bin/python tests/bench/bench_canary.py [--rounds 5] [--min-tasks 10]

The whole system on the local control plane (router, operator, pod runner, agent
processes running the `test` skill). Each round rolls a Fleet of 4 Agents to a template
whose agents fail every task (TEST_SKILL_FAIL) while tasks flow. The crossing is when
the router's own figures first show the new template at >= minTasks finished tasks
above maxErrorRate (read every 50 ms); the abort is when the Fleet's status says
Aborted (read every 50 ms). Numbers, not pass/fail; the goal is under 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentarmy.api import crdgen, wire
from agentarmy.devcluster.canarydrill import canary_fleet
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.stack import Stack, local_stack
from agentarmy.router.client import RouterClient

NAMESPACE = "bench-canary"
MAX_ERROR_RATE = 0.2


def fleet(name: str, version: str, min_tasks: int, broken: bool) -> str:
    return canary_fleet(
        name,
        version,
        broken,
        replicas=4,
        steps=[{"weight": 50, "pause": "1h"}],
        max_error_rate=MAX_ERROR_RATE,
        min_tasks=min_tasks,
    )


def fleet_status(cluster: DevCluster, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "fleet", name, "-n", NAMESPACE, "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status", {})
    return status


def wait_rolled_out(cluster: DevCluster, name: str) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = fleet_status(cluster, name)
        if (
            status.get("updatedReplicas") == status.get("availableReplicas") == 4
            and status.get("replicas") == 4
        ):
            return str(status["currentTemplateHash"])
        time.sleep(0.5)
    raise TimeoutError(f"fleet {name} did not roll out")


async def one_round(
    cluster: DevCluster, stack: Stack, name: str, min_tasks: int
) -> tuple[float, int, float]:
    """(seconds from crossing to abort, tasks at the crossing, error rate in the abort)."""
    cluster.kubectl(
        "apply", "-n", NAMESPACE, "-f", "-", input=fleet(name, "1", min_tasks, broken=False)
    )
    wait_rolled_out(cluster, name)
    cluster.kubectl(
        "apply", "-n", NAMESPACE, "-f", "-", input=fleet(name, "2", min_tasks, broken=True)
    )
    async with RouterClient(stack.router_url, stack.admin_token) as admin:
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                await admin.submit(
                    wire.SubmitTask(
                        namespace=NAMESPACE,
                        fleet=name,
                        capability="test",
                        input={"sleep": 0.05},
                        maxAttempts=8,
                    )
                )
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(traffic())
        crossed_at, crossed_tasks = 0.0, 0
        try:
            while True:
                now = time.monotonic()
                if not crossed_at:
                    stats = await admin.stats()
                    for figures in stats.fleets:
                        if (figures.namespace, figures.fleet) != (NAMESPACE, name):
                            continue
                        new = [t for t in figures.templates if t.failures and t.attempts]
                        for template in new:
                            rate = template.failures / template.attempts
                            if template.attempts >= min_tasks and rate > MAX_ERROR_RATE:
                                crossed_at, crossed_tasks = now, template.attempts
                canary = await asyncio.to_thread(fleet_status, cluster, name)
                if (canary.get("canary") or {}).get("phase") == "Aborted":
                    aborted_at = time.monotonic()
                    if not crossed_at:
                        raise RuntimeError("aborted before the router showed the crossing")
                    rate = canary["canary"]["errorRate"]
                    return aborted_at - crossed_at, crossed_tasks, float(rate.rstrip("%"))
                if now - (crossed_at or now) > 120:
                    raise TimeoutError("no abort 120 s after the crossing")
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await feeder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-tasks", type=int, default=10)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print("starting a control plane ...", flush=True)
    delays: list[float] = []
    with DevCluster() as cluster, tempfile.TemporaryDirectory() as workdir:
        cluster.install_crds(crdgen.default_output())
        with local_stack(cluster, NAMESPACE, Path(workdir)) as stack:
            for round_ in range(args.rounds):
                delay, tasks, rate = asyncio.run(
                    one_round(cluster, stack, f"canary{round_}", args.min_tasks)
                )
                delays.append(delay)
                print(
                    f"round {round_}: crossing at {tasks} tasks -> abort written {delay:.2f}s "
                    f"later (status says {rate:.1f}%)",
                    flush=True,
                )
    delays.sort()
    print()
    print(
        f"bound crossed -> abort written, {len(delays)} rounds: "
        f"p50 {statistics.median(delays):.2f}s, max {delays[-1]:.2f}s (goal < 5 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
