"""The local demo, end to end, on one machine without docker:

a real control plane (etcd, kube-apiserver, controller-manager, scheduler,
kwok nodes) with the CRDs; the router (SQLite store, agents authenticated by
their pods' ServiceAccount tokens through TokenReview); the operator; the pod
runner, which runs each agent pod as a real `armyctl agent` process; the
example echo fleet; tasks submitted and their results printed; the baseline
Policy refusing a Fleet from a foreign registry and a scale past its limit. It then keeps
running so you can poke at it (Ctrl-C stops everything), unless --exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

from agentarmy.api import crdgen, wire
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.coldstart import cold_fleet, first_result
from agentarmy.devcluster.stack import Stack, local_stack, wait_for_agents
from agentarmy.router.client import RouterClient

REPO = Path(__file__).resolve().parents[3]
FLEET_EXAMPLE = REPO / "manifests" / "examples" / "fleet-echo.yaml"
POLICY_EXAMPLE = REPO / "manifests" / "examples" / "policy-baseline.yaml"
PIPELINE_EXAMPLE = REPO / "manifests" / "examples" / "pipeline.yaml"
PIPELINE_TASK = REPO / "manifests" / "examples" / "task-pipeline.yaml"
NAMESPACE = "demo"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


async def flow_tasks(router_url: str, token: str, admin_token: str, count: int, agents: int) -> int:
    say(f"waiting for {agents} agent processes to register with the router")
    await wait_for_agents(router_url, admin_token, NAMESPACE, agents)
    async with RouterClient(router_url, token) as client:
        say(f"submitting {count} tasks to fleet {NAMESPACE}/echo")
        started = time.monotonic()
        submitted = await client.submit_batch(
            [
                wire.SubmitTask(
                    namespace=NAMESPACE,
                    fleet="echo",
                    capability="echo",
                    input={"text": f"hello agent, this is task {i}"},
                )
                for i in range(count)
            ]
        )
        ids = [r.task.id for r in submitted.results]
        results = await asyncio.gather(*(client.wait(i, timeout_seconds=60) for i in ids))
        elapsed = time.monotonic() - started
    print(f"\n{'task':<28} {'phase':<10} {'agent':<26} result")
    for task in results:
        print(f"{task.id:<28} {task.phase:<10} {task.agent:<26} {task.result}")
    done = sum(t.phase == "Succeeded" for t in results)
    print(f"\n{done}/{count} tasks succeeded in {elapsed:.2f}s\n")
    return 0 if done == count else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20, help="tasks to submit")
    parser.add_argument("--exit", action="store_true", help="stop after showing the results")
    args = parser.parse_args(argv)
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
            cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(FLEET_EXAMPLE))
            say("applied manifests/examples/fleet-echo.yaml; waiting for Available")
            cluster.kubectl(
                "wait", "-n", NAMESPACE, "--for=condition=Available", "fleet/echo", "--timeout=120s"
            )
            print(cluster.kubectl("get", "fleets,agents,pods", "-n", NAMESPACE).stdout)
            code = asyncio.run(
                flow_tasks(
                    stack.router_url, stack.client_token, stack.admin_token, args.tasks, agents=3
                )
            )
            code = _show_wake_from_zero(cluster, stack) or code
            code = _show_policy(cluster) or code
            code = _show_pipeline(cluster) or code
            code = asyncio.run(_show_runtime_rules(stack.router_url, stack.admin_token)) or code
            if args.exit:
                return code
            _explain(cluster, stack.router_url, stack.client_token)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
            return code


def _show_wake_from_zero(cluster: DevCluster, stack: Stack) -> int:
    """A fleet the autoscaler took to zero wakes on its first task: the router's stats
    watch tells the operator at once (not at the next stats poll)."""
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=cold_fleet("sleepy"))
    deadline = time.monotonic() + 60
    while "sleepy" not in cluster.kubectl("get", "fleets", "-n", NAMESPACE).stdout:
        if time.monotonic() > deadline:
            say("fleet sleepy did not appear within 60 s")
            return 1
        time.sleep(0.2)
    time.sleep(1)  # let the operator see it at zero
    say("fleet sleepy idles at zero agents (autoscaling.minReplicas: 0); submitting one task")
    print(cluster.kubectl("get", "fleet", "sleepy", "-n", NAMESPACE).stdout)
    task, seconds = asyncio.run(
        first_result(stack.router_url, stack.client_token, NAMESPACE, "sleepy")
    )
    say(f"submit -> first result on a cold fleet: {seconds:.2f}s ({task.phase}, {task.agent})")
    events = cluster.kubectl(
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        "involvedObject.name=sleepy,reason=Autoscaled",
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
    )
    print(events.stdout)
    return 0 if task.phase == "Succeeded" else 1


def _show_pipeline(cluster: DevCluster) -> int:
    """A lead splits a text, three workers count words in parallel, a reducer adds up: the
    lead's task waits in the router for its children, holding no agent slot."""
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(PIPELINE_EXAMPLE))
    say("applied manifests/examples/pipeline.yaml (fleets lead, workers, reducer)")
    cluster.kubectl(
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=Available",
        "fleet/lead",
        "fleet/workers",
        "fleet/reducer",
        "--timeout=120s",
    )
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(PIPELINE_TASK))
    say("applied task-pipeline.yaml; kubectl wait --for=condition=Complete task/count-words")
    waited = cluster.kubectl(
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=Complete",
        "task/count-words",
        "--timeout=120s",
        check=False,
    )
    result = cluster.kubectl(
        "get", "task", "count-words", "-n", NAMESPACE, "-o", "jsonpath={.status.result}"
    )
    print(f"result: {result.stdout}\n")
    return waited.returncode


