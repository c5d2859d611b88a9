"""Canary decisions: steps, pauses, the verdict and its sample size, abort and retry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentarmy.api.fleet import CanaryStatus, FleetSpec, FleetStatus
from agentarmy.operator import canary
from agentarmy.operator.canary import TemplateCounts, decide, split
from agentarmy.operator.rollout import Member, fleet_status, plan_targets

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
NEW, OLD = "new0000000", "old0000000"


def spec(replicas: int = 10, **canary_fields: Any) -> FleetSpec:
    return FleetSpec.model_validate(
        {
            "replicas": replicas,
            "template": {"spec": {"capabilities": ["echo"]}},
            "strategy": {
                "type": "Canary",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                "canary": {
                    "steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "30s"}],
                    "maxErrorRate": 0.1,
                    "minTasks": 20,
                    **canary_fields,
                },
            },
        }
    )


def agents(hash_: str, count: int, available: bool = True) -> list[Member]:
    return [
        Member(f"f-{hash_[:5]}-{i}", hash_, available, available, "2026-01-01T00:00:00Z")
        for i in range(count)
    ]


def step_of(decision: canary.Decision) -> CanaryStatus:
    assert decision.status is not None
    return decision.status


@pytest.mark.parametrize(
    ("replicas", "weight", "expected"),
    [
        (10, 10, (1, 9)),
        (10, 50, (5, 5)),
        (10, 100, (10, 0)),
        (1, 10, (1, 1)),
        (2, 90, (1, 1)),
        (0, 50, (0, 0)),
        (3, 1, (1, 2)),
    ],
)
def test_split_keeps_one_agent_of_each_template_below_100(
    replicas: int, weight: int, expected: tuple[int, int]
) -> None:
    assert split(replicas, weight) == expected


def test_a_new_fleet_is_not_a_canary() -> None:
    decision = decide("f", spec(), NEW, "", None, [], None, "", NOW)
    assert decision.targets is None and decision.status is None


def test_a_template_change_starts_at_the_first_step_from_the_running_template() -> None:
    counts = TemplateCounts(tasks=7, failures=3)  # tried before: those do not count
    decision = decide("f", spec(), NEW, OLD, None, agents(OLD, 10), counts, "", NOW)
    status = step_of(decision)
    assert decision.recorded
    assert (status.phase, status.step, status.weight) == ("Progressing", 0, 10)
    assert (status.stableTemplateHash, status.baselineTasks, status.baselineFailures) == (
        OLD,
        7,
        3,
    )
    assert decision.targets == {NEW: 1, OLD: 9}


def test_pause_then_wait_for_min_tasks_without_a_verdict() -> None:
    started = step_of(decide("f", spec(), NEW, OLD, None, agents(OLD, 10), None, "", NOW))
    members = agents(OLD, 9) + agents(NEW, 1)
    paused = decide("f", spec(), NEW, OLD, started, members, TemplateCounts(5, 5), "", NOW)
    status = step_of(paused)
    assert status.phase == "Paused" and paused.requeue == pytest.approx(30)
    assert status.errorRate == ""  # 5 of 5 failed, but 5 < minTasks: no verdict

    later = NOW + timedelta(seconds=31)
    waiting = step_of(
        decide("f", spec(), NEW, OLD, status, members, TemplateCounts(5, 5), "", later)
    )
    assert waiting.phase == "WaitingForTasks"
    assert "waiting for 15 more task(s)" in waiting.message
    assert waiting.step == 0


def test_breach_after_min_tasks_aborts_back_to_the_old_template() -> None:
    started = step_of(decide("f", spec(), NEW, OLD, None, agents(OLD, 10), None, "", NOW))
    members = agents(OLD, 9) + agents(NEW, 1)
    decision = decide("f", spec(), NEW, OLD, started, members, TemplateCounts(20, 3), "", NOW)
    status = step_of(decision)
    assert decision.recorded and decision.aborted
    assert decision.targets == {OLD: 10}
    assert status.errorRate == "15.0%"
    for figure in ("3 of 20 tasks", "15.0%", "maxErrorRate 10%", "minTasks 20", "step 1 (10%)"):
        assert figure in status.message

    # It stays aborted: old template at full size, new at zero, until a retry.
    again = decide("f", spec(), NEW, OLD, status, members, TemplateCounts(40, 3), "", NOW)
    assert again.aborted and not again.recorded
    assert again.targets == {OLD: 10, NEW: 0}


def test_a_retry_starts_over_from_the_counts_at_that_time() -> None:
    aborted = CanaryStatus(
        phase="Aborted",
        templateHash=NEW,
        stableTemplateHash=OLD,
        step=0,
        weight=10,
        tasks=20,
        failures=3,
        message="aborted",
    )
    members = agents(OLD, 10)
    retried = decide("f", spec(), NEW, OLD, aborted, members, TemplateCounts(20, 3), "r1", NOW)
    status = step_of(retried)
    assert retried.recorded and status.phase == "Progressing" and status.retry == "r1"
    assert (status.tasks, status.baselineTasks, status.baselineFailures) == (0, 20, 3)
    # The same retry value seen again after another abort does not retry twice.
    done = status.model_copy(update={"phase": "Aborted"})
    assert decide("f", spec(), NEW, OLD, done, members, None, "r1", NOW).aborted


def test_healthy_canary_walks_every_step_then_promotes() -> None:
    fleet_spec = spec()
    status = step_of(decide("f", fleet_spec, NEW, OLD, None, agents(OLD, 10), None, "", NOW))
    now = NOW
    members = agents(OLD, 9) + agents(NEW, 1)
    for expected_weight in (10, 50):
        new, old = split(10, expected_weight)
        members = agents(OLD, old) + agents(NEW, new)
        status = step_of(
            decide("f", fleet_spec, NEW, OLD, status, members, TemplateCounts(30, 1), "", now)
        )
        assert status.phase == "Paused" and status.weight == expected_weight
        now += timedelta(seconds=31)
        decision = decide(
            "f", fleet_spec, NEW, OLD, status, members, TemplateCounts(30, 1), "", now
        )
        status = step_of(decision)
        assert decision.recorded  # the next step is written before it is carried out
    assert status.phase == "Promoting" and status.weight == 100
    promoted = decide(
        "f", fleet_spec, NEW, OLD, status, agents(NEW, 10), TemplateCounts(30, 1), "", now
    )
    assert step_of(promoted).phase == "Promoted" and promoted.targets is None


def test_unavailable_new_agents_hold_the_step() -> None:
    status = step_of(decide("f", spec(), NEW, OLD, None, agents(OLD, 10), None, "", NOW))
    members = agents(OLD, 9) + agents(NEW, 1, available=False)
    held = step_of(decide("f", spec(), NEW, OLD, status, members, TemplateCounts(50, 0), "", NOW))
    assert held.phase == "Progressing" and held.stepStartedAt == ""


def test_router_forgetting_tasks_never_lowers_the_tally() -> None:
    status = CanaryStatus(
        phase="Paused",
        templateHash=NEW,
        stableTemplateHash=OLD,
        step=0,
        weight=10,
        baselineTasks=50,
        baselineFailures=5,
        tasks=8,
        failures=1,
    )
    members = agents(OLD, 9) + agents(NEW, 1)
    moved = step_of(decide("f", spec(), NEW, OLD, status, members, TemplateCounts(10, 1), "", NOW))
    assert (moved.baselineTasks, moved.tasks, moved.failures) == (10, 8, 1)


def test_plan_targets_grows_the_canary_first_and_keeps_capacity() -> None:
    members = agents(OLD, 10)
    first = plan_targets("f", spec(), NEW, {NEW: 1, OLD: 9}, members, set())
    assert first.create == ("f-new00-0",) and first.delete == ()  # surge, not a gap
    members = agents(OLD, 10) + agents(NEW, 1)
    second = plan_targets("f", spec(), NEW, {NEW: 1, OLD: 9}, members, set())
    assert second.create == () and len(second.delete) == 1
    assert second.delete[0].startswith("f-old00-")


def test_plan_targets_restores_the_old_template_on_abort() -> None:
    members = agents(OLD, 5) + agents(NEW, 5)
    rollback = plan_targets("f", spec(), NEW, {OLD: 10}, members, {m.name for m in members})
    assert rollback.create == ()
    assert rollback.restore == ("f-old00-5",)  # one more old agent, within maxSurge 1
    assert rollback.delete == ()  # maxUnavailable 0: no new agent goes before it is replaced
    members += [Member("f-old00-5", OLD, True, True, "2026-01-02T00:00:00Z")]
    then = plan_targets("f", spec(), NEW, {OLD: 10}, members, {m.name for m in members})
    assert len(then.delete) == 1 and then.delete[0].startswith("f-new00-")


def test_aborted_status_reads_as_stalled_and_degraded() -> None:
    aborted = CanaryStatus(
        phase="Aborted",
        templateHash=NEW,
        stableTemplateHash=OLD,
        step=0,
        weight=10,
        tasks=20,
        failures=5,
        errorRate="25.0%",
        message="template new00 failed 5 of 20",
    )
    status = fleet_status(spec(), FleetStatus(), 3, NEW, "sel", agents(OLD, 10), canary=aborted)
    conditions = {c.type: c for c in status.conditions}
    assert status.phase == "Degraded"
    assert conditions["Progressing"].status == "False"
    assert conditions["Progressing"].reason == "RolloutAborted"
    assert conditions["Stalled"].status == "True"
    assert conditions["Available"].status == "True"  # the old agents serve throughout
    assert status.canary == aborted
