"""Benchmark: no-op tasks end to end (submit -> recorded result) with 50 agents.

    python tests/bench/bench_router.py [--tasks 10000] [--agents 50] [--rates 200,400] [--duration 30]

Runs, one after the other on this machine: our router on SQLite, our router on NATS
JetStream, and Celery on a real redis-server with the same concurrency. For each:

- burst: N tasks submitted as fast as the client can; throughput = N / (last result
  recorded - first submit) and latency per task = result recorded - its submit.
- open loop: tasks arrive one by one at a fixed rate (the same for all systems);
  latency is measured from each task's *scheduled* send time (no coordinated omission),
  after 2 unmeasured seconds at the same rate.

"Result recorded" is the store's own clock: our task's finishedAt (set in the commit
that records the result) and Celery's date_done (set when the worker stores the
result in Redis). Everything runs on the same 2 cores, unpinned. Then the router's
RSS with 100,000 queued tasks. Figures are printed; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
ADMIN_TOKEN = "bench-admin-token-0001"
AGENT_TOKEN = "bench-agent-token-0001"
HOST_PROCESSES = 2  # our 50 agents live in 2 processes (25 asyncio agents each)
OPEN_LOOP_WARMUP = 2.0
"""Seconds at each rate, for every system, before the measured run (the first seconds at a
new rate after a burst were always the slowest: caches, allocator, queues settling)."""


@dataclass
class Result:
    name: str
    tasks: int
    throughput: float
    p50: float
    p99: float
    open_loop: list[tuple[float, float, float]]
    """(arrivals per second, p50, p99) of each open-loop run."""
    drain: float = 0.0
    """tasks/s working off a queue filled before any agent/worker started (submitter not involved)."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


# -- ours ---------------------------------------------------------------------------------------


async def host_agents(router_url: str, names: list[str]) -> None:
    """Run several agent runtimes (echo skill, concurrency 1) in this process until killed."""
    from agentarmy.agent.runtime import AgentRuntime
    from agentarmy.agent.settings import AgentSettings
    from agentarmy.agent.skills import load_skills
    from agentarmy.router.client import RouterClient

    runtimes = []
    for name in names:
        settings = AgentSettings(
            router_url=router_url,
            name=name,
            namespace="default",
            fleet="bench",
            capabilities=["echo"],
            concurrency=1,
        )
        client = RouterClient(router_url, AGENT_TOKEN)
        runtimes.append(AgentRuntime(settings, client, load_skills(settings)))
    await asyncio.gather(*(r.run() for r in runtimes))