def _show_policy(cluster: DevCluster) -> int:
    """A Policy at the door: the baseline example admits the echo fleet as it runs and
    refuses a Fleet from a foreign registry and a scale past its limit."""
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(POLICY_EXAMPLE))
    say("applied manifests/examples/policy-baseline.yaml; a Fleet from evil.io/ is refused:")
    foreign = FLEET_EXAMPLE.read_text().replace("name: echo", "name: foreign", 1)
    foreign = foreign.replace(
        "      role: worker", "      role: worker\n      image: evil.io/agent:1"
    )
    refused = cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=foreign, check=False)
    print(f"$ kubectl apply -f fleet-foreign.yaml\n{refused.stderr.strip()}\n")
    scaled = cluster.kubectl("scale", "-n", NAMESPACE, "fleet/echo", "--replicas=60", check=False)
    print(f"$ kubectl scale fleet/echo --replicas=60\n{scaled.stderr.strip()}\n")
    print(cluster.kubectl("get", "policies", "-n", NAMESPACE).stdout)
    denied = "denied the request" in refused.stderr and "denied the request" in scaled.stderr
    return 0 if denied else 1


async def _show_runtime_rules(router_url: str, admin_token: str) -> int:
    """The same Policy at run time: its rate limit, budget, approvals and sentinel reach
    the router (pushed by the operator) and bind every task of the echo fleet."""
    async with RouterClient(router_url, admin_token) as admin:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = await admin.rules_in_force()
            fleets = [r for g in found.namespaces if g.namespace == NAMESPACE for r in g.fleets]
            if any(r.fleet == "echo" for r in fleets):
                (echo,) = [r for r in fleets if r.fleet == "echo"]
                limit = echo.tasksPerMinute.value if echo.tasksPerMinute else None
                say(
                    f"the router enforces the baseline at run time for fleet echo: "
                    f"{limit:g} tasks/min, {len(echo.tokenBudgets)} token budget(s), "
                    f"approval for {', '.join(a.tool for a in echo.approvalTools) or '-'}, "
                    "a sentinel at "
                    f"{echo.sentinel.maxErrorRate.value:.0%} errors (armyctl rules)"
                    if limit is not None and echo.sentinel.maxErrorRate is not None
                    else "the router holds the baseline's runtime rules for fleet echo"
                )
                return 0
            await asyncio.sleep(0.2)
    say("the baseline's runtime rules did not reach the router within 10 s")
    return 1


def _explain(cluster: DevCluster, router_url: str, token: str) -> None:
    assert cluster.workdir is not None
    token_file = cluster.workdir / "demo-user.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    print("The demo keeps running. In another shell:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  kubectl get fleets,agents,pods -n {NAMESPACE}")
    print(f"  kubectl scale fleet/echo -n {NAMESPACE} --replicas=5")
    print(
        f"  .venv/bin/armyctl submit --router {router_url} --token-file {token_file} "
        f'-n {NAMESPACE} --input \'{{"text": "hi"}}\' --wait echo echo'
    )
    print(f"Logs: {cluster.workdir}/logs and {cluster.workdir}/pods. Ctrl-C stops everything.")


if __name__ == "__main__":
    sys.exit(main())
