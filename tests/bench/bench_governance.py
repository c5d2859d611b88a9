"""Benchmark: what runtime governance costs, end to end (rules in force, sentinel halts, approvals).

    python tests/bench/bench_governance.py [--only rules,halt,approvals] [--tasks 5000]
        [--rates 200] [--duration 10] [--rounds 2] [--nats] [--trials 20]

Real router and agent processes on this machine, all unpinned; figures are printed, nothing
here passes or fails.

- rules: bench_router's no-op workload (same code: burst throughput and latency, open loop
  at fixed rates; 50 agents in 2 host processes) on a fresh router per run, with no runtime
  rules, then with 100 fleets' rules in force (the benched fleet among them: rate limit,
  token budget, tool allow-list and sentinel, all far too loose to bind), interleaved
  (none, rules, none, rules) on SQLite, and on NATS JetStream with --nats. Goal: with rules,
  throughput >= 0.9x and p99 <= 1.2x of none.
- halt: a sentinel (maxErrorRate 0.5, minTasks 10, window 60 s) over 2 agents running
  failing tasks that arrive at a steady rate. Per trial: breach = finishedAt of the 10th
  failed task; halt latency = the halt's haltedAt - breach; dispatch after halt = the latest
  attempt start among the trial's tasks - haltedAt (<= 0: nothing was dispatched after the
  halt). Between trials the leftover queued tasks are cancelled, then the fleet resumed
  (which resets the sentinel's window). Goal: p99 halt latency under 1 s.
- approvals: 100 llm tasks parked awaiting approval (a tool in approvalTools, local fake
  model) beside 4 agents x concurrency 4: the agents' running count while they wait, and
  the throughput of 2,000 short test tasks with the 100 parked vs none parked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import mean
from typing import Any

import bench_router
from bench_router import (
    ADMIN_TOKEN,
    AGENT_TOKEN,
    Result,
    percentile,
    print_result,
    run_client,
    run_ours,
    wait_for_agents,
)

from agentarmy.api import runtime_env as env
from agentarmy.api import wire
from agentarmy.api.rules import (
    ApprovalRule,
    BudgetRule,
    FleetRules,
    RuleLimit,
    SentinelRule,
    ToolAllowList,
)
from agentarmy.devcluster.processes import stop_process
from agentarmy.router.client import RouterClient
from agentarmy.router.testing import NatsServer, RouterProcess, write_token_file

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
FLEET = "bench"  # bench_router's fleet; its agent token is scoped to it
GUARD = f"{NAMESPACE}/bench-guard"
HUMANS = f"{NAMESPACE}/humans"
ROUTER_ARGS = ["--lease", "5s", "--reap-interval", "200ms", "--retry-backoff", "200ms"]
"""As in tests/e2e/test_governance_e2e.py: short leases, a fast reaper."""
GOVERNED_FLEETS = 100
PARTS = ("rules", "halt", "approvals")


def limit(value: float, policy: str = GUARD) -> RuleLimit:
    return RuleLimit(value=value, policy=policy)


# -- processes ------------------------------------------------------------------------------------


def token_file(work: Path) -> Path:
    return write_token_file(
        work / "tokens.yaml",
        [
            {"token": ADMIN_TOKEN, "name": "bench", "role": "admin"},
            {
                "token": AGENT_TOKEN,
                "name": "agents",
                "role": "agent",
                "namespace": NAMESPACE,
                "fleet": FLEET,
            },
        ],
    )


def start_router(work: Path) -> RouterProcess:
    return RouterProcess(
        f"sqlite:///{work}/router.db", token_file(work), work / "router.log", extra_args=ROUTER_ARGS
    ).start()


def start_agents(
    router_url: str,
    work: Path,
    count: int,
    capabilities: str,
    concurrency: int,
    **extra: str,
) -> list[subprocess.Popen[bytes]]:
    """``armyctl agent`` processes of the bench fleet, configured as the operator would."""
    agent_token = work / "agent-token"
    agent_token.write_text(AGENT_TOKEN)
    processes = []
    for index in range(count):
        name = f"{FLEET}-{index}"
        agent_env = {
            **os.environ,
            env.ROUTER_URL: router_url,
            env.AGENT_NAME: name,
            env.NAMESPACE: NAMESPACE,
            env.FLEET: FLEET,
            env.CAPABILITIES: capabilities,
            env.CONCURRENCY: str(concurrency),
            env.HEARTBEAT_INTERVAL: "1s",
            env.TOKEN_FILE: str(agent_token),
            **extra,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "agentarmy.cli.main", "agent"],
                env=agent_env,
                stdout=(work / f"{name}.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
        )
    return processes


def stop_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        stop_process(process, grace=10)


async def fleet_stats(client: RouterClient) -> wire.FleetStats | None:
    stats = await client.stats()
    return next((f for f in stats.fleets if f.fleet == FLEET), None)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- 1. rules in force vs none -------------------------------------------------------------------


def loose_rules(fleet: str) -> FleetRules:
    """Every kind of runtime rule, none of which can bind during the benchmark."""
    return FleetRules(
        fleet=fleet,
        policies=[GUARD],
        tasksPerMinute=limit(10_000_000),
        burst=limit(10_000_000),
        tokenBudgets=[BudgetRule(tokens=10**12, windowSeconds=3600, policy=GUARD)],
        allowedTools=[ToolAllowList(policy=GUARD, globs=["*"])],
        sentinel=SentinelRule(
            maxErrorRate=limit(0.99), minTasks=limit(1_000_000), windowSeconds=limit(300)
        ),
    )


async def put_governed_fleets(client: RouterClient) -> None:
    fleets = [loose_rules(FLEET)] + [
        loose_rules(f"fleet-{i:03d}") for i in range(1, GOVERNED_FLEETS)
    ]
    await client.put_rules(NAMESPACE, fleets)
    in_force = sum(len(ns.fleets) for ns in (await client.rules_in_force()).namespaces)
    if in_force != GOVERNED_FLEETS:
        raise RuntimeError(f"the router holds rules for {in_force} fleets, not {GOVERNED_FLEETS}")


def bench_rules(store: str, work: Path, args: argparse.Namespace) -> None:
    runs: dict[str, list[Result]] = {"none": [], "rules": []}
    for round_number in range(1, args.rounds + 1):
        for mode in ("none", "rules"):
            name = f"{store} {mode} #{round_number}"
            folder = work / f"rules-{store}-{mode}-{round_number}"
            folder.mkdir()
            prepare = put_governed_fleets if mode == "rules" else None
            print(f"-- {name}", flush=True)
            if store == "sqlite":
                url = f"sqlite:///{folder}/router.db"
                result = run_client(run_ours(name, url, folder, args, prepare))
            else:
                with NatsServer(folder / "nats") as nats:
                    result = run_client(run_ours(name, nats.url, folder, args, prepare))
            runs[mode].append(result)
            print_result(result)
    print(f"ratio rules/none ({store}), per round and (last line) of the means over rounds:")
    pairs = list(zip(runs["none"], runs["rules"], strict=True))
    for index, (none, rules) in enumerate(pairs, 1):
        print(f"  round {index}: " + ratios(rules, none))
    print(
        "  mean:    "
        + ratios(mean_result("rules", runs["rules"]), mean_result("none", runs["none"]))
    )
    print("  goal: throughput >= 0.90x, p99 <= 1.20x", flush=True)


def mean_result(name: str, results: list[Result]) -> Result:
    return Result(
        name,
        results[0].tasks,
        mean(r.throughput for r in results),
        mean(r.p50 for r in results),
        mean(r.p99 for r in results),
        [
            (runs[0][0], mean(r[1] for r in runs), mean(r[2] for r in runs))
            for runs in zip(*(r.open_loop for r in results), strict=True)
        ],
        mean(r.drain for r in results),
    )


def ratios(rules: Result, none: Result) -> str:
    return (
        f"drain {rules.drain / none.drain:.2f}x, "
        f"burst throughput {rules.throughput / none.throughput:.2f}x, "
        f"burst p50 {rules.p50 / none.p50:.2f}x p99 {rules.p99 / none.p99:.2f}x, "
        + ", ".join(
            f"open loop {rate:.0f}/s p50 {p50 / n50:.2f}x p99 {p99 / n99:.2f}x"
            for (rate, p50, p99), (_, n50, n99) in zip(rules.open_loop, none.open_loop, strict=True)
        )
    )


# -- 2. time from breach to halted dispatch -------------------------------------------------------


@dataclass
class HaltTrial:
    breach: float
    """finishedAt of the failure that made the error rate breach the bound"""
    halted_at: float
    latest_start: float
    """the latest attempt start among the trial's tasks"""
    started_after: int
    """attempts started after haltedAt"""
    ended_before: int
    """tasks that ended before the halt (the bound needs minTasks of them)"""
    queued: int
    """tasks still queued when the trial ended (cancelled before the next one)"""

    @property
    def latency(self) -> float:
        return self.halted_at - self.breach

    @property
    def dispatch_after(self) -> float:
        return self.latest_start - self.halted_at


