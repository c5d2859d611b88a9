"""Runtime rules as arithmetic, with no I/O: token buckets, budget windows and the
sentinel's measurement windows.

The stores keep the state (a bucket, a budget counter, a halt) under their own
concurrency control — one SQLite writer, compare-and-set in NATS KV — and call these
functions inside that control, so every router replica on one NATS applies the same
rule to the same numbers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from agentarmy.api.rules import BudgetRule, FleetRules, Halt, RuleLimit, SentinelRule
from agentarmy.api.wire import COUNTED_OUTCOMES, Task

DEFAULT_MIN_TASKS = 20
DEFAULT_SENTINEL_WINDOW = 300.0
HOUR = 3600.0


# -- rate limit: a token bucket per fleet -------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """Tokens in a fleet's submission bucket at time ``at``."""

    tokens: float
    at: float


@dataclass(frozen=True)
class RateLimit:
    per_minute: float
    burst: float
    policy: str

    @classmethod
    def of(cls, rules: FleetRules) -> RateLimit | None:
        if rules.tasksPerMinute is None:
            return None
        burst = rules.burst or rules.tasksPerMinute
        return cls(rules.tasksPerMinute.value, max(1.0, burst.value), burst.policy)


def refill(bucket: Bucket | None, limit: RateLimit, now: float) -> Bucket:
    """The bucket as of ``now``; a fleet never seen starts full."""
    if bucket is None:
        return Bucket(limit.burst, now)
    elapsed = max(0.0, now - bucket.at)
    return Bucket(min(limit.burst, bucket.tokens + elapsed * limit.per_minute / 60.0), now)


def take(bucket: Bucket | None, count: int, limit: RateLimit, now: float) -> tuple[Bucket, float]:
    """Take ``count`` tokens: (the bucket after, 0.0) when granted, else (the refilled bucket,
    seconds until ``count`` tokens are there — ``inf`` when ``count`` exceeds the burst)."""
    full = refill(bucket, limit, now)
    if full.tokens + 1e-9 >= count:
        return Bucket(full.tokens - count, now), 0.0
    if count > limit.burst:
        return full, math.inf
    return full, (count - full.tokens) * 60.0 / limit.per_minute


# -- token budget: a counter per fleet, Policy and window ------------------------------------------


def window_of(budget: BudgetRule, now: float) -> tuple[float, float]:
    """The budget window containing ``now``: (start, end). Windows are aligned to the
    epoch, so every replica agrees on them and a reset is a new counter, not a sweep."""
    start = math.floor(now / budget.windowSeconds) * budget.windowSeconds
    return start, start + budget.windowSeconds


def budget_key(namespace: str, fleet: str, budget: BudgetRule, now: float) -> str:
    start, _ = window_of(budget, now)
    policy = budget.policy.replace("/", ".")
    return f"{namespace}.{fleet}.{policy}.{int(budget.windowSeconds)}.{int(start)}"


# -- sentinel: what a fleet did recently ----------------------------------------------------------


SLOT_SECONDS = 5.0


@dataclass
class _Slot:
    start: float
    attempts: int = 0
    failures: int = 0
    tokens: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class Measurement:
    attempts: int
    failures: int
    tokens_per_hour: int
    cost_per_hour: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0


@dataclass
class _Sums:
    """Slots of one span with their running totals: adding and forgetting are O(1), so a
    fleet's verdict after every result costs the same whatever its traffic."""

    span: float
    slots: deque[_Slot] = field(default_factory=deque)
    attempts: int = 0
    failures: int = 0
    tokens: int = 0
    cost: float = 0.0

    def add(self, start: float, failed: bool, tokens: int, cost: float) -> None:
        if not self.slots or self.slots[-1].start < start:
            self.slots.append(_Slot(start))
        slot = self.slots[-1]  # a late report counts in the newest slot
        slot.attempts += 1
        slot.failures += int(failed)
        slot.tokens += tokens
        slot.cost += cost
        self.attempts += 1
        self.failures += int(failed)
        self.tokens += tokens
        self.cost += cost

    def forget_before(self, now: float) -> None:
        cutoff = now - self.span
        while self.slots and self.slots[0].start + SLOT_SECONDS <= cutoff:
            old = self.slots.popleft()
            self.attempts -= old.attempts
            self.failures -= old.failures
            self.tokens -= old.tokens
            self.cost -= old.cost