def start_agent_hosts(router_url: str, agents: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    per_host = -(-agents // HOST_PROCESSES)
    names = [f"a{i}" for i in range(agents)]
    hosts = []
    for index in range(HOST_PROCESSES):
        chunk = names[index * per_host : (index + 1) * per_host]
        log = (logs / f"agents-{index}.log").open("ab")
        hosts.append(
            subprocess.Popen(
                [sys.executable, __file__, "agent-host", router_url, *chunk],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return hosts


async def wait_for_agents(client: object, count: int) -> None:
    for _ in range(600):
        stats = await client.stats()  # type: ignore[attr-defined]
        live = sum(1 for f in stats.fleets if f.fleet == "bench" for a in f.agents if a.live)
        if live >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("agents did not register")


async def wait_done(client: object, total: int) -> None:
    while True:
        stats = await client.stats()  # type: ignore[attr-defined]
        fleets = [f for f in stats.fleets if f.fleet == "bench"]
        if fleets and fleets[0].succeeded >= total:
            return
        await asyncio.sleep(0.1)


async def finished_times(client: object, after_seq: int) -> dict[str, float]:
    times: dict[str, float] = {}
    after = after_seq
    while True:
        page = await client.list(fleet="bench", limit=1000, after=after)  # type: ignore[attr-defined]
        times.update({t.id: t.finishedAt for t in page.tasks if t.finishedAt})
        if page.next is None:
            return times
        after = int(page.next)


@dataclass
class Burst:
    start: float
    sent: dict[str, float]
    """task id -> when its submission was sent"""
    done: dict[str, float]
    """task id -> when its result was recorded (the store's own clock)"""

    @property
    def throughput(self) -> float:
        return len(self.sent) / (max(self.done[t] for t in self.sent) - self.start)

    @property
    def latencies(self) -> list[float]:
        return [self.done[t] - at for t, at in self.sent.items()]


def summarize(
    name: str, burst: Burst, open_loops: dict[float, list[float]], drain: float
) -> Result:
    values = burst.latencies
    return Result(
        name,
        len(burst.sent),
        burst.throughput,
        percentile(values, 0.5),
        percentile(values, 0.99),
        [(rate, percentile(v, 0.5), percentile(v, 0.99)) for rate, v in open_loops.items()],
        drain,
    )


def drain_rate(done: list[float]) -> float:
    """Tasks per second between the first and the last recorded result."""
    return (len(done) - 1) / (max(done) - min(done))


async def run_ours(
    name: str,
    store_url: str,
    work: Path,
    args: argparse.Namespace,
    prepare: Callable[[Any], Awaitable[None]] | None = None,
) -> Result:
    """``prepare`` (optional) is awaited with the admin client as soon as it is open, before
    any task is submitted (bench_governance puts runtime rules in force there)."""
    from agentarmy.api import wire
    from agentarmy.devcluster.processes import stop_process
    from agentarmy.router.client import RouterClient
    from agentarmy.router.testing import RouterProcess, write_token_file

    tokens = write_token_file(
        work / "tokens.yaml",
        [
            {"token": ADMIN_TOKEN, "name": "bench", "role": "admin"},
            {
                "token": AGENT_TOKEN,
                "name": "agents",
                "role": "agent",
                "namespace": "default",
                "fleet": "bench",
            },
        ],
    )
    router = RouterProcess(store_url, tokens, work / f"router-{name.replace(' ', '-')}.log").start()
    hosts: list[subprocess.Popen[bytes]] = []
    submitted = 0
    try:
        async with RouterClient(router.url, ADMIN_TOKEN, timeout=120) as client:
            if prepare is not None:
                await prepare(client)
            batch = [wire.SubmitTask(fleet="bench", capability="echo") for _ in range(100)]
            for _ in range(args.tasks // 100):  # the drain phase's queue, before any agent exists
                await client.submit_batch(batch)
            submitted = args.tasks // 100 * 100
            hosts = start_agent_hosts(router.url, args.agents, work)
            await wait_done(client, submitted)
            drained = drain_rate(list((await finished_times(client, 0)).values()))
            await wait_for_agents(client, args.agents)

            async def burst(count: int) -> Burst:
                nonlocal submitted
                sent: dict[str, float] = {}
                start = time.time()
                for _ in range(count // 100):  # batches of 100: what a bulk caller does
                    at = time.time()
                    reply = await client.submit_batch(batch)
                    sent.update({r.task.id: at for r in reply.results})
                submitted += len(sent)
                await wait_done(client, submitted)
                return Burst(start, sent, await finished_times(client, 0))

            await burst(args.warmup)
            measured = await burst(args.tasks)
            open_loops = {}
            for rate in args.rates:
                await open_loop_ours(client, rate, OPEN_LOOP_WARMUP, breakdown=False)
                open_loops[rate] = await open_loop_ours(client, rate, args.duration)
            return summarize(name, measured, open_loops, drained)
    finally:
        for host in hosts:
            stop_process(host, grace=5)
        router.stop()


async def open_loop_ours(
    client: object, rate: float, duration: float, breakdown: bool = True
) -> list[float]:
    """One submission per arrival, at fixed times; latency from the scheduled time."""
    from agentarmy.api import wire

    scheduled: dict[str, float] = {}
    start = time.time() + 0.2
    loop = asyncio.get_running_loop()
    sends: list[asyncio.Future[None]] = []

    async def send(at: float) -> None:
        reply = await client.submit(wire.SubmitTask(fleet="bench", capability="echo"))  # type: ignore[attr-defined]
        scheduled[reply.task.id] = at

    def pace() -> None:
        # The event loop's timers have millisecond resolution (a send would fire up to 1 ms
        # early or late); a thread sleeping to each arrival is as punctual as Celery's
        # synchronous client (measured: ~0.1 ms late at p99).
        for i in range(int(rate * duration)):
            at = start + i / rate
            time.sleep(max(0.0, at - time.time()))
            loop.call_soon_threadsafe(lambda at=at: sends.append(asyncio.ensure_future(send(at))))

    await asyncio.to_thread(pace)
    await asyncio.sleep(0)  # the last call_soon_threadsafe callbacks have run
    await asyncio.gather(*sends)
    latencies, accept, dispatch, report = [], [], [], []
    for task_id, at in scheduled.items():
        task = await client.wait(task_id, 30)  # type: ignore[attr-defined]
        latencies.append(task.finishedAt - at)
        accept.append(task.createdAt - at)
        dispatch.append(task.attempts[0].startedAt - task.createdAt)
        report.append(task.finishedAt - task.attempts[0].startedAt)
    if not breakdown:
        return latencies
    fused = sum(1 for d in dispatch if d == 0) / max(1, len(dispatch))
    print(
        f"  leased in the write that stored them: {fused:.0%}; open-loop breakdown p50/p99 ms: "
        + ", ".join(
            f"{label} {percentile(v, 0.5) * 1000:.1f}/{percentile(v, 0.99) * 1000:.1f}"
            for label, v in (
                ("send->stored", accept),
                ("stored->leased", dispatch),
                ("leased->result stored", report),
            )
        )
    )
    return latencies


# -- Celery ---------------------------------------------------------------------------------------


def ensure_celery() -> None:
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        print("installing the benchmark's pinned Celery (tests/bench/requirements.txt)")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-r", str(HERE / "requirements.txt")],
            check=True,
        )


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing redis-server (Debian package)")
        for step in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "redis-server"],
        ):
            subprocess.run(step, check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("redis-server")
    if not found:
        sys.exit(
            "redis-server is missing: run `sudo apt-get install -y redis-server` and try again"
        )
    return found


def run_celery(
    pool: str,
    workers: int,
    concurrency: int,
    work: Path,
    args: argparse.Namespace,
    durable: bool = False,
) -> Result:
    import redis

    from agentarmy.devcluster.processes import free_port, stop_process
    from agentarmy.router.testing import wait_for_port

    port = free_port()
    persistence = (
        ["--appendonly", "yes", "--appendfsync", "everysec"] if durable else ["--appendonly", "no"]
    )
    server = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(work),
            *persistence,
        ],
        stdout=(work / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, 20, server)  # type: ignore[arg-type]
    env = {
        **os.environ,
        "BENCH_BROKER": f"redis://127.0.0.1:{port}/0",
        "BENCH_BACKEND": f"redis://127.0.0.1:{port}/1",
        "BENCH_CELERY_DURABLE": "1" if durable else "0",
    }
    sys.path.insert(0, str(HERE))
    import celery_peer

    app = celery_peer.app
    app.conf.update(
        broker_url=env["BENCH_BROKER"],
        result_backend=env["BENCH_BACKEND"],
        task_acks_late=durable,
        task_reject_on_worker_lost=durable,
    )
    results = redis.Redis(port=port, db=1)
    drain_ids = [
        celery_peer.noop.apply_async().id for _ in range(args.tasks)
    ]  # queued before workers
    workers_running = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_peer",
                "worker",
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
                "-n",
                f"w{index}@bench",
            ],
            cwd=HERE,
            env=env,
            stdout=(work / f"celery-{index}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        for index in range(workers)
    ]
    try:
        while results.dbsize() < len(drain_ids):
            time.sleep(0.05)
        drained = drain_rate(list(date_done(results, drain_ids).values()))
        for _ in range(300):
            if len(app.control.ping(timeout=0.5) or []) >= workers:
                break
        else:
            raise TimeoutError("celery workers did not answer ping")

        def burst(count: int) -> Burst:
            results.flushdb()
            sent: dict[str, float] = {}
            start = time.time()
            for _ in range(count):
                at = time.time()
                sent[celery_peer.noop.apply_async().id] = at
            while results.dbsize() < count:
                time.sleep(0.05)
            return Burst(start, sent, date_done(results, list(sent)))

        burst(args.warmup)
        measured = burst(args.tasks)
        open_loops = {}
        for rate in args.rates:
            open_loop_celery(results, celery_peer.noop, rate, OPEN_LOOP_WARMUP)
            open_loops[rate] = open_loop_celery(results, celery_peer.noop, rate, args.duration)
        name = f"celery {pool} {workers}x{concurrency}" + (" acks_late+AOF" if durable else "")
        return summarize(name, measured, open_loops, drained)
    finally:
        for worker in workers_running:
            stop_process(worker, grace=10)
        stop_process(server)  # type: ignore[arg-type]


def date_done(results: object, ids: list[str]) -> dict[str, float]:
    """task id -> when the worker stored its result (Celery's date_done)."""
    done: dict[str, float] = {}
    for offset in range(0, len(ids), 1000):
        chunk = ids[offset : offset + 1000]
        raw = results.mget([f"celery-task-meta-{tid}" for tid in chunk])  # type: ignore[attr-defined]
        for tid, blob in zip(chunk, raw, strict=True):
            done[tid] = datetime.fromisoformat(json.loads(blob)["date_done"]).timestamp()
    return done


def open_loop_celery(results: object, noop: object, rate: float, duration: float) -> list[float]:
    results.flushdb()  # type: ignore[attr-defined]
    sent: dict[str, float] = {}
    start = time.time() + 0.2
    for i in range(int(rate * duration)):
        at = start + i / rate
        time.sleep(max(0.0, at - time.time()))
        sent[noop.apply_async().id] = at  # type: ignore[attr-defined]
    while results.dbsize() < len(sent):  # type: ignore[attr-defined]
        time.sleep(0.05)
    done = date_done(results, list(sent))
    return [done[t] - at for t, at in sent.items()]


# -- memory -------------------------------------------------------------------------------------


async def queued_rss(
    name: str, store_url: str, work: Path, count: int
) -> tuple[float, float, float]:
    from agentarmy.api import wire
    from agentarmy.router.client import RouterClient
    from agentarmy.router.testing import RouterProcess, write_token_file

    tokens = write_token_file(
        work / "tokens.yaml", [{"token": ADMIN_TOKEN, "name": "b", "role": "admin"}]
    )
    router = RouterProcess(store_url, tokens, work / f"router-rss-{name}.log").start()
    try:
        idle = rss_mib(router.pid)[0]
        async with RouterClient(router.url, ADMIN_TOKEN, timeout=120) as client:
            batch = [
                wire.SubmitTask(fleet="parked", capability="echo", input={"n": 1})
                for _ in range(1000)
            ]
            for _ in range(count // 1000):
                await client.submit_batch(batch)
            stats = await client.stats()
            queued = sum(f.queued for f in stats.fleets)
            assert queued == count, f"expected {count} queued, router says {queued}"
        rss, peak = rss_mib(router.pid)
        return idle, rss, peak
    finally:
        router.stop()


# -- main ---------------------------------------------------------------------------------------


def run_client(main: Coroutine[Any, Any, T]) -> T:
    """Our load generator runs on uvloop (as our router and agents do): under the default
    loop the client's own overhead is a large part of what an open-loop task measures."""
    import uvloop

    return uvloop.run(main)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "agent-host":
        from agentarmy.agent.runtime import run_event_loop

        run_event_loop(host_agents(sys.argv[2], sys.argv[3:]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "celery-trial":
        # Each Celery configuration runs in a fresh process: Celery apps cache their connections.
        trial = json.loads(sys.argv[2])
        result = run_celery(
            trial["pool"],
            trial["workers"],
            trial["concurrency"],
            Path(trial["work"]),
            argparse.Namespace(**trial["args"]),
            trial["durable"],
        )
        print(json.dumps(asdict(result)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[200.0, 400.0],
        help="open-loop arrivals per second, one run each (comma-separated)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="measured open-loop seconds per rate (a p99 of 10 s moved ~1 ms run to run)",
    )
    parser.add_argument("--rss-tasks", type=int, default=100_000)
    parser.add_argument("--only", default="sqlite,nats,celery,rss")
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(
        f"bench: {args.tasks} no-op tasks, {args.agents} agents, open loop at "
        f"{', '.join(f'{r:.0f}' for r in args.rates)}/s "
        f"for {args.duration:.0f}s, {os.cpu_count()} cores, all processes unpinned"
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="agentarmy-bench-") as tmp:
        work = Path(tmp)
        if "sqlite" in only:
            (work / "sqlite").mkdir()
            results.append(
                run_client(
                    run_ours(
                        "ours sqlite", f"sqlite:///{work}/sqlite/router.db", work / "sqlite", args
                    )
                )
            )
            print_result(results[-1])
        if "nats" in only:
            from agentarmy.router.testing import NatsServer

            with NatsServer(work / "nats") as nats:
                results.append(run_client(run_ours("ours nats", nats.url, work / "nats", args)))
            print_result(results[-1])
        if "celery" in only:
            ensure_celery()
            trials = [
                ("threads", 1, args.agents),
                ("prefork", 1, args.agents),
                ("threads", 2, args.agents // 2),
            ]
            celery_runs = [
                celery_trial(pool, n, c, work, args, durable=False) for pool, n, c in trials
            ]
            best_index = max(range(len(trials)), key=lambda i: celery_runs[i].drain)
            best = celery_runs[best_index]
            celery_runs.append(celery_trial(*trials[best_index], work, args, durable=True))
            results += celery_runs
            print(f"best Celery pool at our concurrency: {best.name}")
            print_ratios(results, best)
        if "rss" in only:
            for name, make_url in (("sqlite", lambda w: f"sqlite:///{w}/rss.db"), ("nats", None)):
                (work / f"rss-{name}").mkdir()
                if make_url is not None:
                    idle, rss, peak = run_client(
                        queued_rss(name, make_url(work), work / f"rss-{name}", args.rss_tasks)
                    )
                else:
                    from agentarmy.router.testing import NatsServer

                    with NatsServer(work / "rss-nats-store") as nats:
                        idle, rss, peak = run_client(
                            queued_rss(name, nats.url, work / f"rss-{name}", args.rss_tasks)
                        )
                print(
                    f"router RSS ({name}) with {args.rss_tasks} queued tasks: {rss:.0f} MiB "
                    f"(peak {peak:.0f} MiB, idle {idle:.0f} MiB)"
                )


def celery_trial(
    pool: str, workers: int, concurrency: int, work: Path, args: argparse.Namespace, durable: bool
) -> Result:
    folder = work / f"celery-{pool}-{workers}{'-durable' if durable else ''}"
    folder.mkdir()
    trial = {
        "pool": pool,
        "workers": workers,
        "concurrency": concurrency,
        "work": str(folder),
        "args": vars(args),
        "durable": durable,
    }
    run = subprocess.run(
        [sys.executable, __file__, "celery-trial", json.dumps(trial)],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        sys.exit(f"celery trial {pool} {workers}x{concurrency} failed:\n{run.stderr[-3000:]}")
    result = Result(**json.loads(run.stdout.strip().splitlines()[-1]))
    print_result(result)
    return result


def print_result(result: Result) -> None:
    print(
        f"{result.name:<34} drain {result.drain:6.0f} tasks/s | e2e burst {result.throughput:6.0f} tasks/s "
        f"p50 {result.p50 * 1000:7.1f} ms "
        f"p99 {result.p99 * 1000:7.1f} ms | open loop "
        + " | ".join(
            f"{rate:.0f}/s p50 {p50 * 1000:6.1f} ms p99 {p99 * 1000:6.1f} ms"
            for rate, p50, p99 in result.open_loop
        ),
        flush=True,
    )


def print_ratios(results: list[Result], celery: Result) -> None:
    for ours in (r for r in results if r.name.startswith("ours")):
        print(
            f"ratio {ours.name} / {celery.name}: drain throughput {ours.drain / celery.drain:.2f}x, "
            f"e2e burst throughput {ours.throughput / celery.throughput:.2f}x, "
            + ", ".join(
                f"open loop {rate:.0f}/s p50 {p50 / c50:.2f}x p99 {p99 / c99:.2f}x"
                for (rate, p50, p99), (_, c50, c99) in zip(
                    ours.open_loop, celery.open_loop, strict=True
                )
            )
        )
    # The strictest anchor for latency: each rate's lowest p99 of any Celery configuration.
    celery_runs = [r for r in results if r.name.startswith("celery")]
    lowest = [
        min(celery_runs, key=lambda run: run.open_loop[index][2])
        for index in range(len(celery.open_loop))
    ]
    for ours in (r for r in results if r.name.startswith("ours")):
        print(
            f"p99 ratio {ours.name} / lowest Celery p99 at that rate: "
            + ", ".join(
                f"{rate:.0f}/s {p99 / run.open_loop[index][2]:.2f}x ({run.name})"
                for index, ((rate, _, p99), run) in enumerate(
                    zip(ours.open_loop, lowest, strict=True)
                )
            )
        )


if __name__ == "__main__":
    main()