async def halt_trial(client: RouterClient, args: argparse.Namespace) -> HaltTrial:
    failing = wire.SubmitTask(
        fleet=FLEET,
        capability="test",
        input={"fail": "x", "retryable": False},
        maxAttempts=1,
    )
    ids: list[str] = []
    start = time.time() + 0.05
    for i in range(args.trial_tasks):
        await asyncio.sleep(max(0.0, start + i / args.trial_rate - time.time()))
        ids.append((await client.submit(failing)).task.id)
    deadline = time.monotonic() + 60
    while True:  # halted, and nothing left running
        halts = [h for h in (await client.halts()).halts if h.fleet == FLEET]
        fleet = await fleet_stats(client)
        if halts and fleet is not None and fleet.running == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no halt within 60 s (halts: {halts}, fleet: {fleet})")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # a dispatch that leaked past the halt would show by now
    tasks = [await client.get(task_id) for task_id in ids]
    failed = sorted(t.finishedAt for t in tasks if t.phase == "Failed" and t.finishedAt)
    (halt,) = [h for h in (await client.halts()).halts if h.fleet == FLEET]
    starts = [a.startedAt for t in tasks for a in t.attempts]
    queued = [t.id for t in tasks if t.phase == "Queued"]
    for task_id in queued:  # cancelled before the resume, so none of them runs
        await client.cancel(task_id)
    await client.resume(NAMESPACE, FLEET, "next trial")
    return HaltTrial(
        breach=failed[args.min_tasks - 1],
        halted_at=halt.haltedAt,
        latest_start=max(starts),
        started_after=sum(1 for s in starts if s > halt.haltedAt),
        ended_before=sum(1 for f in failed if f <= halt.haltedAt),
        queued=len(queued),
    )


