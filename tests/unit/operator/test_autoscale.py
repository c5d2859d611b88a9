"""Queue-depth autoscaling: up at once, down only after a stable window."""

from __future__ import annotations

from agentarmy.api.fleet import Autoscaling
from agentarmy.operator.autoscale import Recommendations, manages, wanted

POLICY = Autoscaling(
    minReplicas=1, maxReplicas=10, targetQueueDepthPerAgent=5, scaleDownStabilization="60s"
)
KEY = ("ns", "f")


def test_wanted_is_work_over_target_clamped() -> None:
    assert wanted(POLICY, queued=0, running=0) == 1
    assert wanted(POLICY, queued=11, running=0) == 3
    assert wanted(POLICY, queued=40, running=10) == 10
    assert wanted(POLICY, queued=1000, running=0) == 10


def test_scale_up_is_immediate() -> None:
    assert Recommendations().decide(KEY, POLICY, current=2, wish=7, now=0.0) == 7


def test_scale_down_waits_for_a_whole_window_of_lower_wishes() -> None:
    recs = Recommendations()
    assert recs.decide(KEY, POLICY, current=6, wish=6, now=0.0) == 6
    assert recs.decide(KEY, POLICY, current=6, wish=2, now=30.0) == 6
    # After a whole window: the highest wish still inside it (the 6 at t=0 has left).
    assert recs.decide(KEY, POLICY, current=6, wish=1, now=61.0) == 2
    assert recs.decide(KEY, POLICY, current=2, wish=1, now=85.0) == 2
    assert recs.decide(KEY, POLICY, current=2, wish=1, now=95.0) == 1


def test_forget_restarts_the_window() -> None:
    recs = Recommendations()
    recs.decide(KEY, POLICY, current=5, wish=1, now=0.0)
    recs.forget(KEY)
    assert recs.decide(KEY, POLICY, current=5, wish=1, now=100.0) == 5


def test_replicas_zero_is_idle_with_min_zero_and_stopped_otherwise() -> None:
    idle_range = Autoscaling(minReplicas=0, maxReplicas=3)
    assert manages(idle_range, replicas=0)  # scaled to zero: the next task wakes it
    assert manages(idle_range, replicas=2)
    assert not manages(POLICY, replicas=0)  # minReplicas 1: a person stopped the fleet
    assert manages(POLICY, replicas=1)
    assert not manages(idle_range.model_copy(update={"enabled": False}), replicas=0)
    assert not manages(None, replicas=3)


def test_one_task_wakes_a_fleet_at_zero() -> None:
    idle_range = Autoscaling(minReplicas=0, maxReplicas=3, targetQueueDepthPerAgent=10)
    assert wanted(idle_range, queued=0, running=0) == 0
    assert wanted(idle_range, queued=1, running=0) == 1
    assert Recommendations().decide(KEY, idle_range, current=0, wish=1, now=0.0) == 1
