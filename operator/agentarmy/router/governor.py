"""The router's side of runtime governance: rate limits and budgets on submit, token
reservations for model calls, and the sentinel that halts a fleet.

Rules and halts are read from memory (loaded from the store at start, kept current by
this replica's own writes and, on NATS, by the watch on other replicas' writes); every
count that a limit depends on is changed in the store under its concurrency control.
The sentinel's windows are in memory: after a restart a fleet's error rate is measured
afresh (a halt itself is stored and survives).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agentarmy.api import wire
from agentarmy.api.rules import BudgetRule, FleetRules, Halt, Resumed, RuleLimit
from agentarmy.logs import log_fields
from agentarmy.policy.effective import judge_tool
from agentarmy.router import governance
from agentarmy.router.errors import ApiError, bad_request
from agentarmy.router.governance import FleetWindow, RateLimit
from agentarmy.router.store.governance import Change, FleetKey, GovernanceState

log = logging.getLogger(__name__)
decision_log = logging.getLogger("agentarmy.router.decisions")

COUNTED_TASKS_REMEMBERED = 100_000
BUDGET_READ_SECONDS = 1.0
"""How long a budget counter read at submit is trusted (reservations always write)."""


def too_many(code: str, message: str, retry_after: float, policy: str, rule: str) -> ApiError:
    seconds = max(1, math.ceil(retry_after)) if math.isfinite(retry_after) else None
    error = ApiError(429, code, message)
    error.policy, error.rule = policy, rule
    if seconds is not None:
        error.headers = [(b"retry-after", str(seconds).encode())]
        error.retry_after = seconds
    return error


def _bound(default: int, rule: RuleLimit | None) -> RuleLimit:
    """The lower of the router's default and a Policy's limit (policy "" for the default)."""
    if rule is not None and rule.value < default:
        return rule
    return RuleLimit.model_construct(value=default, policy="")


def _over_bound(message: str, policy: str, rule: str) -> ApiError:
    if not policy:
        return bad_request(message, "tasks")
    error = bad_request(f"{message}: policy {policy}, rule {rule}", "tasks")
    error.policy, error.rule = policy, rule
    return error


def decide(event: str, namespace: str, fleet: str, **fields: object) -> None:
    """One JSON line per governance decision (same logger as the task decisions)."""
    if decision_log.isEnabledFor(logging.INFO):
        log_fields(
            decision_log, event, {"event": event, "namespace": namespace, "fleet": fleet, **fields}
        )


@dataclass(frozen=True)
class Reservation:
    counters: tuple[str, ...]
    tokens: int


class Governor:
    def __init__(
        self,
        state: GovernanceState,
        clock: Callable[[], float],
        count: Callable[[str, str, str], None],
        on_resumed: Callable[[str, str], None],
    ) -> None:
        self.state = state
        self.clock = clock
        self.count = count
        """(namespace, fleet, decision) -> bump the decisions counter."""
        self.on_resumed = on_resumed
        self.rules: dict[FleetKey, FleetRules] = {}
        self.halts: dict[FleetKey, Halt] = {}
        self.windows: dict[FleetKey, FleetWindow] = {}
        self._counted: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._budget_reads: dict[str, tuple[float, int]] = {}
        self._tool_rules: dict[FleetKey, tuple[FleetRules, wire.ToolRules]] = {}
        state.listener = self._on_change

    async def start(self) -> None:
        await self.state.open()
        self.rules, self.halts = await self.state.load()

    async def stop(self) -> None:
        await self.state.close()

    def halted(self, namespace: str, fleet: str) -> bool:
        return (namespace, fleet) in self.halts

    def under_canary(self, namespace: str, fleet: str, template_hash: str) -> bool:
        """Whether the fleet's canary rollout is judging this template (operator's rules)."""
        rules = self.rules.get((namespace, fleet))
        return (
            bool(template_hash) and rules is not None and rules.canaryTemplateHash == template_hash
        )

    def tool_rules(self, namespace: str, fleet: str) -> wire.ToolRules | None:
        """What a lease of this fleet carries for the agent runtime to judge tool calls."""
        rules = self.rules.get((namespace, fleet))
        if rules is None or (
            not rules.approvalTools and all("*" in entry.globs for entry in rules.allowedTools)
        ):
            return None  # nothing to judge: every tool allowed, none needs a person
        key = (namespace, fleet)
        cached = self._tool_rules.get(key)
        if cached is None or cached[0] is not rules:  # built once per rules, not per claim
            tools = wire.ToolRules(
                allowedTools=rules.allowedTools, approvalTools=rules.approvalTools
            )
            cached = self._tool_rules[key] = (rules, tools)
        return cached[1]

    def approvers(self, namespace: str, fleet: str, tool: str) -> list[str]:
        """The Policies that require a person's approval for a call of ``tool``."""
        rules = self.rules.get((namespace, fleet))
        if rules is None:
            return []
        decision = judge_tool(rules, tool)
        return list(decision.approval_by) if decision.allowed else []

    def approval_terms(self, namespace: str, fleet: str) -> tuple[float, wire.OnRejection]:
        rules = self.rules.get((namespace, fleet))
        if rules is None:
            return DEFAULT_APPROVAL_TIMEOUT, "continue"
        timeout = rules.approvalTimeoutSeconds
        return (timeout.value if timeout else DEFAULT_APPROVAL_TIMEOUT), rules.onRejection

    def refuse_spawn(self, namespace: str, fleet: str, parent: wire.Task, children: int) -> None:
        """A 400 when a parent of this fleet may not start ``children`` more tasks: the tree
        would grow deeper, or the wait wider, than the router's defaults or the fleet's
        Policies allow (naming the Policy and its rule)."""
        rules = self.rules.get((namespace, fleet))
        where = f"fleet {namespace}/{fleet}"
        depth = _bound(wire.MAX_DEPTH, rules.maxTaskDepth if rules else None)
        if parent.depth + 1 > depth.value:
            raise _over_bound(
                f"task {parent.id} is at depth {parent.depth}: {where} allows trees "
                f"{depth.value:g} deep",
                depth.policy,
                "maxTaskDepth",
            )
        wide = _bound(wire.MAX_CHILDREN, rules.maxChildrenPerWait if rules else None)
        if children > wide.value:
            raise _over_bound(
                f"{children} children: {where} allows at most {wide.value:g} per wait",
                wide.policy,
                "maxChildrenPerWait",
            )

    def watches(self, task: wire.Task) -> bool:
        """Does the sentinel of the task's fleet count this change (an attempt ending)?"""
        rules = self.rules.get((task.namespace, task.fleet))
        return (
            rules is not None
            and _has_sentinel(rules)
            and bool(task.attempts and task.attempts[-1].outcome)
        )

    # -- rules from the operator ----------------------------------------------------------

    async def replace_rules(
        self, rules: Mapping[str, Sequence[FleetRules]], namespaces: Sequence[str] | None
    ) -> None:
        await self.state.replace_rules(rules, namespaces)
        scope = set(namespaces) if namespaces is not None else None
        self.rules = {
            key: value
            for key, value in self.rules.items()
            if scope is not None and key[0] not in scope
        }
        for namespace, group in rules.items():
            for fleet_rules in group:
                self.rules[(namespace, fleet_rules.fleet)] = fleet_rules
        for key, halt in list(self.halts.items()):
            if (scope is None or key[0] in scope) and not governance.still_breached(
                halt, self.rules.get(key)
            ):
                await self._resume(
                    key, "policy change", f"the bound {halt.rule} was lifted or loosened"
                )

    def rules_in(self, namespace: str | None) -> dict[str, list[FleetRules]]:
        found: dict[str, list[FleetRules]] = {}
        for (ns, _), rules in sorted(self.rules.items()):
            if namespace is None or ns == namespace:
                found.setdefault(ns, []).append(rules)
        return found

    # -- submissions ----------------------------------------------------------------------

    async def admit(self, requests: Sequence[wire.SubmitTask]) -> None:
        """Refuse (429) a submission that a fleet's budget or rate limit does not allow."""
        for key, count in Counter((r.namespace, r.fleet) for r in requests).items():
            rules = self.rules.get(key)
            if rules is None:
                continue
            for budget in rules.tokenBudgets:
                await self._refuse_if_spent(key, budget)
            limit = RateLimit.of(rules)
            if limit is None:
                continue
            wait = await self.state.take_submissions(key, count, limit, self.clock())
            if wait > 0:
                self.count(*key, "rate-limited")
                decide("rate-limited", *key, tasks=count, policy=limit.policy, retryAfter=wait)
                per = f"{limit.per_minute:g} per minute, burst {limit.burst:g}"
                if math.isinf(wait):
                    what = f"a batch of {count} tasks is larger than the burst ({per})"
                else:
                    what = f"over {per}; retry in {wait:.1f}s"
                raise too_many(
                    "RateLimited",
                    f"fleet {key[0]}/{key[1]} is rate limited by policy {limit.policy}, "
                    f"rule taskRateLimit: {what}",
                    wait,
                    limit.policy,
                    "taskRateLimit",
                )

    async def _refuse_if_spent(self, key: FleetKey, budget: BudgetRule) -> None:
        now = self.clock()
        counter = governance.budget_key(*key, budget, now)
        read = self._budget_reads.get(counter)
        if read is None or now - read[0] > BUDGET_READ_SECONDS:
            read = (now, await self.state.tokens_counted(counter))
            self._budget_reads[counter] = read
        if read[1] < budget.tokens:
            return
        _, resets = governance.window_of(budget, now)
        self.count(*key, "over-budget")
        decide("over-budget", *key, policy=budget.policy, used=read[1], tokens=budget.tokens)
        raise too_many(
            "BudgetExhausted",
            f"fleet {key[0]}/{key[1]} has used its token budget: policy {budget.policy}, rule "
            f"tokenBudget ({read[1]} of {budget.tokens} tokens per {budget.windowSeconds:g}s); "
            f"it resets in {resets - now:.0f}s",
            resets - now,
            budget.policy,
            "tokenBudget",
        )

    # -- model calls ----------------------------------------------------------------------

    async def reserve(self, namespace: str, fleet: str, tokens: int) -> Reservation:
        """Count ``tokens`` against every budget of the fleet before a model call, or refuse
        (429) without counting anything when one budget cannot afford it."""
        rules = self.rules.get((namespace, fleet))
        if rules is None or not rules.tokenBudgets:
            return Reservation((), tokens)
        now = self.clock()
        taken: list[str] = []
        for budget in rules.tokenBudgets:
            counter = governance.budget_key(namespace, fleet, budget, now)
            result = await self.state.count_tokens(counter, tokens, budget.tokens)
            self._budget_reads[counter] = (now, result.used)
            if result.ok:
                taken.append(counter)
                continue
            for done in taken:  # all or nothing
                await self.state.count_tokens(done, -tokens, None)
            _, resets = governance.window_of(budget, now)
            self.count(namespace, fleet, "over-budget")
            decide("over-budget", namespace, fleet, policy=budget.policy, wanted=tokens)
            raise too_many(
                "BudgetExhausted",
                f"a model call of up to {tokens} tokens does not fit the token budget of fleet "
                f"{namespace}/{fleet}: policy {budget.policy}, rule tokenBudget "
                f"({result.used} of {budget.tokens} tokens per {budget.windowSeconds:g}s used); "
                f"it resets in {resets - now:.0f}s",
                resets - now,
                budget.policy,
                "tokenBudget",
            )
        return Reservation(tuple(taken), tokens)

    async def settle(self, namespace: str, fleet: str, reserved: int, used: int) -> None:
        """Correct the counters of a reservation by what the call really used."""
        rules = self.rules.get((namespace, fleet))
        if rules is None or used == reserved:
            return
        now = self.clock()
        for budget in rules.tokenBudgets:
            counter = governance.budget_key(namespace, fleet, budget, now)
            await self.state.count_tokens(counter, used - reserved, None)

    # -- sentinel -------------------------------------------------------------------------

    async def attempt_ended(self, task: wire.Task, foreign: bool = False) -> Halt | None:
        """Count the attempt that just ended; halt the fleet if a bound is now breached.
        ``foreign``: another replica recorded it (its watch may deliver a task twice)."""
        key = (task.namespace, task.fleet)
        rules = self.rules.get(key)
        if rules is None or not _has_sentinel(rules):
            return None  # the usual case: nothing to measure (one dict lookup per result)
        verdict = governance.counts_for_sentinel(task)
        if verdict is None or (foreign and not self._first_count(task)):
            return None
        usage = task.usage if task.phase == "Succeeded" else None
        now = self.clock()
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = FleetWindow(governance.sentinel_window(rules))
        window.record(
            now, verdict[1], usage.totalTokens if usage else 0, usage.cost if usage else 0.0
        )
        if key in self.halts:
            return None
        measured = window.measure(now, governance.sentinel_window(rules))
        halt = governance.judge(*key, rules, measured, now)
        if halt is None:
            return None
        halt = await self.state.halt(halt)
        if key not in self.halts:
            self.halts[key] = halt
            self.count(*key, "halted")
            decide(
                "halted",
                *key,
                rule=halt.rule,
                policy=halt.policy,
                measured=halt.measured,
                bound=halt.bound,
                sample=halt.sample,
                message=halt.message,
            )
            log.warning("fleet %s/%s halted: %s", *key, halt.message)
        return halt

    def _first_count(self, task: wire.Task) -> bool:
        """Each ended attempt counts once, though a replica may hear of it twice."""
        mark = (task.id, task.attempt)
        if mark in self._counted:
            return False
        self._counted[mark] = None
        if len(self._counted) > COUNTED_TASKS_REMEMBERED:
            self._counted.popitem(last=False)
        return True

    async def resume(self, namespace: str, fleet: str, who: str, reason: str) -> Resumed:
        return await self._resume((namespace, fleet), who, reason)

    async def _resume(self, key: FleetKey, who: str, reason: str) -> Resumed:
        halt = await self.state.clear_halt(key)
        self.halts.pop(key, None)
        self.windows.pop(key, None)  # judge afresh: the failures that halted it are history
        now = self.clock()
        if halt is not None:
            self.count(*key, "resumed")
            decide("resumed", *key, resumedBy=who, reason=reason, wasHalted=halt.message)
            log.info("fleet %s/%s resumed by %s: %s", *key, who, reason)
            self.on_resumed(*key)
        return Resumed(namespace=key[0], fleet=key[1], resumedBy=who, resumedAt=now, wasHalted=halt)

    def _on_change(self, change: Change) -> None:
        """Another replica changed rules or a halt (NATS watch)."""
        if change.what == "rules":
            if change.rules is None:
                self.rules.pop(change.key, None)
            else:
                self.rules[change.key] = change.rules
        elif change.halt is None:
            if self.halts.pop(change.key, None) is not None:
                self.windows.pop(change.key, None)
                self.on_resumed(*change.key)
        else:
            self.halts[change.key] = change.halt


DEFAULT_APPROVAL_TIMEOUT = 3600.0


class ApprovalDeadlines:
    """Tasks awaiting approval by deadline, so the reaper times them out without a scan.
    Rebuilt from the store at start; on NATS, other replicas' parks arrive by the watch."""

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}

    def watch(self, task: wire.Task) -> None:
        if task.phase == "AwaitingApproval" and task.deadlineAt is not None:
            self._deadlines[task.id] = task.deadlineAt
        else:
            self._deadlines.pop(task.id, None)

    def forget(self, task_id: str) -> None:
        self._deadlines.pop(task_id, None)

    def due(self, now: float) -> list[str]:
        return [task_id for task_id, deadline in self._deadlines.items() if deadline <= now]

    def __len__(self) -> int:
        return len(self._deadlines)


def _has_sentinel(rules: FleetRules) -> bool:
    bounds = rules.sentinel
    return bool(bounds.maxErrorRate or bounds.maxTokensPerHour or bounds.maxCostPerHour)