async def bench_halt(work: Path, args: argparse.Namespace) -> None:
    router = start_router(work)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        async with RouterClient(router.url, ADMIN_TOKEN, timeout=120) as client:
            sentinel = SentinelRule(
                maxErrorRate=limit(0.5),
                minTasks=limit(args.min_tasks),
                windowSeconds=limit(60),
            )
            await client.put_rules(
                NAMESPACE, [FleetRules(fleet=FLEET, policies=[GUARD], sentinel=sentinel)]
            )
            agents = start_agents(router.url, work, 2, "test", 4)
            await wait_for_agents(client, 2)
            trials = []
            for number in range(1, args.trials + 1):
                trial = await halt_trial(client, args)
                trials.append(trial)
                print(
                    f"  trial {number:2d}: halt latency {ms(trial.latency):>9}, "
                    f"dispatch after halt {ms(trial.dispatch_after):>10} "
                    f"({trial.started_after} started after it), "
                    f"{trial.ended_before} ended before it, {trial.queued} left queued",
                    flush=True,
                )
    finally:
        stop_all(agents)
        router.stop()
    for label, values in (
        ("halt latency (haltedAt - breach)", [t.latency for t in trials]),
        ("dispatch after halt (latest start - haltedAt)", [t.dispatch_after for t in trials]),
    ):
        print(
            f"{label}: p50 {ms(percentile(values, 0.5))}, p99 {ms(percentile(values, 0.99))}, "
            f"max {ms(max(values))} over {len(values)} trials"
        )
    after = sum(t.started_after for t in trials)
    print(f"attempts started after their trial's halt: {after} in {len(trials)} trials")
    print("goal: p99 halt latency under 1 s", flush=True)


