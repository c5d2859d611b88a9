"""Benchmark: routing by results against least-loaded dispatch, one agent of five failing.

    python tests/bench/bench_routing.py [--tasks 2000] [--seed 14] [--rounds 1]
        [--concurrency 8] [--task-ms 10] [--healthy-control]

In one run, for each routing mode (AGENTARMY_ROUTING=least-loaded, then results; with
--rounds N the two alternate N times): a fresh router process on SQLite and five agent
runtimes (the real AgentRuntime and RouterClient, over HTTP, in one host process) of one
fleet, each with concurrency --concurrency. Every task sleeps --task-ms in the agent; the
agent ``bench-0`` fails half of its tasks (its own random.Random seeded by --seed, so the
n-th task it runs fails or not the same way in both modes), the others never fail.
--tasks tasks with maxAttempts 1 (a failed attempt is a failed task: DeadLettered) are
submitted in batches of 100 as fast as the client can, as bench_router's burst does (a
saturated fleet: every slot busy), or with --rate R at R tasks/s (open loop, batches of 10:
a fleet with headroom); the routing learns from cold (no warm-up: what it knows it learned in the measured run).
With --healthy-control each round also runs ``healthy-only``: least-loaded dispatch over
the four healthy agents alone (``bench-0`` not started), the best any routing that keeps
work away from ``bench-0`` can do with the capacity left; results / healthy-only then
separates the cost of routing by results from the capacity the sick agent no longer gives.

Figures per run: failed tasks, bench-0's share of the tasks, throughput = tasks / (last
result recorded - first submit), goodput = the succeeded share of it, and p50/p99 of
(result recorded - submit), on the store's clock. Then results / least-loaded ratios.
Everything shares this machine's cores, unpinned; figures are printed, nothing here
passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

from bench_router import ADMIN_TOKEN, AGENT_TOKEN, percentile, run_client

from agentarmy.agent.skills import SkillFailed, SkillResult, TaskContext
from agentarmy.api import wire
from agentarmy.devcluster.processes import stop_process
from agentarmy.router.client import RouterClient
from agentarmy.router.scoring import ROUTING_ENV
from agentarmy.router.testing import RouterProcess, write_token_file

FLEET = "bench"  # bench_router's token file scopes the agent token to it
AGENTS = 5
FLAKY = "bench-0"
FAIL_SHARE = 0.5
MODES = ("least-loaded", "results")
CONTROL = "healthy-only"
"""Least-loaded over the healthy agents alone (--healthy-control)."""


PACED_BATCH = 10
"""Tasks per submit with --rate."""


@dataclass
class Run:
    mode: str
    tasks: int
    failed: int
    flaky_share: float
    throughput: float
    p50: float
    p99: float
    trips: int

    @property
    def goodput(self) -> float:
        """Succeeded tasks per second (throughput counts failed tasks as done too)."""
        return self.throughput * (self.tasks - self.failed) / max(1, self.tasks)


# -- the agents ----------------------------------------------------------------------------------


class FlakySkill:
    """Sleeps, then fails with probability ``fail_share`` (seeded per agent)."""

    name = "work"
    description = "Sleep, and on the flaky agent fail half the time (bench_routing)."
    parameters: dict[str, Any] = {"type": "object"}

    def __init__(self, agent: str, seed: int, sleep: float) -> None:
        self.fail_share = FAIL_SHARE if agent == FLAKY else 0.0
        self.rng = random.Random(f"{seed}:{agent}")
        self.sleep = sleep

    async def run(self, ctx: TaskContext) -> SkillResult:
        await asyncio.sleep(self.sleep)
        if self.rng.random() < self.fail_share:
            raise SkillFailed("failing on purpose (bench_routing)")
        return SkillResult(output={})


async def host_agents(
    router_url: str, seed: int, concurrency: int, task_ms: float, first: int = 0
) -> None:
    from agentarmy.agent.runtime import AgentRuntime
    from agentarmy.agent.settings import AgentSettings
    from agentarmy.agent.skills import load_skills

    runtimes = []
    for index in range(first, AGENTS):
        name = f"{FLEET}-{index}"
        settings = AgentSettings(
            router_url=router_url,
            name=name,
            namespace="default",
            fleet=FLEET,
            capabilities=["work"],
            concurrency=concurrency,
        )

        def factory(_: AgentSettings, name: str = name) -> FlakySkill:
            return FlakySkill(name, seed, task_ms / 1000)

        skills = load_skills(settings, {"work": factory})
        client = RouterClient(router_url, AGENT_TOKEN)
        runtimes.append(AgentRuntime(settings, client, skills))
    await asyncio.gather(*(r.run() for r in runtimes))


# -- one run -------------------------------------------------------------------------------------


async def wait_for_agents(client: RouterClient, count: int) -> None:
    for _ in range(600):
        stats = await client.stats()
        live = sum(1 for f in stats.fleets if f.fleet == FLEET for a in f.agents if a.live)
        if live >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("agents did not register")


async def wait_ended(client: RouterClient, total: int) -> wire.FleetStats:
    while True:
        stats = await client.stats()
        fleet = next((f for f in stats.fleets if f.fleet == FLEET), None)
        if fleet is not None and fleet.succeeded + fleet.deadLettered + fleet.failed >= total:
            return fleet
        await asyncio.sleep(0.05)


async def all_tasks(client: RouterClient) -> list[wire.Task]:
    tasks: list[wire.Task] = []
    after: int | None = None
    while True:
        page = await client.list(fleet=FLEET, limit=1000, after=after)
        tasks += page.tasks
        if page.next is None:
            return tasks
        after = int(page.next)


def trips_in(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if '"breaker-open"' in line)


def start_agent_host(
    router_url: str, work: Path, args: argparse.Namespace, first: int
) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "agent-host", router_url]
    command += [str(args.seed), str(args.concurrency), str(args.task_ms), str(first)]
    log = (work / "agents.log").open("ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


async def run_mode(mode: str, work: Path, args: argparse.Namespace) -> Run:
    tokens = write_token_file(
        work / "tokens.yaml",
        [
            {"token": ADMIN_TOKEN, "name": "bench", "role": "admin"},
            {
                "token": AGENT_TOKEN,
                "name": "agents",
                "role": "agent",
                "namespace": "default",
                "fleet": FLEET,
            },
        ],
    )
    log = work / "router.log"
    routing = "least-loaded" if mode == CONTROL else mode
    first = 1 if mode == CONTROL else 0  # the control runs without bench-0
    router = RouterProcess(
        f"sqlite:///{work}/router.db", tokens, log, env={ROUTING_ENV: routing}
    ).start()
    host = start_agent_host(router.url, work, args, first)
    try:
        async with RouterClient(router.url, ADMIN_TOKEN, timeout=120) as client:
            await wait_for_agents(client, AGENTS - first)
            size = PACED_BATCH if args.rate else 100
            batch = [
                wire.SubmitTask(fleet=FLEET, capability="work", maxAttempts=1) for _ in range(size)
            ]
            sent: dict[str, float] = {}
            start = time.time()
            for number in range(args.tasks // size):
                if args.rate:  # open loop: batch n leaves at start + n * size / rate
                    await asyncio.sleep(max(0.0, start + number * size / args.rate - time.time()))
                at = time.time()
                reply = await client.submit_batch(batch)
                sent.update({r.task.id: at for r in reply.results})
            fleet = await wait_ended(client, len(sent))
            tasks = [t for t in await all_tasks(client) if t.id in sent]
        done = {t.id: t.finishedAt or 0.0 for t in tasks}
        latencies = [done[task_id] - at for task_id, at in sent.items()]
        agents = Counter(t.attempts[0].agent.partition("/")[2] for t in tasks if t.attempts)
        return Run(
            mode=mode,
            tasks=len(sent),
            failed=fleet.deadLettered + fleet.failed,
            flaky_share=agents[FLAKY] / max(1, sum(agents.values())),
            throughput=len(sent) / (max(done.values()) - start),
            p50=percentile(latencies, 0.5),
            p99=percentile(latencies, 0.99),
            trips=trips_in(log),
        )
    finally:
        stop_process(host, grace=10)
        router.stop()


def print_run(run: Run) -> None:
    print(
        f"  {run.mode:<13} failed {run.failed:>4} / {run.tasks}   {FLAKY} share "
        f"{run.flaky_share:6.1%}   throughput {run.throughput:7.1f} tasks/s   "
        f"p50 {run.p50 * 1000:7.1f} ms   p99 {run.p99 * 1000:7.1f} ms   breaker trips {run.trips}",
        flush=True,
    )


def print_ratios(runs: list[Run]) -> None:
    def figure(mode: str, name: str) -> float:
        return float(median(getattr(r, name) for r in runs if r.mode == mode))

    def ratio(name: str) -> float:
        return figure("results", name) / max(1e-9, figure("least-loaded", name))

    rounds = len(runs) // len({r.mode for r in runs})
    print(f"results / least-loaded (median of {rounds} run{'s' if rounds > 1 else ''} each):")
    print(
        f"  failed tasks {figure('results', 'failed'):.0f} vs "
        f"{figure('least-loaded', 'failed'):.0f}: {ratio('failed'):.2f}x (goal <= 0.33x)"
    )
    print(f"  throughput {ratio('throughput'):.2f}x (goal >= 0.95x)")
    print(f"  goodput (succeeded tasks/s) {ratio('goodput'):.2f}x")
    print(f"  p99 {ratio('p99'):.2f}x (goal <= 1.0x), p50 {ratio('p50'):.2f}x")

    def per_round(mode: str) -> list[Run]:
        return [r for r in runs if r.mode == mode]

    pairs = list(zip(per_round("least-loaded"), per_round("results"), strict=True))
    for name in ("throughput", "p99"):
        ratios = [getattr(r, name) / getattr(ll, name) for ll, r in pairs]
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"  {name} per round: {shown} (median {median(ratios):.2f}x)")
    if per_round(CONTROL):
        controls = list(zip(per_round(CONTROL), per_round("results"), strict=True))
        print(f"results / {CONTROL} (least-loaded without {FLAKY}; same rounds):")
        for name in ("throughput", "p99"):
            ratios = [getattr(r, name) / getattr(c, name) for c, r in controls]
            shown = ", ".join(f"{x:.2f}" for x in ratios)
            print(f"  {name} per round: {shown} (median {median(ratios):.2f}x)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "agent-host":
        from agentarmy.agent.runtime import run_event_loop

        url, seed, concurrency, task_ms, first = sys.argv[2:7]
        run_event_loop(host_agents(url, int(seed), int(concurrency), float(task_ms), int(first)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each mode, alternating")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="tasks per agent at once (8: the four healthy agents alone have room for the "
        "load; with less, holding the flaky agent back costs its share of the capacity)",
    )
    parser.add_argument("--task-ms", type=float, default=10.0, help="each task's sleep")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="submit at this many tasks/s (open loop, batches of "
        f"{PACED_BATCH}) instead of all at once: load below the fleet's capacity, as a fleet "
        "sized with headroom sees it",
    )
    parser.add_argument(
        "--healthy-control",
        action="store_true",
        help=f"also run {CONTROL} each round: least-loaded over the healthy agents alone",
    )
    args = parser.parse_args()
    print(
        f"bench_routing {datetime.now():%Y-%m-%d %H:%M}: {args.tasks} tasks (maxAttempts 1), "
        f"{AGENTS} agents x concurrency {args.concurrency}, {args.task_ms:g} ms each, "
        f"{FLAKY} fails {FAIL_SHARE:.0%} (seed {args.seed}), submitted "
        f"{f'at {args.rate:g} tasks/s' if args.rate else 'all at once'}; "
        f"{os.cpu_count()} cores, unpinned",
        flush=True,
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        for round_number in range(args.rounds):
            for mode in (*MODES, CONTROL) if args.healthy_control else MODES:
                work = Path(tmp) / f"{mode}-{round_number}"
                work.mkdir()
                runs.append(run_client(run_mode(mode, work, args)))
                print_run(runs[-1])
    print_ratios(runs)


if __name__ == "__main__":
    main()
