"""Queue-depth autoscaling: up at once, down only after a stable window."""

from __future__ import annotations

from agentarmy.api.fleet import Autoscaling
from agentarmy.operator.autoscale import Recommendations, wanted

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
