"""Benchmark: the cost of a durable join.

    python tests/bench/bench_join.py [--children 1000] [--trials 3] [--store sqlite|nats]

Side by side, against one router process and the same worker agents (2 processes, 4
agent runtimes each, concurrency 16, skill ``test`` returning at once):

- join: a client submits one parent to the ``leads`` fleet; its agent starts N children
  on ``workers`` and parks; the parent resumes on a lead agent with all N results in its
  lease and succeeds with them. Measured: parent submitted -> client holds its result.
- peer: a client submits N independent tasks to ``workers`` (one batch) and waits for
  every one of them (GET /wait, 64 at a time). Measured: submit -> client holds all N.

Trials alternate (peer, join, peer, join, ...); the medians and their ratio are printed
(goal: join / peer <= 1.2). Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentarmy.api import wire
from agentarmy.devcluster.processes import stop_process
from agentarmy.router.client import RouterClient
from agentarmy.router.testing import NatsServer, RouterProcess, write_token_file

ADMIN_TOKEN = "bench-join-admin-0001"
HOSTS = 2
AGENTS_PER_HOST = 4
CONCURRENCY = 16


def agent_token(fleet: str) -> str:
    return f"bench-join-agent-{fleet}"


async def host_agents(router_url: str, fleet: str, names: list[str]) -> None:
    """Agent runtimes (skill ``test``) in this process until killed."""
    from agentarmy.agent.runtime import AgentRuntime
    from agentarmy.agent.settings import AgentSettings
    from agentarmy.agent.skills import load_skills

    runtimes = []
    for name in names:
        settings = AgentSettings(
            router_url=router_url,
            name=name,
            namespace="default",
            fleet=fleet,
            capabilities=["test"],
            concurrency=CONCURRENCY,
        )
        client = RouterClient(router_url, agent_token(fleet))
        runtimes.append(AgentRuntime(settings, client, load_skills(settings)))
    await asyncio.gather(*(r.run() for r in runtimes))


def start_hosts(router_url: str, logs: Path) -> list[subprocess.Popen[bytes]]:
    plan = [("leads", ["lead-0"])] + [
        ("workers", [f"w{h}-{i}" for i in range(AGENTS_PER_HOST)]) for h in range(HOSTS)
    ]
    return [
        subprocess.Popen(
            [sys.executable, __file__, "agent-host", router_url, fleet, *names],
            stdout=(logs / f"agents-{index}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        for index, (fleet, names) in enumerate(plan)
    ]


async def wait_for_agents(client: RouterClient, count: int) -> None:
    for _ in range(600):
        stats = await client.stats()
        if sum(1 for f in stats.fleets for a in f.agents if a.live) >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("agents did not register")


async def await_task(client: RouterClient, task_id: str) -> wire.Task:
    while True:
        task = await client.wait(task_id, 60)
        if task.phase in ("Succeeded", "Failed", "DeadLettered", "Cancelled"):
            return task


async def peer_trial(client: RouterClient, children: int, trial: int) -> float:
    tasks = [
        wire.SubmitTask(fleet="workers", capability="test", input={"output": {"i": i}})
        for i in range(children)
    ]
    started = time.perf_counter()
    submitted = []
    for start in range(0, children, wire.MAX_BATCH):
        reply = await client.submit_batch(tasks[start : start + wire.MAX_BATCH])
        submitted += [r.task.id for r in reply.results]
    gate = asyncio.Semaphore(64)

    async def one(task_id: str) -> wire.Task:
        async with gate:
            return await await_task(client, task_id)

    done = await asyncio.gather(*(one(t) for t in submitted))
    elapsed = time.perf_counter() - started
    assert all(t.phase == "Succeeded" for t in done), f"peer trial {trial}: not all succeeded"
    return elapsed


async def join_trial(client: RouterClient, children: int, trial: int) -> float:
    fan_out = {
        "fleet": "workers",
        "capability": "test",
        "inputs": [{"output": {"i": i}} for i in range(children)],
    }
    parent = wire.SubmitTask(
        fleet="leads", capability="test", input={"fanOut": fan_out}, timeout="10m"
    )
    started = time.perf_counter()
    submitted = (await client.submit(parent)).task
    done = await await_task(client, submitted.id)
    elapsed = time.perf_counter() - started
    results = (done.result or {}).get("children", [])
    assert done.phase == "Succeeded", f"join trial {trial}: parent {done.phase}: {done.error}"
    assert [r["result"]["i"] for r in results] == list(range(children)), "results out of order"
    join = done.join
    if join is not None and join.resumedAt and done.finishedAt:  # store clock: where time went
        print(
            f"  join trial {trial}: parked {join.waitingSince - done.createdAt:.3f}s after submit,"
            f" resumed {join.resumedAt - join.waitingSince:.3f}s later,"
            f" done {done.finishedAt - join.resumedAt:.3f}s after that"
        )
    return elapsed


async def run(router_url: str, children: int, trials: int) -> tuple[list[float], list[float]]:
    async with RouterClient(router_url, ADMIN_TOKEN, timeout=120) as client:
        await wait_for_agents(client, 1 + HOSTS * AGENTS_PER_HOST)
        await peer_trial(client, children // 4, 0)  # warm up both paths
        await join_trial(client, children // 4, 0)
        peers, joins = [], []
        for trial in range(1, trials + 1):
            peers.append(await peer_trial(client, children, trial))
            joins.append(await join_trial(client, children, trial))
            print(f"trial {trial}: peer {peers[-1]:.3f}s  join {joins[-1]:.3f}s", flush=True)
        return peers, joins


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "agent-host":
        asyncio.run(host_agents(sys.argv[2], sys.argv[3], sys.argv[4:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--store", choices=["sqlite", "nats"], default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-join-") as tmp_dir:
        tmp = Path(tmp_dir)
        tokens = write_token_file(
            tmp / "tokens.yaml",
            [{"token": ADMIN_TOKEN, "name": "bench-admin", "role": "admin"}]
            + [
                {
                    "token": agent_token(fleet),
                    "name": f"bench-{fleet}",
                    "role": "agent",
                    "namespace": "default",
                    "fleet": fleet,
                }
                for fleet in ("leads", "workers")
            ],
        )
        nats = NatsServer(tmp / "nats").start() if args.store == "nats" else None
        store_url = nats.url if nats else f"sqlite:///{tmp}/router.db"
        router = RouterProcess(store_url, tokens, tmp / "router.log").start()
        hosts = start_hosts(router.url, tmp)
        try:
            peers, joins = asyncio.run(run(router.url, args.children, args.trials))
        finally:
            for host in hosts:
                stop_process(host, grace=30)
            router.stop()
            if nats:
                nats.stop()
    peer, join = statistics.median(peers), statistics.median(joins)
    print(
        f"\n{args.children} children, {args.store} store, median of {args.trials}:"
        f"\n  peer (independent tasks, client awaits each): {peer:.3f}s"
        f" ({args.children / peer:.0f} tasks/s)"
        f"\n  join (one parent, resumed with all results):   {join:.3f}s"
        f" ({args.children / join:.0f} tasks/s)"
        f"\n  join / peer = {join / peer:.2f} (goal <= 1.2)"
    )


if __name__ == "__main__":
    main()
