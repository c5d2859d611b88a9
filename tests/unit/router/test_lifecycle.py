"""The task state rules as pure functions (both stores apply exactly these)."""

from __future__ import annotations

import pytest

from agentarmy.api import wire
from agentarmy.router import lifecycle
from agentarmy.router.lifecycle import RetryPolicy

NOW = 1_000.0
POLICY = RetryPolicy(base_seconds=2.0, cap_seconds=10.0)


def queued(**fields: object) -> wire.Task:
    request = wire.SubmitTask(fleet="f", capability="echo", **fields)  # type: ignore[arg-type]
    return lifecycle.new_task(request, "t-1", seq=1, now=NOW)


def running(task: wire.Task | None = None, holder: str = "ns/a1") -> wire.Task:
    return lifecycle.start_attempt(task or queued(), holder, "hash", NOW, lease_seconds=30)


@pytest.mark.parametrize(
    ("failures", "low", "high"), [(1, 1.6, 2.4), (2, 3.2, 4.8), (3, 6.4, 9.6), (9, 8, 12)]
)
def test_backoff_doubles_up_to_the_cap(failures: int, low: float, high: float) -> None:
    assert low <= POLICY.delay("t-1", failures) <= high


def test_fencing_token_is_task_attempt_and_holder() -> None:
    task = running()
    assert lifecycle.fence_problem(task, wire.LeaseRef(taskId="t-1", attempt=1), "ns/a1") is None
    assert "stale" in (
        lifecycle.fence_problem(task, wire.LeaseRef(taskId="t-1", attempt=2), "ns/a1") or ""
    )
    assert "held by" in (
        lifecycle.fence_problem(task, wire.LeaseRef(taskId="t-1", attempt=1), "ns/a2") or ""
    )
    ended = lifecycle.succeed(task, {}, None, NOW + 1)
    assert "Succeeded" in (
        lifecycle.fence_problem(ended, wire.LeaseRef(taskId="t-1", attempt=1), "ns/a1") or ""
    )


def test_lease_and_deadline_come_from_settings_and_timeout() -> None:
    task = running(queued(timeout="90s"))
    assert task.leaseExpiresAt == NOW + 30 and task.deadlineAt == NOW + 90
    assert lifecycle.expire(task, NOW + 29, POLICY) is None
    expired = lifecycle.expire(task, NOW + 31, POLICY)
    assert expired is not None and expired.attempts[-1].outcome == "LeaseExpired"
    extended = lifecycle.extend_lease(task, NOW + 80, 30)
    timed_out = lifecycle.expire(extended, NOW + 91, POLICY)
    assert timed_out is not None and timed_out.attempts[-1].outcome == "TimedOut"


def test_released_attempts_do_not_count() -> None:
    task = running(queued(maxAttempts=1))
    released = lifecycle.fail(task, "Released", "draining", NOW, POLICY)
    assert released.phase == "Queued" and released.availableAt == NOW
    assert lifecycle.counted_failures(released) == 0
    again = lifecycle.fail(running(released), "Failed", "boom", NOW, POLICY)
    assert again.phase == "DeadLettered" and "attempt 2: Failed: boom" in again.error


def test_cancel_only_unfinished_tasks() -> None:
    cancelled = lifecycle.cancel(running(), NOW)
    assert cancelled is not None and cancelled.phase == "Cancelled"
    assert cancelled.attempts[-1].outcome == "Cancelled"
    assert lifecycle.cancel(cancelled, NOW) is None


def test_usage_is_kept_even_for_failed_attempts() -> None:
    usage = wire.TokenUsage(promptTokens=3, completionTokens=4, totalTokens=7)
    report = wire.TaskResult(taskId="t-1", attempt=1, outcome="failed", error="x", usage=usage)
    updated, ack = lifecycle.apply_result(running(), report, "ns/a1", NOW, POLICY)
    assert ack.status == "recorded" and updated is not None and updated.usage == usage


def test_renew_lease_extends_only_a_held_lease() -> None:
    task = running()
    ref = wire.LeaseRef(taskId="t-1", attempt=1)
    extended, status = lifecycle.renew_lease(task, ref, "ns/a1", NOW + 20, 30)
    assert extended is not None and extended.leaseExpiresAt == NOW + 50
    assert extended.deadlineAt == task.deadlineAt and task.leaseExpiresAt == NOW + 30
    assert status == wire.LeaseStatus(
        taskId="t-1", attempt=1, status="extended", leaseExpiresAt=NOW + 50
    )
    foreign, status = lifecycle.renew_lease(task, ref, "ns/a2", NOW + 20, 30)
    assert foreign is None and status.status == "stale" and "held by ns/a1" in status.message
    stale_ref = wire.LeaseRef(taskId="t-1", attempt=2)
    stale, status = lifecycle.renew_lease(task, stale_ref, "ns/a1", NOW + 20, 30)
    assert stale is None and (status.status, status.attempt) == ("stale", 2)
    assert status.leaseExpiresAt is None


def test_renew_lease_of_a_cancelled_or_unknown_task() -> None:
    cancelled = lifecycle.cancel(running(), NOW)
    assert cancelled is not None
    ref = wire.LeaseRef(taskId="t-1", attempt=1)
    updated, status = lifecycle.renew_lease(cancelled, ref, "ns/a1", NOW, 30)
    assert updated is None and status.status == "cancelled" and "cancelled" in status.message
    updated, status = lifecycle.renew_lease(None, ref, "ns/a1", NOW, 30)
    assert updated is None
    assert status == wire.LeaseStatus(
        taskId="t-1", attempt=1, status="stale", message="no such task"
    )


def test_result_for_an_unknown_task_is_stale() -> None:
    report = wire.TaskResult(taskId="t-9", attempt=3, outcome="succeeded")
    updated, ack = lifecycle.apply_result(None, report, "ns/a1", NOW, POLICY)
    assert updated is None
    assert ack == wire.ResultAck(
        taskId="t-9", attempt=3, status="stale", message="task t-9 does not exist"
    )


@pytest.mark.parametrize(
    ("mode", "phases", "ends"),
    [
        ("all", {"Succeeded": 3}, True),
        ("all", {"Succeeded": 2, "Running": 1}, False),
        ("all", {"Succeeded": 2, "Failed": 1}, True),
        ("all", {"Failed": 1, "Queued": 2}, False),
        ("failFast", {"Failed": 1, "Queued": 2}, True),
        ("failFast", {"Cancelled": 1, "Running": 1}, True),
        ("failFast", {"Succeeded": 1, "Running": 2}, False),
        ("all", {"Succeeded": 3, "Running": 0}, True),  # counters that went back to zero
    ],
)
def test_join_ends_when_every_child_ended_or_failfast_saw_a_failure(
    mode: wire.JoinMode, phases: dict[str, int], ends: bool
) -> None:
    assert lifecycle.join_ends(mode, phases) is ends
