"""The arithmetic of runtime rules: buckets, budget windows, sentinel verdicts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentarmy.api.rules import BudgetRule, FleetRules, RuleLimit, SentinelRule
from agentarmy.router import governance
from agentarmy.router.governance import SLOT_SECONDS, Bucket, FleetWindow, RateLimit


def limit(value: float, policy: str = "ns/p") -> RuleLimit:
    return RuleLimit(value=value, policy=policy)


def test_a_new_bucket_is_full_and_refills_at_the_rate() -> None:
    rate = RateLimit(per_minute=60, burst=10, policy="ns/p")
    bucket, wait = governance.take(None, 10, rate, now=100.0)
    assert wait == 0.0 and bucket == Bucket(0.0, 100.0)
    bucket, wait = governance.take(bucket, 1, rate, now=100.5)
    assert wait == pytest.approx(0.5)  # one token a second; half of one is there
    bucket, wait = governance.take(bucket, 1, rate, now=101.0)
    assert wait == 0.0


def test_a_batch_larger_than_the_burst_can_never_pass() -> None:
    rate = RateLimit(per_minute=600, burst=5, policy="ns/p")
    _, wait = governance.take(None, 6, rate, now=0.0)
    assert math.isinf(wait)


def test_rate_limit_of_rules_defaults_burst_to_the_rate() -> None:
    rules = FleetRules(fleet="f", tasksPerMinute=limit(30))
    rate = RateLimit.of(rules)
    assert rate is not None and rate.burst == 30 and rate.per_minute == 30
    assert RateLimit.of(FleetRules(fleet="f")) is None


@given(
    st.lists(st.tuples(st.floats(0, 5), st.integers(1, 4)), max_size=60),
    st.integers(1, 600),
    st.integers(1, 50),
)
def test_a_bucket_never_grants_more_than_burst_plus_rate_times_time(
    steps: list[tuple[float, int]], per_minute: int, burst: int
) -> None:
    rate = RateLimit(per_minute, burst, "ns/p")
    bucket, now, granted = None, 0.0, 0
    for gap, count in steps:
        now += gap
        after, wait = governance.take(bucket, count, rate, now)
        if wait == 0.0:
            granted += count
        bucket = after
    assert granted <= burst + now * per_minute / 60.0 + 1e-6


def test_budget_windows_are_aligned_so_replicas_agree() -> None:
    budget = BudgetRule(tokens=100, windowSeconds=3600, policy="ns/p")
    assert governance.window_of(budget, 7300.0) == (7200.0, 10800.0)
    a = governance.budget_key("ns", "f", budget, 7200.0)
    b = governance.budget_key("ns", "f", budget, 10799.0)
    c = governance.budget_key("ns", "f", budget, 10800.0)
    assert a == b != c
    assert "/" not in a


def test_the_window_counts_only_recent_attempts() -> None:
    window = FleetWindow(window=20.0)
    for second in range(0, 100):
        window.record(float(second), failed=second >= 90, tokens=10, cost=0.01)
    recent = window.measure(100.0, window=20.0)
    assert recent.attempts == 20 and recent.failures == 10
    assert recent.error_rate == 0.5
    hour = window.measure(100.0, window=20.0)
    assert hour.tokens_per_hour == 1000
    later = window.measure(100.0 + 3700, window=20.0)
    assert later.attempts == 0 and later.tokens_per_hour == 0


@given(st.lists(st.tuples(st.floats(0, 30), st.booleans()), max_size=200), st.floats(5, 600))
def test_running_totals_equal_a_recount(steps: list[tuple[float, bool]], span: float) -> None:
    window, now, seen = FleetWindow(window=span), 0.0, []
    for gap, failed in steps:
        now += gap
        window.record(now, failed, 1, 0.0)
        seen.append((now, failed))
        measured = window.measure(now, span)
        slot = SLOT_SECONDS
        kept = [f for t, f in seen if (t // slot) * slot + slot > now - span]
        assert (measured.attempts, measured.failures) == (len(kept), sum(kept))


def rules(**sentinel: RuleLimit) -> FleetRules:
    return FleetRules(fleet="f", sentinel=SentinelRule(**sentinel))


def test_no_verdict_on_too_few_tasks() -> None:
    measured = governance.Measurement(attempts=5, failures=5, tokens_per_hour=0, cost_per_hour=0)
    bounds = rules(maxErrorRate=limit(0.1), minTasks=limit(10))
    assert governance.judge("ns", "f", bounds, measured, 0.0) is None


def test_a_breach_names_the_bound_the_value_and_the_sample() -> None:
    measured = governance.Measurement(attempts=20, failures=8, tokens_per_hour=0, cost_per_hour=0)
    bounds = rules(maxErrorRate=limit(0.1, "team/guard"), minTasks=limit(10))
    halt = governance.judge("ns", "f", bounds, measured, 5.0)
    assert halt is not None
    assert (halt.rule, halt.policy, halt.measured, halt.bound, halt.sample) == (
        "maxErrorRate",
        "team/guard",
        0.4,
        0.1,
        20,
    )
    assert "team/guard" in halt.message and "40.0%" in halt.message and "8 of 20" in halt.message


def test_a_sample_size_from_another_policy_is_named_too() -> None:
    """Bounds combine field by field: the halt must not credit one Policy alone."""
    measured = governance.Measurement(attempts=4, failures=3, tokens_per_hour=0, cost_per_hour=0)
    bounds = rules(maxErrorRate=limit(0.5, "demo/baseline"), minTasks=limit(4, "demo/guard"))
    halt = governance.judge("ns", "f", bounds, measured, 0.0)
    assert halt is not None and halt.policy == "demo/baseline"
    assert "(minTasks 4 from policy demo/guard)" in halt.message
    same = rules(maxErrorRate=limit(0.5, "demo/guard"), minTasks=limit(4, "demo/guard"))
    assert "minTasks" not in str(governance.judge("ns", "f", same, measured, 0.0))


def test_tokens_and_cost_per_hour_halt() -> None:
    measured = governance.Measurement(
        attempts=1, failures=0, tokens_per_hour=5000, cost_per_hour=2.5
    )
    halt = governance.judge("ns", "f", rules(maxTokensPerHour=limit(4000)), measured, 0.0)
    assert halt is not None and halt.rule == "maxTokensPerHour"
    halt = governance.judge("ns", "f", rules(maxCostPerHour=limit(2)), measured, 0.0)
    assert halt is not None and halt.rule == "maxCostPerHour"


def test_a_halt_is_cleared_only_by_removing_or_loosening_its_bound() -> None:
    measured = governance.Measurement(attempts=20, failures=8, tokens_per_hour=0, cost_per_hour=0)
    halt = governance.judge("ns", "f", rules(maxErrorRate=limit(0.1)), measured, 0.0)
    assert halt is not None
    assert governance.still_breached(halt, rules(maxErrorRate=limit(0.2)))
    assert not governance.still_breached(halt, rules(maxErrorRate=limit(0.5)))
    assert not governance.still_breached(halt, rules())
    assert not governance.still_breached(halt, None)