# -- 3. parked approvals cost no agent capacity ----------------------------------------------------


async def test_burst(client: RouterClient, count: int) -> tuple[float, float, float]:
    """(throughput, p50, p99) of ``count`` test tasks (10 ms each) submitted in batches of 100;
    throughput = count / (last finishedAt - first submit)."""
    batch = [
        wire.SubmitTask(fleet=FLEET, capability="test", input={"sleep": 0.01}) for _ in range(100)
    ]
    before = await fleet_stats(client)
    succeeded = before.succeeded if before else 0
    sent: dict[str, float] = {}
    first_seq = 0
    start = time.time()
    for _ in range(count // 100):
        at = time.time()
        reply = await client.submit_batch(batch)
        sent.update({r.task.id: at for r in reply.results})
        first_seq = first_seq or reply.results[0].task.seq
    while True:
        fleet = await fleet_stats(client)
        if fleet is not None and fleet.succeeded >= succeeded + len(sent):
            break
        await asyncio.sleep(0.1)
    done = await bench_router.finished_times(client, first_seq - 1)
    latencies = [done[t] - at for t, at in sent.items()]
    throughput = len(sent) / (max(done[t] for t in sent) - start)
    return throughput, percentile(latencies, 0.5), percentile(latencies, 0.99)


async def bench_approvals(work: Path, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from tests.e2e.fakemodel import fake_model

    slots = args.approval_agents * 4
    router = start_router(work)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        async with (
            fake_model() as model,
            RouterClient(router.url, ADMIN_TOKEN, timeout=120) as client,
        ):
            await client.put_rules(
                NAMESPACE,
                [
                    FleetRules(
                        fleet=FLEET,
                        policies=[HUMANS],
                        approvalTools=[ApprovalRule(tool="echo", policy=HUMANS)],
                    )
                ],
            )
            agents = start_agents(
                router.url,
                work,
                args.approval_agents,
                "chat,test",
                4,
                **{
                    env.SKILLS: '{"chat": "llm", "test": "test"}',
                    env.MODEL_ENDPOINT: model.url,
                    env.ALLOWED_TOOLS: "echo",
                },
            )
            await wait_for_agents(client, args.approval_agents)
            await test_burst(client, args.approval_tasks // 2)  # warm-up, not measured

            ask = wire.SubmitTask(fleet=FLEET, capability="chat", input={"prompt": "call:echo"})
            start = time.time()
            parked = [r.task.id for r in (await client.submit_batch([ask] * args.parked)).results]
            while (fleet := await fleet_stats(client)) is None or fleet.awaitingApproval < len(
                parked
            ):
                if time.time() - start > 120:
                    raise RuntimeError(f"only {fleet and fleet.awaitingApproval} tasks parked")
                await asyncio.sleep(0.05)
            pending = len((await client.approvals(NAMESPACE)).approvals)
            print(
                f"{len(parked)} llm tasks awaiting approval after {time.time() - start:.2f} s "
                f"({pending} pending approvals, {len(model.calls)} model calls)"
            )
            samples = []
            for _ in range(10):  # while they wait
                fleet = await fleet_stats(client)
                assert fleet is not None
                samples.append(
                    (fleet.running, sum(a.running for a in fleet.agents), fleet.awaitingApproval)
                )
                await asyncio.sleep(0.2)
            busiest = max(s[1] for s in samples)
            print(
                f"while {len(parked)} wait for a person, over 2 s: fleet running "
                f"{sorted({s[0] for s in samples})}, agents' running {sorted({s[1] for s in samples})} "
                f"of {slots} slots -> idle share >= {1 - busiest / slots:.0%}, awaiting approval "
                f"{sorted({s[2] for s in samples})}"
            )

            with_parked = await test_burst(client, args.approval_tasks)
            fleet = await fleet_stats(client)
            still = fleet.awaitingApproval if fleet else 0
            print(
                f"{args.approval_tasks} test tasks (sleep 10 ms) with {still} parked: "
                + burst_line(with_parked),
                flush=True,
            )
            for task_id in parked:
                await client.cancel(task_id)
            fleet = await fleet_stats(client)
            assert fleet is not None
            none_parked = await test_burst(client, args.approval_tasks)
            print(
                f"{args.approval_tasks} test tasks (sleep 10 ms) with {fleet.awaitingApproval} "
                f"parked (after cancelling them): " + burst_line(none_parked)
            )
            print(
                f"ratio parked/none: throughput {with_parked[0] / none_parked[0]:.2f}x, "
                f"p99 {with_parked[2] / none_parked[2]:.2f}x "
                f"(ceiling with {slots} slots and 10 ms tasks: {slots / 0.01:.0f} tasks/s)",
                flush=True,
            )
    finally:
        stop_all(agents)
        router.stop()


def burst_line(figures: tuple[float, float, float]) -> str:
    throughput, p50, p99 = figures
    return f"{throughput:6.0f} tasks/s, latency p50 {ms(p50)} p99 {ms(p99)}"


# -- main -----------------------------------------------------------------------------------------


def header(args: argparse.Namespace) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; all processes unpinned"
    )
    print(f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}; commit {commit}")
    print(f"parts: {', '.join(part for part in PARTS if part in args.only)}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default=set(PARTS),
        help="comma-separated parts: rules, halt, approvals (default: all)",
    )
    rules = parser.add_argument_group("rules")
    rules.add_argument("--tasks", type=int, default=5_000, help="burst size (and drain queue)")
    rules.add_argument("--warmup", type=int, default=500)
    rules.add_argument("--agents", type=int, default=50)
    rules.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[200.0],
        help="open-loop arrivals per second, one run each (comma-separated)",
    )
    rules.add_argument("--duration", type=float, default=10.0, help="measured open-loop seconds")
    rules.add_argument("--rounds", type=int, default=2, help="pairs of (none, rules) runs")
    rules.add_argument("--nats", action="store_true", help="also on NATS JetStream")
    halt = parser.add_argument_group("halt")
    halt.add_argument("--trials", type=int, default=20)
    halt.add_argument("--trial-tasks", type=int, default=100, help="failing tasks per trial")
    halt.add_argument("--trial-rate", type=float, default=200.0, help="their arrivals per second")
    halt.add_argument("--min-tasks", type=int, default=10, help="the sentinel's minTasks")
    approvals = parser.add_argument_group("approvals")
    approvals.add_argument("--parked", type=int, default=100)
    approvals.add_argument("--approval-tasks", type=int, default=2_000)
    approvals.add_argument("--approval-agents", type=int, default=4, help="concurrency 4 each")
    args = parser.parse_args()
    unknown = args.only - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) in --only: {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
    header(args)
    started = time.monotonic()
    parts: list[tuple[str, str, Callable[[Path], Any]]] = [
        (
            "rules",
            f"1. {GOVERNED_FLEETS} fleets' rules in force vs none: {args.tasks} no-op tasks, "
            f"{args.agents} agents, open loop at {', '.join(f'{r:.0f}' for r in args.rates)}/s "
            f"for {args.duration:.0f} s",
            lambda work: run_rules_part(work, args),
        ),
        (
            "halt",
            f"2. breach to halted dispatch: {args.trials} trials of {args.trial_tasks} failing "
            f"tasks at {args.trial_rate:.0f}/s, 2 agents x concurrency 4, sentinel maxErrorRate "
            f"0.5 minTasks {args.min_tasks} window 60 s",
            lambda work: run_client(bench_halt(work, args)),
        ),
        (
            "approvals",
            f"3. {args.parked} parked approvals beside {args.approval_agents} agents x "
            f"concurrency 4: {args.approval_tasks} test tasks with them parked vs none",
            lambda work: run_client(bench_approvals(work, args)),
        ),
    ]
    with tempfile.TemporaryDirectory(prefix="agentarmy-bench-gov-") as tmp:
        for name, title, run in parts:
            if name not in args.only:
                continue
            print(f"\n{title}", flush=True)
            part_started = time.monotonic()
            work = Path(tmp) / name
            work.mkdir()
            run(work)
            print(f"({name}: {time.monotonic() - part_started:.0f} s)", flush=True)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


def run_rules_part(work: Path, args: argparse.Namespace) -> None:
    bench_rules("sqlite", work, args)
    if args.nats:
        bench_rules("nats", work, args)


if __name__ == "__main__":
    main()
