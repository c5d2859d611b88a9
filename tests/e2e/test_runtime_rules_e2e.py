"""The operator's part of runtime governance, on the real control plane with the real
router, operator and agent processes: a Policy's runtime rules are in force in the router
within 2 s of an apply, an edit and a delete; a fleet the router's sentinel halts shows
Halted=True (reason, bound, measured value), a Warning Event and the printer column, and
Halted=False once a person resumes it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentarmy.api import wire
from agentarmy.api.rules import AllRules, FleetRules
from agentarmy.devcluster.stack import Stack, local_stack
from agentarmy.router.client import RouterClient
from tests.integration.operator_process import apply, get_json, wait_for

pytestmark = pytest.mark.e2e

RULES_IN_FORCE_SECONDS = 2.0


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(cluster, "e2e-rules", tmp_path_factory.mktemp("stack")) as running:
        yield running


def fleet(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Fleet",
            "metadata": {"name": name, "labels": {"team": "payments"}},
            "spec": {
                "replicas": 1,
                "template": {"spec": {"capabilities": ["test"], "concurrency": 2}},
            },
        }
    )


def policy(name: str, per_minute: int) -> str:
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Policy",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"team": "payments"}},
                "rules": {
                    "taskRateLimit": {"tasksPerMinute": per_minute, "burst": 1000},
                    "sentinel": {"maxErrorRate": 0.5, "minTasks": 4, "window": "1m"},
                },
            },
        }
    )


def router_rules(stack: Stack) -> AllRules:
    async def read() -> AllRules:
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            return await admin.rules_in_force()

    return asyncio.run(read())


def fleet_rules(stack: Stack, name: str) -> FleetRules | None:
    for group in router_rules(stack).namespaces:
        for rules in group.fleets:
            if group.namespace == stack.namespace and rules.fleet == name:
                return rules
    return None


def seconds_until(check: Callable[[], bool], limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not true after {limit}s")


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {
        c["type"]: (c["status"], c["reason"], c.get("message", ""))
        for c in obj.get("status", {}).get("conditions", [])
    }


def test_a_policy_edit_is_in_force_in_the_router_within_two_seconds(
    cluster: Any, stack: Stack
) -> None:
    apply(cluster, stack.namespace, fleet("payments"))
    cluster.kubectl(
        "wait",
        "-n",
        stack.namespace,
        "--for=condition=Available",
        "fleet/payments",
        "--timeout=90s",
    )

    def per_minute(value: float) -> Callable[[], bool]:
        def check() -> bool:
            rules = fleet_rules(stack, "payments")
            return (
                rules is not None
                and rules.tasksPerMinute is not None
                and (rules.tasksPerMinute.value == value)
            )

        return check

    apply(cluster, stack.namespace, policy("payments-guard", 600))
    took_apply = seconds_until(per_minute(600), RULES_IN_FORCE_SECONDS)
    apply(cluster, stack.namespace, policy("payments-guard", 300))
    took_edit = seconds_until(per_minute(300), RULES_IN_FORCE_SECONDS)
    rules = fleet_rules(stack, "payments")
    assert rules is not None
    assert rules.tasksPerMinute is not None
    assert rules.tasksPerMinute.policy == f"{stack.namespace}/payments-guard"
    print(f"rules in force after apply {took_apply:.2f}s, after edit {took_edit:.2f}s")


def test_a_halted_fleet_shows_halted_until_resumed(cluster: Any, stack: Stack) -> None:
    assert fleet_rules(stack, "payments") is not None  # the test above applied the Policy

    async def fail_four_then_halt() -> list[wire.Halt]:
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            ids = [
                (
                    await admin.submit(
                        wire.SubmitTask(
                            namespace=stack.namespace,
                            fleet="payments",
                            capability="test",
                            input={"fail": "upstream is down", "retryable": False},
                            maxAttempts=1,
                        )
                    )
                ).task.id
                for _ in range(4)
            ]
            for task_id in ids:
                await admin.wait(task_id, 30)
            for _ in range(100):  # recorded right after the result that caused it (< 1 s)
                halts = (await admin.halts()).halts
                if halts:
                    break
                await asyncio.sleep(0.01)
            return halts

    halts = asyncio.run(fail_four_then_halt())
    assert [h.fleet for h in halts] == ["payments"]

    def halted() -> dict[str, Any]:
        return get_json(cluster, "fleet", "payments", "-n", stack.namespace)

    wait_for(lambda: conditions(halted()).get("Halted", ("",))[0] == "True", 30)
    _, reason, message = conditions(halted())["Halted"]
    assert reason == "ErrorRateAboveBound"
    assert "sentinel.maxErrorRate" in message and "4 of 4 attempts" in message
    assert halted()["status"]["phase"] == "Halted"
    table = cluster.kubectl("get", "fleet", "payments", "-n", stack.namespace).stdout
    assert "HALTED" in table.splitlines()[0] and "True" in table.splitlines()[1]
    events = get_json(
        cluster,
        "events",
        "-n",
        stack.namespace,
        "--field-selector",
        "involvedObject.kind=Fleet,involvedObject.name=payments,reason=Halted",
    )["items"]
    assert events and events[0]["type"] == "Warning"

    async def resume() -> None:
        async with RouterClient(stack.router_url, stack.admin_token) as admin:
            resumed = await admin.resume(stack.namespace, "payments", "upstream fixed")
            assert resumed.wasHalted is not None

    asyncio.run(resume())
    wait_for(lambda: conditions(halted())["Halted"][:2] == ("False", "Resumed"), 30)


def test_deleting_the_policy_lifts_its_rules_within_two_seconds(cluster: Any, stack: Stack) -> None:
    cluster.kubectl("delete", "policy", "payments-guard", "-n", stack.namespace)
    took = seconds_until(lambda: fleet_rules(stack, "payments") is None, RULES_IN_FORCE_SECONDS)
    print(f"rules lifted after {took:.2f}s")
