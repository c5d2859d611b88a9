"""Canary rollouts on the real control plane, with the real router, operator and agent
processes: a failing template is aborted at its first step while the old Agents keep
serving and no task is lost; a healthy one walks every step to 100%; an operator
SIGKILLed mid-canary resumes at the same step; too few tasks mean waiting, not a verdict."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentarmy.devcluster.canarydrill import Traffic, canary_fleet
from agentarmy.devcluster.stack import Stack, local_stack
from tests.integration.operator_process import apply, get_json, wait_for

pytestmark = pytest.mark.e2e

REPLICAS = 4


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(cluster, "e2e-canary", tmp_path_factory.mktemp("stack")) as running:
        yield running


def fleet(name: str, version: str, broken: bool = False, **canary: Any) -> str:
    steps = canary.pop("steps", [{"weight": 25, "pause": "3s"}, {"weight": 50, "pause": "3s"}])
    return canary_fleet(name, version, broken, REPLICAS, steps, **canary)


def status_of(cluster: Any, stack: Stack, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get_json(cluster, "fleet", name, "-n", stack.namespace).get(
        "status", {}
    )
    return status


def wait_canary(cluster: Any, stack: Stack, name: str, phase: str, timeout: float) -> None:
    """Wait for status.canary.phase; on a timeout, say where the canary stood."""
    last: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = status_of(cluster, stack, name).get("canary") or {}
        if last.get("phase") == phase:
            return
        time.sleep(0.3)
    raise AssertionError(f"fleet {name}: no canary phase {phase} after {timeout}s: {last}")


def agents_by_template(cluster: Any, stack: Stack, name: str) -> dict[str, int]:
    agents = get_json(cluster, "agents", "-n", stack.namespace, "-l", f"agentarmy.io/fleet={name}")
    counts: dict[str, int] = {}
    for agent in agents["items"]:
        if agent["metadata"].get("deletionTimestamp"):
            continue
        template = agent["metadata"]["labels"]["agentarmy.io/template-hash"]
        counts[template] = counts.get(template, 0) + 1
    return counts


def rolled_out(cluster: Any, stack: Stack, name: str) -> str:
    def complete() -> bool:
        status = status_of(cluster, stack, name)
        return (
            status.get("updatedReplicas") == status.get("availableReplicas") == REPLICAS
            and status.get("replicas") == REPLICAS
            and status.get("stableTemplateHash") == status.get("currentTemplateHash")
        )

    wait_for(complete, 120)
    return str(status_of(cluster, stack, name)["currentTemplateHash"])


def armyctl(cluster: Any, stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentarmy.cli.main", *args, "-n", stack.namespace],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=180,
    )


def events(cluster: Any, stack: Stack, name: str, reason: str) -> list[dict[str, Any]]:
    listed = get_json(
        cluster,
        "events",
        "-n",
        stack.namespace,
        "--field-selector",
        f"involvedObject.name={name},involvedObject.kind=Fleet,reason={reason}",
    )
    return list(listed["items"])


def test_a_failing_template_is_aborted_at_the_first_step_and_nothing_is_lost(
    cluster: Any, stack: Stack
) -> None:
    apply(cluster, stack.namespace, fleet("broken", "1"))
    stable = rolled_out(cluster, stack, "broken")
    with Traffic(stack, "broken") as traffic:
        apply(cluster, stack.namespace, fleet("broken", "2", broken=True))
        wait_canary(cluster, stack, "broken", "Aborted", 90)
        status = status_of(cluster, stack, "broken")
        canary = status["canary"]
        assert (canary["step"], canary["weight"]) == (0, 25)
        assert canary["stableTemplateHash"] == stable
        assert canary["tasks"] >= 6 and canary["failures"] > 0.2 * canary["tasks"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Progressing"]["status"] == "False"
        assert conditions["Progressing"]["reason"] == "RolloutAborted"
        assert conditions["Stalled"]["status"] == "True"
        message = conditions["Progressing"]["message"]
        assert f"of {canary['tasks']} tasks ({canary['errorRate']})" in message
        assert "maxErrorRate 20%" in message
        assert status["phase"] == "Degraded"
        # The new template back to zero, the old one to full size.
        wait_for(lambda: agents_by_template(cluster, stack, "broken") == {stable: REPLICAS}, 90)
        assert events(cluster, stack, "broken", "RolloutAborted")
        time.sleep(2)  # traffic keeps flowing to the old agents
    outcomes = traffic.phases()
    assert outcomes == {"Succeeded": len(traffic.ids)}, outcomes
    # Aborted stays aborted: nothing moves until the template changes or a retry.
    time.sleep(4)
    assert status_of(cluster, stack, "broken")["canary"]["phase"] == "Aborted"
    assert agents_by_template(cluster, stack, "broken") == {stable: REPLICAS}
    followed = armyctl(cluster, stack, "rollout", "status", "fleet/broken")
    assert followed.returncode == 1 and "rollout aborted" in followed.stderr, followed

    # A person retries: the canary starts over from a clean count, and (still broken)
    # is aborted again.
    first_abort = status_of(cluster, stack, "broken")["canary"]
    retried = armyctl(cluster, stack, "rollout", "retry", "fleet/broken")
    assert retried.returncode == 0, retried
    with Traffic(stack, "broken") as traffic:
        wait_for(
            lambda: (
                (status_of(cluster, stack, "broken")["canary"]).get("retry")
                not in ("", None, first_abort.get("retry"))
            ),
            30,
        )
        wait_canary(cluster, stack, "broken", "Aborted", 90)
    again = status_of(cluster, stack, "broken")["canary"]
    assert again["baselineTasks"] >= first_abort["baselineTasks"] + first_abort["tasks"]
    assert traffic.phases() == {"Succeeded": len(traffic.ids)}


def test_a_healthy_canary_walks_every_step_to_100_percent(cluster: Any, stack: Stack) -> None:
    apply(cluster, stack.namespace, fleet("healthy", "1"))
    rolled_out(cluster, stack, "healthy")
    weights: list[int] = []
    with Traffic(stack, "healthy"):
        apply(cluster, stack.namespace, fleet("healthy", "2"))

        def promoted() -> bool:
            canary = status_of(cluster, stack, "healthy").get("canary") or {}
            if canary.get("weight") and (not weights or weights[-1] != canary["weight"]):
                weights.append(canary["weight"])
            return canary.get("phase") == "Promoted"

        wait_for(promoted, 120, interval=0.3)
    new = rolled_out(cluster, stack, "healthy")
    assert agents_by_template(cluster, stack, "healthy") == {new: REPLICAS}
    assert weights[0] == 25 and 50 in weights, weights
    assert weights == sorted(weights), weights
    assert events(cluster, stack, "healthy", "RolloutPromoted")
    conditions = {c["type"]: c for c in status_of(cluster, stack, "healthy")["conditions"]}
    assert conditions["Progressing"]["reason"] == "RolloutComplete"
    followed = armyctl(cluster, stack, "rollout", "status", "fleet/healthy", "--timeout", "30")
    assert followed.returncode == 0 and "successfully rolled out" in followed.stdout, followed


def test_too_few_tasks_mean_waiting_not_a_verdict(cluster: Any, stack: Stack) -> None:
    apply(cluster, stack.namespace, fleet("quiet", "1"))
    rolled_out(cluster, stack, "quiet")
    apply(cluster, stack.namespace, fleet("quiet", "2", broken=True, min_tasks=50))

    wait_canary(cluster, stack, "quiet", "WaitingForTasks", 60)
    canary = status_of(cluster, stack, "quiet")["canary"]
    assert canary["step"] == 0 and canary["errorRate"] == ""
    assert "waiting for 50 more task(s)" in canary["message"]
    conditions = {c["type"]: c for c in status_of(cluster, stack, "quiet")["conditions"]}
    assert conditions["Progressing"]["status"] == "True"
    assert conditions["Progressing"]["reason"] == "CanaryStep"
    time.sleep(5)  # still no verdict, still at the first step
    assert status_of(cluster, stack, "quiet")["canary"]["phase"] == "WaitingForTasks"
    assert status_of(cluster, stack, "quiet")["canary"]["step"] == 0


def test_an_operator_killed_mid_canary_resumes_at_the_same_step(cluster: Any, stack: Stack) -> None:
    apply(cluster, stack.namespace, fleet("restart", "1"))
    stable = rolled_out(cluster, stack, "restart")
    slow = {"steps": [{"weight": 25, "pause": "2s"}, {"weight": 50, "pause": "1h"}]}
    with Traffic(stack, "restart"):
        apply(cluster, stack.namespace, fleet("restart", "2", **slow))

        def at_second_step() -> bool:
            canary = status_of(cluster, stack, "restart").get("canary") or {}
            return canary.get("step") == 1 and canary.get("phase") == "Paused"

        wait_for(at_second_step, 120)
        before = status_of(cluster, stack, "restart")["canary"]
        agents_before = agents_by_template(cluster, stack, "restart")
        stack.operator.kill()
        stack.operator.start().wait_ready()
        time.sleep(4)  # a few reconciles of the restarted operator
        after = status_of(cluster, stack, "restart")["canary"]
    assert (after["step"], after["weight"], after["phase"]) == (1, 50, "Paused")
    assert after["stepStartedAt"] == before["stepStartedAt"]  # the pause was not restarted
    assert after["baselineTasks"] == before["baselineTasks"]
    assert agents_by_template(cluster, stack, "restart") == agents_before
    assert agents_before[stable] == REPLICAS // 2