@dataclass
class FleetWindow:
    """A fleet's ended attempts in 5-s slots: over its sentinel window for the error rate,
    over the last hour for tokens and cost."""

    window: float = DEFAULT_SENTINEL_WINDOW
    recent: _Sums = field(init=False)
    hour: _Sums = field(init=False)

    def __post_init__(self) -> None:
        self.recent, self.hour = _Sums(self.window), _Sums(HOUR)

    def record(self, now: float, failed: bool, tokens: int, cost: float) -> None:
        start = math.floor(now / SLOT_SECONDS) * SLOT_SECONDS
        self.recent.add(start, failed, 0, 0.0)
        self.hour.add(start, False, tokens, cost)

    def measure(self, now: float, window: float) -> Measurement:
        if window != self.window:  # the Policy changed the window: count afresh from now
            self.window, self.recent = window, _Sums(window)
        self.recent.forget_before(now)
        self.hour.forget_before(now)
        return Measurement(
            self.recent.attempts, self.recent.failures, self.hour.tokens, max(0.0, self.hour.cost)
        )


def counts_for_sentinel(task: Task) -> tuple[bool, bool] | None:
    """(counts, failed) for the attempt that just ended; None when it says nothing about the
    fleet's health (released by a draining agent, cancelled by a person)."""
    last = task.attempts[-1] if task.attempts else None
    if last is None or last.outcome is None:
        return None
    if last.outcome == "Succeeded":
        return True, False
    if last.outcome in COUNTED_OUTCOMES:
        return True, True
    return None


def _sample_from_elsewhere(bounds: SentinelRule) -> str:
    """Each bound is the strictest of the fleet's Policies on its own: when the sample
    size comes from another Policy than the rate, say so, or the halt names one Policy
    for a verdict it did not reach alone."""
    if bounds.minTasks is None or bounds.maxErrorRate is None:
        return ""
    if bounds.minTasks.policy == bounds.maxErrorRate.policy:
        return ""
    return f" (minTasks {bounds.minTasks.value:.0f} from policy {bounds.minTasks.policy})"


def judge(
    namespace: str, fleet: str, rules: FleetRules, measured: Measurement, now: float
) -> Halt | None:
    """The first sentinel bound ``measured`` breaches, as a Halt; None when within bounds."""
    bounds = rules.sentinel
    if bounds.maxErrorRate is not None:
        needed = int(bounds.minTasks.value) if bounds.minTasks else DEFAULT_MIN_TASKS
        window = bounds.windowSeconds.value if bounds.windowSeconds else DEFAULT_SENTINEL_WINDOW
        rate = measured.error_rate
        if measured.attempts >= needed and rate > bounds.maxErrorRate.value:
            return _halt(
                namespace,
                fleet,
                "maxErrorRate",
                bounds.maxErrorRate,
                rate,
                measured.attempts,
                now,
                f"error rate {rate:.1%} over the last {window:.0f}s "
                f"({measured.failures} of {measured.attempts} attempts) is above "
                f"{bounds.maxErrorRate.value:.1%}{_sample_from_elsewhere(bounds)}",
            )
    if bounds.maxTokensPerHour is not None:
        used = measured.tokens_per_hour
        if used > bounds.maxTokensPerHour.value:
            return _halt(
                namespace,
                fleet,
                "maxTokensPerHour",
                bounds.maxTokensPerHour,
                used,
                measured.attempts,
                now,
                f"{used} tokens in the last hour is above {bounds.maxTokensPerHour.value:.0f}",
            )
    if bounds.maxCostPerHour is not None:
        cost = measured.cost_per_hour
        if cost > bounds.maxCostPerHour.value:
            return _halt(
                namespace,
                fleet,
                "maxCostPerHour",
                bounds.maxCostPerHour,
                cost,
                measured.attempts,
                now,
                f"cost {cost:.4f} in the last hour is above {bounds.maxCostPerHour.value:g}",
            )
    return None


def sentinel_window(rules: FleetRules) -> float:
    bound = rules.sentinel.windowSeconds
    return bound.value if bound is not None else DEFAULT_SENTINEL_WINDOW


def still_breached(halt: Halt, rules: FleetRules | None) -> bool:
    """Does the bound that halted the fleet still exist at least as strict? A Policy edit
    that removes or loosens it clears the cause (the fleet resumes); anything else keeps
    the fleet halted until a person resumes it."""
    if rules is None:
        return False
    bound: RuleLimit | None = getattr(rules.sentinel, halt.rule, None)
    return bound is not None and halt.measured > bound.value


def _halt(
    namespace: str,
    fleet: str,
    rule: str,
    bound: RuleLimit,
    measured: float,
    sample: int,
    now: float,
    what: str,
) -> Halt:
    return Halt(
        namespace=namespace,
        fleet=fleet,
        rule=rule,
        policy=bound.policy,
        measured=round(measured, 6),
        bound=bound.value,
        sample=sample,
        message=f"halted by policy {bound.policy}, sentinel.{rule}: {what}",
        haltedAt=now,
    )
