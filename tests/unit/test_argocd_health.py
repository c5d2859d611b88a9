"""The Argo CD health check we ship (integrations/argocd/health.lua), run by a real Lua
interpreter against statuses the operator's own code produces: an aborted canary reads
as Degraded, a rollout under way as Progressing, a finished one as Healthy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

from agentarmy.api.fleet import CanaryStatus, FleetSpec, FleetStatus
from agentarmy.api.task import TaskStatus
from agentarmy.api.wire import Halt
from agentarmy.operator.rollout import Member, fleet_status
from agentarmy.operator.tasks import observed_status, waiting_status
from agentarmy.operator.taskwatch import Snapshot

SCRIPT = (
    Path(__file__).resolve().parents[2] / "integrations" / "argocd" / "health.lua"
).read_text()
NEW, OLD = "new0000000", "old0000000"


def health(kind: str, status: dict[str, Any], generation: int = 1) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    obj = {"kind": kind, "metadata": {"generation": generation}, "status": status}
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def fleet_spec() -> FleetSpec:
    return FleetSpec.model_validate(
        {
            "replicas": 2,
            "template": {"spec": {"capabilities": ["echo"]}},
            "strategy": {"type": "Canary", "canary": {"steps": [{"weight": 50}]}},
        }
    )


def agents(hash_: str, count: int) -> list[Member]:
    return [
        Member(f"a-{hash_}-{i}", hash_, True, True, "2026-01-01T00:00:00Z") for i in range(count)
    ]


def fleet(members: list[Member], **extra: Any) -> dict[str, Any]:
    status = fleet_status(fleet_spec(), FleetStatus(), 1, NEW, "sel", members, **extra)
    return status.model_dump(mode="json", exclude_none=True)


def canary(phase: str) -> CanaryStatus:
    return CanaryStatus(
        phase=phase,  # type: ignore[arg-type]
        templateHash=NEW,
        stableTemplateHash=OLD,
        step=0,
        weight=50,
        tasks=20,
        failures=9,
        errorRate="45.0%",
        message="template new00 failed 9 of 20 tasks (45.0%), above maxErrorRate 10%",
    )


def test_an_aborted_canary_is_degraded_with_its_reason() -> None:
    status, message = health("Fleet", fleet(agents(OLD, 2), canary=canary("Aborted")))
    assert status == "Degraded"
    assert message.startswith("RolloutAborted: template new00 failed 9 of 20 tasks")


def test_a_canary_under_way_is_progressing_and_a_finished_rollout_healthy() -> None:
    under_way = fleet(agents(OLD, 1) + agents(NEW, 1), canary=canary("Paused"))
    assert health("Fleet", under_way)[0] == "Progressing"
    assert health("Fleet", fleet(agents(NEW, 2)))[0] == "Healthy"


def test_a_halted_fleet_is_degraded_and_an_unobserved_spec_progressing() -> None:
    halt = Halt(
        namespace="ns",
        fleet="f",
        rule="maxErrorRate",
        policy="ns/guard",
        measured=0.5,
        bound=0.2,
        sample=40,
        message="error rate 50% above 20%",
        haltedAt=0.0,
    )
    assert health("Fleet", fleet(agents(NEW, 2), halt=halt))[0] == "Degraded"
    assert health("Fleet", fleet(agents(NEW, 2)), generation=2)[0] == "Progressing"


@pytest.mark.parametrize(
    ("phase", "expected"),
    [("Queued", "Progressing"), ("Succeeded", "Healthy"), ("DeadLettered", "Degraded")],
)
def test_tasks_read_as_their_phase(phase: str, expected: str) -> None:
    snap = Snapshot(id="t-1", seq=1, namespace="ns", fleet="crew", phase=phase)  # type: ignore[arg-type]
    status = observed_status(TaskStatus(), 1, snap).model_dump(mode="json", exclude_none=True)
    assert health("Task", status)[0] == expected


def test_a_task_for_a_missing_fleet_says_why() -> None:
    status = waiting_status(TaskStatus(), 1, "False", "FleetNotFound", "fleet ns/crew not found")
    state, message = health("Task", status.model_dump(mode="json", exclude_none=True))
    assert state == "Progressing" and message.startswith("FleetNotFound")
