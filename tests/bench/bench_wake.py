"""Submit -> first result for a Fleet at zero Agents, on the devcluster.

    .venv/bin/python tests/bench/bench_wake.py [--wakes 10] [--peer-wakes 10]

A Fleet with ``autoscaling.minReplicas: 0`` sits at ``replicas: 0``; one echo task is
submitted and timed until its result. Before each wake the Fleet is put back to zero
and every agent pod is gone, so each wake starts cold (Agent, Pod, scheduling, the pod
runner starting a real ``armyctl agent`` process, registration, claim, result).

Two operators side by side, on the same control plane and router build:
- watch: the operator long-polls the router's figures (GET /v1/stats/watch) and grows
  the Fleet as soon as the task is queued;
- poll (the peer, as before the watch): AGENTARMY_STATS_WATCH=false, so only the stats
  poll (AGENTARMY_STATS_SECONDS=60, the default) notices the queue.
Prints p50 and p90 of each and their ratio.

First, what a watch costs the router (in-process, SQLite, no HTTP): 1,000 agents in 10
fleets, 20,000 tasks stored, 100 tasks/s submitted; router CPU per second with 20
watchers (each re-polling 0.2 s after every answer, as the operator does) against 20
callers polling GET /v1/stats every second (the peer: a second's latency by polling).
Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import tempfile
import time
from pathlib import Path

from agentarmy.api import crdgen, wire
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.coldstart import cold_fleet, first_result
from agentarmy.devcluster.stack import Stack, local_stack
from agentarmy.router.auth import Principal
from agentarmy.router.service import RouterService
from agentarmy.router.store.base import StoreSettings
from agentarmy.router.store.sqlite import SqliteStore

FLEET = "cold"
STATS_SECONDS = 60.0


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _items(stack: Stack, kind: str) -> list[object]:
    out = stack.cluster.kubectl("get", kind, "-n", stack.namespace, "-o", "json").stdout
    items: list[object] = json.loads(out)["items"]
    return items


def make_cold(stack: Stack) -> None:
    """Replicas 0 (the autoscaler's own range, so still autoscaled) and no agent left."""
    stack.cluster.kubectl("scale", "-n", stack.namespace, f"fleet/{FLEET}", "--replicas=0")
    deadline = time.monotonic() + 120
    while _items(stack, "agents") or _items(stack, "pods"):
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet's agents did not go away within 120 s")
        time.sleep(0.5)
    time.sleep(2.0)  # the pod runner stops the processes; the operator sees zero


def wakes(stack: Stack, count: int, label: str) -> list[float]:
    stack.cluster.kubectl("apply", "-n", stack.namespace, "-f", "-", input=cold_fleet(FLEET))
    seconds: list[float] = []
    for i in range(count):
        make_cold(stack)
        task, took = asyncio.run(
            first_result(stack.router_url, stack.client_token, stack.namespace, FLEET, 180)
        )
        if task.phase != "Succeeded":
            raise RuntimeError(f"{label} wake {i + 1}: the task ended {task.phase}")
        seconds.append(took)
        print(f"{label} wake {i + 1}/{count}: {took:.2f}s", flush=True)
    return seconds


def run(cluster: DevCluster, workdir: Path, mode: str, count: int) -> list[float]:
    with local_stack(
        cluster,
        f"bench-wake-{mode}",
        workdir / mode,
        stats_seconds=STATS_SECONDS,
        operator_env={"AGENTARMY_STATS_WATCH": "true" if mode == "watch" else "false"},
    ) as stack:
        return wakes(stack, count, mode)


ADMIN = Principal(name="bench", role="admin")
COST_FLEETS, COST_AGENTS, COST_TASKS, COST_CALLERS = 10, 1000, 20_000, 20


async def _load(service: RouterService, stop: asyncio.Event) -> None:
    """100 submits a second, spread over the fleets (nothing claims them)."""
    i = 0
    while not stop.is_set():
        task = wire.SubmitTask(fleet=f"f{i % COST_FLEETS}", capability="echo")
        await service.submit(ADMIN, [task])
        i += 1
        await asyncio.sleep(0.01)


async def _watcher(service: RouterService, stop: asyncio.Event, answers: list[int]) -> None:
    token = ""
    while not stop.is_set():
        answer = await service.watch_stats(ADMIN, token, 1)
        answers.append(len(answer.model_dump_json()))
        if answer.changed:
            token = answer.token
            await asyncio.sleep(0.2)


async def _poller(service: RouterService, stop: asyncio.Event, answers: list[int]) -> None:
    while not stop.is_set():
        answers.append(len((await service.stats(ADMIN)).model_dump_json()))
        await asyncio.sleep(1.0)


async def _cpu_per_second(
    service: RouterService, caller: object, seconds: float
) -> tuple[float, int, float]:
    """(CPU seconds per second, answers, mean answer KiB) with load and the callers."""
    stop = asyncio.Event()
    answers: list[int] = []
    started_cpu, started = time.process_time(), time.monotonic()
    tasks = [asyncio.create_task(_load(service, stop))]
    if caller is not None:
        tasks += [
            asyncio.create_task(caller(service, stop, answers))  # type: ignore[operator]
            for _ in range(COST_CALLERS)
        ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    cpu = (time.process_time() - started_cpu) / (time.monotonic() - started)
    return cpu, len(answers), (sum(answers) / len(answers) / 1024 if answers else 0.0)


async def watch_cost(workdir: Path, seconds: float = 10.0) -> None:
    service = RouterService(SqliteStore(workdir / "cost.db", StoreSettings()))
    await service.start()
    try:
        for n in range(COST_AGENTS):
            await service.store.register(
                wire.RegisterAgent(
                    namespace="default",
                    name=f"a{n}",
                    fleet=f"f{n % COST_FLEETS}",
                    capabilities=["echo"],
                ),
                time.time(),
            )
        for start in range(0, COST_TASKS, 1000):
            batch = [
                wire.SubmitTask(fleet=f"f{i % COST_FLEETS}", capability="echo")
                for i in range(start, start + 1000)
            ]
            await service.submit(ADMIN, batch)
        timed = time.perf_counter()
        stats = await service.stats(ADMIN)
        one = time.perf_counter() - timed
        size = len(stats.model_dump_json()) / 1024
        print(
            f"watch cost: {COST_AGENTS} agents, {COST_FLEETS} fleets, {COST_TASKS} tasks "
            f"stored; one stats computation {one * 1000:.1f} ms, {size:.0f} KiB as JSON",
            flush=True,
        )
        base, _, _ = await _cpu_per_second(service, None, seconds)
        before = service.figures.computations
        watch, watch_answers, watch_kib = await _cpu_per_second(service, _watcher, seconds)
        computed = service.figures.computations - before
        poll, poll_answers, poll_kib = await _cpu_per_second(service, _poller, seconds)
    finally:
        await service.stop()
    print(f"{'callers (20)':<34} {'CPU s/s':>8} {'over load':>10} {'answers/s':>10} {'KiB':>6}")
    print(f"{'none (100 submits/s only)':<34} {base:>8.3f} {'':>10} {'':>10} {'':>6}")
    for label, cpu, answers, kib in (
        ("watch (re-poll 0.2 s after answer)", watch, watch_answers, watch_kib),
        ("poll GET /v1/stats every 1 s", poll, poll_answers, poll_kib),
    ):
        print(f"{label:<34} {cpu:>8.3f} {cpu - base:>10.3f} {answers / seconds:>10.1f} {kib:>6.0f}")
    print(f"stats computed for the 20 watchers: {computed / seconds:.1f}/s", flush=True)
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wakes", type=int, default=10, help="wakes with the watch")
    parser.add_argument("--peer-wakes", type=int, default=10, help="wakes of the poll-only peer")
    parser.add_argument("--cost-only", action="store_true", help="only the in-process cost")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(watch_cost(Path(tmp)))
    if args.cost_only:
        return 0
    print("starting a control plane ...", flush=True)
    with DevCluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        cluster.install_crds(crdgen.default_output())
        watched = run(cluster, Path(tmp), "watch", args.wakes)
        polled = run(cluster, Path(tmp), "poll", args.peer_wakes) if args.peer_wakes else []
    print()
    print(f"submit -> first result, Fleet at zero replicas (stats poll every {STATS_SECONDS:.0f}s)")
    print(f"{'operator':<22} {'wakes':>5} {'p50':>8} {'p90':>8} {'max':>8}")
    for label, values in (("watch (this build)", watched), ("poll only (peer)", polled)):
        if values:
            print(
                f"{label:<22} {len(values):>5} {percentile(values, 0.5):>7.2f}s "
                f"{percentile(values, 0.9):>7.2f}s {max(values):>7.2f}s"
            )
    if polled:
        ratio = percentile(polled, 0.5) / percentile(watched, 0.5)
        print(f"p50 poll-only / watch: {ratio:.1f}x; goal: watch p50 and p90 under 3 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
