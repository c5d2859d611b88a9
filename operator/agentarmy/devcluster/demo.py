"""The local demo, end to end, on one machine without docker.

It starts a real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok
nodes) with the CRDs; the router (SQLite store, agents authenticated by their pods'
ServiceAccount tokens through TokenReview); the operator; the pod runner, which runs each
agent pod as a real `armyctl agent` process. Then, in order, each step saying what it
proves and showing its evidence:

  1. a Fleet becomes Available (manifests/examples/fleet-echo.yaml);
  2. a Policy denies a Fleet at the door (policy-baseline.yaml; the kubectl message);
  3. tasks flow through the router to the agents (a progress bar);
  4. a canary rollout of a broken template is rolled back (RolloutAborted);
  5. the sentinel halts a failing fleet, and `armyctl resume` lets it run again;
  6. a fleet idling at zero agents wakes on its first task;
  7. a workflow (pipeline.yaml, task-pipeline.yaml) completes and `armyctl tree` shows it.

A summary of every step follows. The demo then keeps running so you can poke at it
(Ctrl-C stops everything); with --exit it stops, with exit code 0 only when every step
did what it should.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentarmy.api import conditions, crdgen, wire
from agentarmy.api.fleet import FleetStatus
from agentarmy.api.rules import AllRules, FleetRules
from agentarmy.api.task import TERMINAL_PHASES
from agentarmy.devcluster.canarydrill import Traffic, canary_fleet
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.coldstart import cold_fleet, first_result
from agentarmy.devcluster.stack import Stack, local_stack, wait_for_agents
from agentarmy.router.client import RouterClient

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "manifests" / "examples"
FLEET_EXAMPLE = EXAMPLES / "fleet-echo.yaml"
POLICY_EXAMPLE = EXAMPLES / "policy-baseline.yaml"
PIPELINE_EXAMPLE = EXAMPLES / "pipeline.yaml"
PIPELINE_TASK = EXAMPLES / "task-pipeline.yaml"
NAMESPACE = "demo"
LIMITS = {"limits": {"cpu": "500m", "memory": "256Mi"}}
"""What the baseline Policy requires of every fleet the demo adds (requireResourceLimits)."""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def show(text: str) -> None:
    """Evidence, indented under the step that produced it."""
    for line in text.rstrip().splitlines():
        print(f"    {line}")
    print(flush=True)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    evidence: str


@dataclass
class Demo:
    """What every step needs: the cluster, the running stack, and tokens in files for the
    `armyctl` commands the steps show."""

    cluster: DevCluster
    stack: Stack
    tasks: int
    user_token_file: Path
    admin_token_file: Path

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, "-n", NAMESPACE, **kwargs)

    def apply(self, manifest: str | Path) -> None:
        if isinstance(manifest, Path):
            self.kubectl("apply", "-f", str(manifest))
        else:
            self.kubectl("apply", "-f", "-", input=manifest)

    def wait_available(self, *fleets: str, seconds: int = 120) -> None:
        names = [f"fleet/{f}" for f in fleets]
        self.kubectl("wait", "--for=condition=Available", *names, f"--timeout={seconds}s")

    def fleet(self, name: str) -> FleetStatus:
        found = json.loads(self.kubectl("get", "fleet", name, "-o", "json").stdout)
        return FleetStatus.model_validate(found.get("status") or {})

    def armyctl(self, *args: str, admin: bool = False) -> subprocess.CompletedProcess[str]:
        """An armyctl command against the demo's router, printed as a user would type it."""
        print(f"    $ armyctl {shlex.join(args)}")
        token = self.admin_token_file if admin else self.user_token_file
        where = ["-n", NAMESPACE, "--router", self.stack.router_url, "--token-file", str(token)]
        return subprocess.run(
            [sys.executable, "-m", "agentarmy.cli.main", *args, *where],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def condition(status: FleetStatus, kind: str) -> tuple[str, str, str]:
    """(status, reason, message) of one condition; empty strings when absent."""
    for c in status.conditions:
        if c.type == kind:
            return c.status, c.reason, c.message or ""
    return "", "", ""


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise TimeoutError(f"{what}: not within {seconds:.0f}s")
        time.sleep(0.3)
    return time.monotonic() - started


# -- 1 ------------------------------------------------------------------------------------


def fleet_available(demo: Demo) -> Outcome:
    started = time.monotonic()
    demo.apply(FLEET_EXAMPLE)
    print("    $ kubectl apply -f manifests/examples/fleet-echo.yaml")
    print("    $ kubectl wait --for=condition=Available fleet/echo")
    demo.wait_available("echo")
    took = time.monotonic() - started
    show(demo.kubectl("get", "fleets,agents,pods").stdout)
    status = demo.fleet("echo")
    available = condition(status, conditions.AVAILABLE)[0] == "True"
    return Outcome(
        available and status.readyReplicas == 3,
        f"fleet/echo Available, {status.readyReplicas}/3 agents ready, {took:.1f}s after apply",
    )


# -- 2 ------------------------------------------------------------------------------------


def policy_denies(demo: Demo) -> Outcome:
    demo.apply(POLICY_EXAMPLE)
    print("    $ kubectl apply -f manifests/examples/policy-baseline.yaml")
    demo.kubectl("wait", "--for=condition=Ready", "policy/baseline", "--timeout=60s")
    foreign = FLEET_EXAMPLE.read_text().replace("name: echo", "name: foreign", 1)
    foreign = foreign.replace(
        "      role: worker", "      role: worker\n      image: evil.io/agent:1"
    )
    print("    $ kubectl apply -f fleet-foreign.yaml   # image: evil.io/agent:1")
    refused = demo.kubectl("apply", "-f", "-", input=foreign, check=False)
    show(refused.stderr or refused.stdout)
    print("    $ kubectl scale fleet/echo --replicas=60")
    scaled = demo.kubectl("scale", "fleet/echo", "--replicas=60", check=False)
    show(scaled.stderr or scaled.stdout)
    show(demo.kubectl("get", "policies").stdout)
    runtime = asyncio.run(_runtime_rules(demo.stack))
    if runtime is not None:
        show(
            "the same Policy binds every task of fleet echo in the router (armyctl rules): "
            + runtime
        )
    denied = "denied the request" in refused.stderr and "denied the request" in scaled.stderr
    if refused.returncode == 0:
        demo.kubectl("delete", "fleet", "foreign", "--wait=false", check=False)
    message = refused.stderr.strip().rpartition("denied the request: ")[2]
    return Outcome(
        denied and runtime is not None,
        f"denied: {message or refused.stdout.strip()}"
        + ("" if runtime is not None else "; its runtime rules did not reach the router"),
    )


async def _runtime_rules(stack: Stack, seconds: float = 10) -> str | None:
    """What the router enforces for fleet echo, once the operator has pushed it."""
    async with RouterClient(stack.router_url, stack.admin_token) as admin:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            echo = _rules_of(await admin.rules_in_force(), "echo")
            if echo is not None and echo.sentinel.maxErrorRate is not None:
                limit = echo.tasksPerMinute.value if echo.tasksPerMinute else 0
                approvals = ", ".join(a.tool for a in echo.approvalTools) or "-"
                return (
                    f"{limit:g} tasks/min, {len(echo.tokenBudgets)} token budget(s), "
                    f"approval for {approvals}, a sentinel at "
                    f"{echo.sentinel.maxErrorRate.value:.0%} errors"
                )
            await asyncio.sleep(0.2)
    return None


def _rules_of(found: AllRules, fleet: str) -> FleetRules | None:
    for group in found.namespaces:
        for rules in group.fleets:
            if group.namespace == NAMESPACE and rules.fleet == fleet:
                return rules
    return None


# -- 3 ------------------------------------------------------------------------------------


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


class Bar:
    """A text progress bar: redrawn in place on a terminal; on a pipe (a log, a test) one
    line per tenth, so the log shows the flow without a line per task."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.tty = sys.stdout.isatty()
        self._printed_tenth = -1

    def advance(self) -> None:
        self.done += 1
        tenth = 10 * self.done // self.total
        if self.tty:
            print(f"\r    {progress_bar(self.done, self.total)}", end="", flush=True)
        elif tenth != self._printed_tenth:
            self._printed_tenth = tenth
            print(f"    {progress_bar(self.done, self.total)}", flush=True)

    def close(self) -> None:
        if self.tty:
            print(flush=True)


def tasks_flow(demo: Demo) -> Outcome:
    stack, count = demo.stack, demo.tasks
    asyncio.run(wait_for_agents(stack.router_url, stack.admin_token, NAMESPACE, 3))
    print(f"    submitting {count} echo tasks to fleet {NAMESPACE}/echo, 10 at a time")
    results, took = asyncio.run(_flow(stack, count))
    by_agent = Counter(t.agent for t in results if t.phase == "Succeeded")
    spread = ", ".join(f"{agent.rpartition('/')[2]} {n}" for agent, n in sorted(by_agent.items()))
    show(
        "\n".join(f"{t.id}  {t.phase:<9}  {t.agent:<22} {t.result}" for t in results[:3])
        + (f"\n... and {count - 3} more" if count > 3 else "")
    )
    done = sum(t.phase == "Succeeded" for t in results)
    return Outcome(
        done == count and len(by_agent) == 3,
        f"{done}/{count} tasks succeeded in {took:.1f}s ({done / took:.0f}/s), "
        f"spread over {len(by_agent)} agents: {spread}",
    )


async def _flow(stack: Stack, count: int) -> tuple[list[wire.Task], float]:
    """Submit in batches of ten, a batch every 0.1 s, and wait for every task; the bar
    moves as results come back."""
    bar = Bar(count)
    waits = asyncio.Semaphore(20)
    async with RouterClient(stack.router_url, stack.client_token) as client:

        async def finished(task_id: str) -> wire.Task:
            async with waits:
                task = await client.wait(task_id, timeout_seconds=60)
            bar.advance()
            return task

        started = time.monotonic()
        pending: list[asyncio.Task[wire.Task]] = []
        for first in range(0, count, 10):
            batch = [
                wire.SubmitTask(
                    namespace=NAMESPACE,
                    fleet="echo",
                    capability="echo",
                    input={"text": f"hello agent, this is task {i}"},
                )
                for i in range(first, min(first + 10, count))
            ]
            submitted = await client.submit_batch(batch)
            pending += [asyncio.create_task(finished(r.task.id)) for r in submitted.results]
            await asyncio.sleep(0.1)
        results = await asyncio.gather(*pending)
        bar.close()
        return list(results), time.monotonic() - started


# -- 4 ------------------------------------------------------------------------------------

CANARY_REPLICAS = 4


def checkout_fleet(version: str, broken: bool) -> str:
    """Fleet checkout: a Canary strategy judging each new template on 6 tasks at most 20%
    failed. A broken version's agents fail every task (the test skill's TEST_SKILL_FAIL)."""
    return canary_fleet("checkout", version, broken, replicas=CANARY_REPLICAS, resources=LIMITS)


def canary_rolled_back(demo: Demo) -> Outcome:
    demo.apply(checkout_fleet("1", broken=False))
    print("    fleet checkout v1 (strategy.type: Canary, maxErrorRate 20%, minTasks 6)")

    def rolled_out() -> bool:
        s = demo.fleet("checkout")
        return (
            s.updatedReplicas == s.availableReplicas == s.replicas == CANARY_REPLICAS
            and s.stableTemplateHash == s.currentTemplateHash != ""
        )

    wait_until(rolled_out, 120, "fleet checkout v1 rolled out")
    stable = demo.fleet("checkout").stableTemplateHash
    show(demo.kubectl("get", "fleet", "checkout", "-o", "wide").stdout)
    with Traffic(demo.stack, "checkout") as traffic:
        time.sleep(1)
        demo.apply(checkout_fleet("2", broken=True))
        print("    $ kubectl apply -f checkout-v2.yaml   # its agents fail every task")
        status = _follow_canary(demo, seconds=90)
        if status.canary is None or status.canary.phase != "Aborted":
            return Outcome(False, f"no RolloutAborted within 90s: {status.canary}")
        _, reason, message = condition(status, conditions.PROGRESSING)
        show(f"Progressing=False, reason {reason}: {message}")
        wait_until(
            lambda: (
                (s := demo.fleet("checkout")).updatedReplicas == 0
                and s.availableReplicas == CANARY_REPLICAS
            ),
            90,
            "the old template back at full size",
        )
        show(demo.kubectl("get", "fleet", "checkout", "-o", "wide").stdout)
    phases = traffic.phases()
    total = sum(phases.values())
    show(f"tasks sent to checkout during the rollout: {dict(phases)}")
    restored = demo.fleet("checkout").stableTemplateHash == stable
    return Outcome(
        reason == conditions.ROLLOUT_ABORTED and restored and phases == {"Succeeded": total},
        f"{reason}: {message}; {phases['Succeeded']}/{total} tasks sent meanwhile succeeded",
    )


def _follow_canary(demo: Demo, seconds: float) -> FleetStatus:
    """Print status.canary whenever it changes, until it ends (Aborted or Promoted)."""
    deadline = time.monotonic() + seconds
    last = ""
    status = demo.fleet("checkout")
    while time.monotonic() < deadline:
        status = demo.fleet("checkout")
        canary = status.canary
        if canary is not None and canary.templateHash == status.currentTemplateHash:
            line = (
                f"status.canary: {canary.phase:<15} step {canary.step + 1}, "
                f"weight {canary.weight}%, {canary.failures} of {canary.tasks} tasks failed"
                + (f" ({canary.errorRate})" if canary.errorRate else "")
            )
            if line != last:
                print(f"    {line}", flush=True)
                last = line
            if canary.phase in ("Aborted", "Promoted"):
                print(flush=True)
                return status
        time.sleep(0.3)
    return status


# -- 5 ------------------------------------------------------------------------------------


SENTINEL_BOUND = 0.25


def guarded_fleet_and_policy() -> str:
    """Fleet payments (team: payments) and a Policy whose sentinel halts it once at least
    4 attempts in a minute failed at more than 25% (stricter than the baseline's 50%, so
    the halt names this Policy)."""
    fleet = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": "payments", "labels": {"team": "payments"}},
        "spec": {
            # two agents: the routing breaker may bench one that failed three in a row, never
            # both, so what the step shows after the resume is the halt lifted, nothing else
            "replicas": 2,
            "template": {"spec": {"capabilities": ["test"], "concurrency": 2, "resources": LIMITS}},
        },
    }
    policy = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": "payments-guard"},
        "spec": {
            "selector": {"matchLabels": {"team": "payments"}},
            "rules": {"sentinel": {"maxErrorRate": SENTINEL_BOUND, "minTasks": 4, "window": "1m"}},
        },
    }
    return "\n---\n".join(json.dumps(d) for d in (policy, fleet))


def sentinel_halts(demo: Demo) -> Outcome:
    demo.apply(guarded_fleet_and_policy())
    print(
        f"    Policy payments-guard: sentinel {{maxErrorRate: {SENTINEL_BOUND}, minTasks: 4, "
        "window: 1m}"
    )
    demo.wait_available("payments")
    asyncio.run(_wait_for_sentinel(demo.stack, "payments"))
    print("    4 tasks whose upstream is down (they fail, no retry)")
    held = asyncio.run(_fail_then_submit(demo.stack))
    mirrored = wait_until(
        lambda: condition(demo.fleet("payments"), conditions.HALTED)[0] == "True",
        30,
        "fleet payments Halted=True",
    )
    _, reason, message = condition(demo.fleet("payments"), conditions.HALTED)
    show(
        demo.kubectl("get", "fleet", "payments").stdout
        + f"\nHalted=True {mirrored:.1f}s after the router halted it, {reason}: {message}"
    )
    queued = asyncio.run(_phase_after(demo.stack, held, 2.0))
    show(f"a task submitted while halted, 2 s later: {queued} (accepted, not dispatched)")
    resumed = demo.armyctl("resume", "fleet/payments", "--reason", "upstream fixed", admin=True)
    show(resumed.stdout + resumed.stderr)
    started = time.monotonic()
    after = asyncio.run(_phase_after(demo.stack, held, 30.0, until_terminal=True))
    ran = time.monotonic() - started
    cleared = wait_until(
        lambda: (
            condition(demo.fleet("payments"), conditions.HALTED)[:2]
            == ("False", conditions.RESUMED)
        ),
        30,
        "fleet payments Halted=False",
    )
    show(
        f"after the resume that task ran: {after} ({ran:.1f}s); the Fleet shows "
        f"Halted=False, Resumed {ran + cleared:.1f}s after the resume"
    )
    return Outcome(
        reason in conditions.HALTED_BY_RULE.values()
        and queued not in TERMINAL_PHASES
        and resumed.returncode == 0
        and after == "Succeeded",
        f"Halted ({reason}): {message}; `armyctl resume` -> the held task {after}",
    )


async def _wait_for_sentinel(stack: Stack, fleet: str, seconds: float = 10) -> None:
    async with RouterClient(stack.router_url, stack.admin_token) as admin:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rules = _rules_of(await admin.rules_in_force(), fleet)
            bound = rules.sentinel.maxErrorRate if rules is not None else None
            if bound is not None and bound.value == SENTINEL_BOUND:
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the sentinel of fleet {fleet} did not reach the router in {seconds}s")


async def _fail_then_submit(stack: Stack) -> str:
    """Four failing tasks (the sentinel's sample), then one good task; its id."""
    async with RouterClient(stack.router_url, stack.client_token) as client:

        async def submit(task_input: dict[str, Any]) -> str:
            task = wire.SubmitTask(
                namespace=NAMESPACE,
                fleet="payments",
                capability="test",
                input=task_input,
                maxAttempts=1,
            )
            return (await client.submit(task)).task.id

        failing = [await submit({"fail": "upstream is down", "retryable": False}) for _ in range(4)]
        for task_id in failing:
            await client.wait(task_id, 30)
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            for _ in range(100):  # the halt is written with the breaching result (< 1 s)
                if any(h.fleet == "payments" for h in (await admin.halts()).halts):
                    break
                await asyncio.sleep(0.05)
        return await submit({"output": {"paid": True}})


async def _phase_after(
    stack: Stack, task_id: str, seconds: float, until_terminal: bool = False
) -> str:
    async with RouterClient(stack.router_url, stack.client_token) as client:
        if not until_terminal:
            await asyncio.sleep(seconds)
            return (await client.get(task_id)).phase
        return (await client.wait(task_id, seconds)).phase


# -- 6 ------------------------------------------------------------------------------------


def wakes_from_zero(demo: Demo) -> Outcome:
    demo.apply(cold_fleet("sleepy"))
    wait_until(lambda: demo.fleet("sleepy").observedGeneration > 0, 60, "fleet sleepy reconciled")
    show(demo.kubectl("get", "fleet", "sleepy").stdout)
    print("    fleet sleepy: replicas 0, autoscaling.minReplicas 0; submitting one task")
    stack = demo.stack
    task, seconds = asyncio.run(
        first_result(stack.router_url, stack.client_token, NAMESPACE, "sleepy")
    )
    events = demo.kubectl(
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sleepy,reason=Autoscaled",
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
    ).stdout
    show(f"submit -> first result: {seconds:.2f}s ({task.phase}, {task.agent})\n\n{events}")
    return Outcome(
        task.phase == "Succeeded" and "woke from zero" in events,
        f"submit -> first result {seconds:.2f}s on a fleet at zero agents ({task.phase})",
    )


# -- 7 ------------------------------------------------------------------------------------


def workflow_tree(demo: Demo) -> Outcome:
    demo.apply(PIPELINE_EXAMPLE)
    print(
        "    $ kubectl apply -f manifests/examples/pipeline.yaml   # fleets lead, workers, reducer"
    )
    demo.wait_available("lead", "workers", "reducer")
    demo.apply(PIPELINE_TASK)
    print("    $ kubectl apply -f manifests/examples/task-pipeline.yaml")
    print("    $ kubectl wait --for=condition=Complete task/count-words")
    waited = demo.kubectl(
        "wait", "--for=condition=Complete", "task/count-words", "--timeout=120s", check=False
    )
    task = json.loads(demo.kubectl("get", "task", "count-words", "-o", "json").stdout)
    status = task.get("status") or {}
    show((waited.stdout or waited.stderr) + f"\nresult: {json.dumps(status.get('result'))}")
    task_id = str(status.get("taskId", ""))
    tree = demo.armyctl("tree", task_id)
    show(tree.stdout + tree.stderr)
    fleets = Counter(t.fleet for t in asyncio.run(_tree(demo.stack, task_id)).tasks)
    words = (status.get("result") or {}).get("words")
    return Outcome(
        waited.returncode == 0 and tree.returncode == 0 and fleets["workers"] >= 1,
        f"task/count-words Complete ({words} words); its tree: "
        + ", ".join(f"{n} {fleet}" for fleet, n in fleets.items()),
    )


async def _tree(stack: Stack, task_id: str) -> wire.TaskTree:
    async with RouterClient(stack.router_url, stack.client_token) as client:
        return await client.tree(task_id)


# -- running the steps -------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    proves: str
    run: Callable[[Demo], Outcome]


STEPS = (
    Step(
        "fleet available",
        "the operator turns a Fleet into Agents and pods, and reports Available",
        fleet_available,
    ),
    Step(
        "policy denies",
        "a Policy is enforced at the door: the API server refuses what it forbids",
        policy_denies,
    ),
    Step(
        "tasks flow",
        "the router assigns tasks to the fleet's agents and returns every result",
        tasks_flow,
    ),
    Step(
        "canary rolled back",
        "a broken template is judged by its error rate and rolled back, losing no task",
        canary_rolled_back,
    ),
    Step(
        "sentinel halts",
        "a failing fleet is halted at run time until a person resumes it",
        sentinel_halts,
    ),
    Step(
        "wake from zero",
        "a fleet idling at zero agents scales up on its first task",
        wakes_from_zero,
    ),
    Step(
        "workflow tree",
        "a task fans out to other fleets and joins their results; armyctl tree shows it",
        workflow_tree,
    ),
)


def run_steps(demo: Demo, steps: tuple[Step, ...] = STEPS) -> list[tuple[Step, Outcome]]:
    """Every step in order; one that fails is reported and the next ones still run (they
    use their own fleets), except after the first: without an Available fleet nothing can."""
    outcomes: list[tuple[Step, Outcome]] = []
    for number, step in enumerate(steps, 1):
        if outcomes and not outcomes[0][1].passed:
            outcomes.append((step, Outcome(False, "skipped: step 1 failed")))
            continue
        print()
        say(f"[{number}/{len(steps)}] {step.name}: {step.proves}")
        started = time.monotonic()
        try:
            outcome = step.run(demo)
        except Exception as err:  # a step that breaks is a failed step, and the demo goes on
            detail = getattr(err, "stderr", "") or ""
            outcome = Outcome(False, f"{type(err).__name__}: {err} {detail}".strip())
        verdict = "PASS" if outcome.passed else "FAIL"
        print(f"    {verdict} ({time.monotonic() - started:.1f}s): {outcome.evidence}", flush=True)
        outcomes.append((step, outcome))
    return outcomes


def summarize(outcomes: list[tuple[Step, Outcome]]) -> bool:
    print()
    say("summary")
    width = max(len(step.name) for step, _ in outcomes)
    for number, (step, outcome) in enumerate(outcomes, 1):
        verdict = "PASS" if outcome.passed else "FAIL"
        print(f"  {verdict}  {number}. {step.name:<{width}}  {outcome.evidence}")
    passed = sum(outcome.passed for _, outcome in outcomes)
    print(f"\n{passed}/{len(outcomes)} steps passed", flush=True)
    return passed == len(outcomes)


def _token_file(workdir: Path, name: str, token: str) -> Path:
    path = workdir / name
    path.write_text(token)
    path.chmod(0o600)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100, help="tasks to submit in step 3")
    parser.add_argument("--exit", action="store_true", help="stop after the summary")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error(f"--tasks: at least 1, not {args.tasks}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    say("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
    with DevCluster() as cluster:
        assert cluster.workdir is not None
        cluster.install_crds(crdgen.default_output())
        with local_stack(cluster, NAMESPACE, cluster.workdir) as stack:
            say(
                f"router at {stack.router_url} (SQLite store, TokenReview for agents); "
                "operator started; pod runner runs agent pods as local processes"
            )
            demo = Demo(
                cluster,
                stack,
                args.tasks,
                _token_file(cluster.workdir, "demo-user.token", stack.client_token),
                _token_file(cluster.workdir, "demo-admin.token", stack.admin_token),
            )
            all_passed = summarize(run_steps(demo))
            code = 0 if all_passed else 1
            if args.exit:
                return code
            _explain(demo)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
            return code


def _explain(demo: Demo) -> None:
    cluster, router = demo.cluster, demo.stack.router_url
    assert cluster.workdir is not None
    flags = f"-n {NAMESPACE} --router {router} --token-file {demo.user_token_file}"
    print("\nThe demo keeps running. In another shell:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  kubectl get fleets,agents,pods,policies,tasks -n {NAMESPACE}")
    print(f"  kubectl scale fleet/echo -n {NAMESPACE} --replicas=5")
    print(f'  .venv/bin/armyctl submit {flags} --input \'{{"text": "hi"}}\' --wait echo echo')
    print(f"  .venv/bin/armyctl agents {flags}")
    print(f"Admin token (armyctl rules, resume): {demo.admin_token_file}")
    print(f"Logs: {cluster.workdir}/logs and {cluster.workdir}/pods. Ctrl-C stops everything.")


if __name__ == "__main__":
    sys.exit(main())
