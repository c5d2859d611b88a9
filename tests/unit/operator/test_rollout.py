"""Fleet planning: scale, rolling update bounds, scale-down order."""

from __future__ import annotations

from typing import Any

import pytest

from agentarmy.api import conditions
from agentarmy.api.fleet import FleetSpec, FleetStatus
from agentarmy.api.wire import Halt
from agentarmy.operator.rollout import (
    Member,
    fleet_status,
    halted_condition,
    least_useful_first,
    plan,
    rollout_bounds,
)


def spec(replicas: int, **rolling: Any) -> FleetSpec:
    return FleetSpec.model_validate(
        {
            "replicas": replicas,
            "template": {"spec": {"capabilities": ["echo"]}},
            "strategy": {"rollingUpdate": rolling or {"maxUnavailable": 1, "maxSurge": 1}},
        }
    )


def member(
    name: str,
    hash_: str = "new",
    ready: bool = True,
    created: str = "2026-01-01T00:00:00Z",
) -> Member:
    return Member(name, hash_, ready, ready, created)


def test_scale_up_from_nothing_uses_lowest_free_ordinals() -> None:
    decision = plan("f", spec(3), "abcdef1234", [], taken_names={"f-abcde-1"})
    assert decision.create == ("f-abcde-0", "f-abcde-2", "f-abcde-3")
    assert decision.delete == ()


def test_scale_down_removes_unready_then_newest() -> None:
    members = [
        member("a", created="2026-01-01T00:00:01Z"),
        member("b", created="2026-01-01T00:00:03Z"),
        member("c", ready=False, created="2026-01-01T00:00:00Z"),
        member("d", created="2026-01-01T00:00:02Z"),
    ]
    decision = plan("f", spec(2), "new", members, taken_names=set())
    assert decision.create == ()
    assert decision.delete == ("c", "b")


def test_steady_state_does_nothing() -> None:
    members = [member(n) for n in "abc"]
    assert plan("f", spec(3), "new", members, set()) == plan("f", spec(3), "new", members, set())
    assert plan("f", spec(3), "new", members, set()).create == ()
    assert plan("f", spec(3), "new", members, set()).delete == ()


def test_rolling_update_first_step_respects_surge_and_unavailable() -> None:
    members = [member(n, "old") for n in "abcd"]
    decision = plan("f", spec(4), "new", members, {"a", "b", "c", "d"})
    assert len(decision.create) == 1  # maxSurge 1
    assert len(decision.delete) == 1  # maxUnavailable 1


def test_rolling_update_never_drops_below_min_available() -> None:
    # 4 replicas, maxUnavailable 1: two new agents not ready yet, four old ready.
    members = [member(n, "old") for n in "abcd"] + [
        member("n0", "new", ready=False),
        member("n1", "new", ready=False),
    ]
    decision = plan("f", spec(4, maxUnavailable=1, maxSurge=2), "new", members, set())
    assert decision.create == ()
    removed_ready = [n for n in decision.delete if n in "abcd"]
    assert 4 - len(removed_ready) >= 3


def test_unready_old_agents_go_first() -> None:
    members = [
        member("a", "old"),
        member("b", "old", ready=False),
        member("c", "old"),
        member("n0", "new"),
        member("n1", "new"),
        member("n2", "new"),
    ]
    decision = plan("f", spec(3, maxUnavailable=0, maxSurge=1), "new", members, set())
    assert decision.delete[0] == "b"


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable", "expected"),
    [(10, "25%", "25%", (3, 2)), (4, 0, 0, (0, 1)), (1, "25%", "25%", (1, 0))],
)
def test_rollout_bounds(
    replicas: int, surge: Any, unavailable: Any, expected: tuple[int, int]
) -> None:
    assert rollout_bounds(spec(replicas, maxSurge=surge, maxUnavailable=unavailable)) == expected


def test_least_useful_first() -> None:
    members = [
        member("old-ready", created="1"),
        member("new-ready", created="3"),
        member("unready", ready=False, created="2"),
    ]
    assert [m.name for m in least_useful_first(members)] == ["unready", "new-ready", "old-ready"]


def test_status_is_available_and_complete() -> None:
    members = [member(n) for n in "abc"]
    status = fleet_status(spec(3), FleetStatus(), 4, "new", "agentarmy.io/fleet=f", members)
    assert (status.replicas, status.readyReplicas, status.updatedReplicas) == (3, 3, 3)
    conditions = {c.type: c for c in status.conditions}
    assert conditions["Available"].status == "True"
    assert conditions["Reconciling"].status == "False"
    assert conditions["Progressing"].reason == "RolloutComplete"
    assert status.phase == "Available"
    assert status.observedGeneration == 4


def test_status_while_scaling_up() -> None:
    status = fleet_status(spec(5), FleetStatus(), 1, "new", "s", [member("a")])
    conditions = {c.type: c for c in status.conditions}
    assert conditions["Available"].status == "False"
    assert conditions["Reconciling"].status == "True"
    assert conditions["Progressing"].reason == "ScalingUp"


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("maxErrorRate", "ErrorRateAboveBound"),
        ("maxCostPerHour", "CostPerHourAboveBound"),
        ("maxLatencyP99", conditions.SENTINEL_BOUND_BREACHED),  # a bound from a newer router
    ],
)
def test_a_halt_names_the_bound_breached(rule: str, reason: str) -> None:
    halt = Halt(
        namespace="ns",
        fleet="f",
        rule=rule,
        policy="p",
        measured=0.5,
        bound=0.1,
        message="over the bound",
        haltedAt=0.0,
    )
    (halted,) = halted_condition([], halt, generation=3)
    assert (halted.type, halted.status, halted.reason) == (conditions.HALTED, "True", reason)
    assert halted.observedGeneration == 3
    (resumed,) = halted_condition([halted], None, generation=4)
    assert (resumed.status, resumed.reason) == ("False", conditions.RESUMED)
    assert halted_condition([], None, generation=4) == []
