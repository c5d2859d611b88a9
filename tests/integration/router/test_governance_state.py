"""Runtime-rule state on each real backend: rules and halts survive a restart, a halt is
recorded once, and a rate limit or budget holds across replicas (NATS: two handles on one
JetStream act as two routers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agentarmy.api.rules import FleetRules, Halt, RuleLimit
from agentarmy.router.governance import RateLimit
from agentarmy.router.store.base import TaskStore
from agentarmy.router.store.governance import GovernanceState
from tests.integration.router.conftest import T0

OpenStore = Callable[..., Awaitable[TaskStore]]


async def governed(open_store: OpenStore) -> GovernanceState:
    store = await open_store()
    await store.governance.open()
    return store.governance


def fleet_rules(fleet: str, per_minute: float = 60) -> FleetRules:
    return FleetRules(
        fleet=fleet, policies=["ns/p"], tasksPerMinute=RuleLimit(value=per_minute, policy="ns/p")
    )


def halt_of(fleet: str, measured: float) -> Halt:
    return Halt(
        namespace="ns",
        fleet=fleet,
        rule="maxErrorRate",
        policy="ns/p",
        measured=measured,
        bound=0.1,
        sample=20,
        message="halted",
        haltedAt=T0,
    )


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    assert check()


async def test_rules_are_replaced_per_namespace_and_survive_a_restart(
    store_factory: tuple[str, OpenStore],
) -> None:
    _, open_store = store_factory
    state = await governed(open_store)
    await state.replace_rules(
        {"a": [fleet_rules("f1"), fleet_rules("f2")], "b": [fleet_rules("g")]}, None
    )
    await state.replace_rules({"a": [fleet_rules("f2", 5)]}, ["a"])  # f1 loses its rules
    rules, _ = await state.load()
    assert set(rules) == {("a", "f2"), ("b", "g")}
    assert rules[("a", "f2")].tasksPerMinute == RuleLimit(value=5, policy="ns/p")

    again = await governed(open_store)  # a restart (SQLite) or another replica (NATS)
    rules, _ = await again.load()
    assert set(rules) == {("a", "f2"), ("b", "g")}
    await state.replace_rules({}, None)
    await eventually(lambda: True)
    rules, _ = await (await governed(open_store)).load()
    assert rules == {}


async def test_a_fleet_is_halted_once_and_cleared_once(
    store_factory: tuple[str, OpenStore],
) -> None:
    _, open_store = store_factory
    first, second = await governed(open_store), await governed(open_store)
    winner = await first.halt(halt_of("f", 0.5))
    loser = await second.halt(halt_of("f", 0.9))
    assert winner.measured == loser.measured == 0.5  # the second sees the first's halt
    _, halts = await (await governed(open_store)).load()
    assert halts[("ns", "f")].measured == 0.5
    cleared = await second.clear_halt(("ns", "f"))
    assert cleared is not None and cleared.measured == 0.5
    assert await first.clear_halt(("ns", "f")) is None
    _, halts = await (await governed(open_store)).load()
    assert halts == {}


async def test_the_bucket_grants_exactly_the_burst_across_replicas(
    store_factory: tuple[str, OpenStore],
) -> None:
    kind, open_store = store_factory
    replicas = [await governed(open_store) for _ in range(3 if kind == "nats" else 1)]
    limit = RateLimit(per_minute=0.001, burst=50, policy="ns/p")  # no refill during the test
    waits = await asyncio.gather(
        *(
            replicas[i % len(replicas)].take_submissions(("ns", "f"), 1, limit, T0)
            for i in range(80)
        )
    )
    assert sum(1 for wait in waits if wait == 0.0) == 50
    assert all(wait > 0 for wait in waits if wait != 0.0)


async def test_budget_counts_hold_their_limit_across_replicas(
    store_factory: tuple[str, OpenStore],
) -> None:
    kind, open_store = store_factory
    replicas = [await governed(open_store) for _ in range(3 if kind == "nats" else 1)]
    counts = await asyncio.gather(
        *(replicas[i % len(replicas)].count_tokens("ns.f.p.3600.0", 100, 1000) for i in range(25))
    )
    assert sum(1 for c in counts if c.ok) == 10
    assert await replicas[0].tokens_counted("ns.f.p.3600.0") == 1000
    settled = await replicas[-1].count_tokens("ns.f.p.3600.0", -300, None)
    assert settled.ok and settled.used == 700
    assert await replicas[0].tokens_counted("ns.f.p.3600.0") == 700
