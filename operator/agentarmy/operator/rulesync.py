"""Runtime rules into the router: every fleet's enforced rules, level-based.

The router enforces rate limits, budgets, tool rules and sentinel bounds from the
rules it keeps in its store; this loop keeps those rules equal to what the Policies
say. A namespace whose Policies, Fleets or Agents changed is recomputed and pushed
within ``DEBOUNCE_SECONDS`` (only when its rules differ from the last push), and
every ``full_sync_seconds`` the whole set is pushed again, which replaces whatever
the router holds — so a router that lost its store, or a push that failed, heals
without anything remembered here being trusted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from agentarmy.api.agent import AgentSpec
from agentarmy.api.fleet import FleetSpec
from agentarmy.api.rules import FleetRules
from agentarmy.operator.cache import Cache
from agentarmy.operator.canary import JUDGING_PHASES
from agentarmy.operator.labels import FLEET as FLEET_LABEL
from agentarmy.policy import agent_subject, effective_rules, fleet_subject
from agentarmy.router.client import RouterClient

log = logging.getLogger("agentarmy.operator.rules")

DEBOUNCE_SECONDS = 0.3
HALT_POLL_SECONDS = 1.0
"""How often the router's halts are read (a small in-memory answer), so a Fleet shows
Halted within about a second of the router stopping its dispatch."""


def namespace_rules(cache: Cache, namespace: str) -> list[FleetRules]:
    """The enforced runtime rules of every governed fleet (and standalone Agent) in
    ``namespace``; fleets under no runtime rule are left out."""
    policies = cache.policy_set()
    found: list[FleetRules] = []
    for view in cache.fleets_in(namespace):
        if view.deleting:
            continue
        try:
            spec = FleetSpec.model_validate(view.spec)
        except ValidationError:
            continue  # the Fleet reconciler reports it
        subject = fleet_subject(namespace, view.name, view.labels, spec)
        overrides = spec.template.spec.policyOverrides
        rules = effective_rules(policies, namespace, subject.label_sets, overrides).enforced
        judged = canary_under_judgement(view.status)
        if rules.binds_at_runtime or judged:
            found.append(rules.to_wire(view.name).model_copy(update={"canaryTemplateHash": judged}))
    for agent in cache.agents_in(namespace):
        if FLEET_LABEL in agent.labels or agent.deleting:
            continue  # a Fleet's Agents are governed as their fleet
        try:
            agent_spec = AgentSpec.model_validate(agent.spec)
        except ValidationError:
            continue
        subject = agent_subject(namespace, agent.name, agent.labels, agent_spec)
        overrides = agent_spec.policyOverrides
        rules = effective_rules(policies, namespace, subject.label_sets, overrides).enforced
        if rules.binds_at_runtime:
            found.append(rules.to_wire(agent.name))
    return sorted(found, key=lambda r: r.fleet)


def canary_under_judgement(status: Mapping[str, Any]) -> str | None:
    """The template hash a Fleet's canary is judging right now, if any."""
    canary = status.get("canary") or {}
    if canary.get("phase") in JUDGING_PHASES and canary.get("templateHash"):
        return str(canary["templateHash"])
    return None


def _digest(rules: list[FleetRules]) -> str:
    raw = "\n".join(r.model_dump_json() for r in rules)
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


class RulesSync:
    def __init__(
        self,
        cache: Cache,
        client: RouterClient,
        full_sync_seconds: float,
        halts_changed: Callable[[set[tuple[str, str]]], None] = lambda keys: None,
    ) -> None:
        self.cache = cache
        self.halts_changed = halts_changed
        self.client = client
        self.full_sync_seconds = full_sync_seconds
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._pushed: dict[str, str] = {}
        """namespace -> digest of the rules the router acknowledged last."""

    def mark(self, namespace: str) -> None:
        """Something that may change ``namespace``'s rules changed (a handler calls this)."""
        self._dirty.add(namespace)
        self._wake.set()

    async def run(self) -> None:
        await asyncio.gather(self._push_forever(), self._watch_halts())

    async def _watch_halts(self) -> None:
        while True:
            try:
                await self.read_halts()
            except Exception as err:  # the router may be down; Halted stays as last read
                log.debug("could not read halts from the router: %s", err)
            await asyncio.sleep(HALT_POLL_SECONDS)

    async def read_halts(self) -> None:
        """Copy the router's halts into the cache; queue the Fleets whose halt changed."""
        halts = {(h.namespace, h.fleet): h for h in (await self.client.halts()).halts}
        before = self.cache.halts
        changed = {k for k in before.keys() | halts.keys() if before.get(k) != halts.get(k)}
        self.cache.halts = halts
        if changed:
            self.halts_changed(changed)

    async def _push_forever(self) -> None:
        next_full = 0.0
        while True:
            if time.monotonic() >= next_full:
                try:
                    await self.push_all()
                except Exception as err:  # the router may be down; retry soon
                    log.warning("could not push runtime rules to the router: %s", err)
                    next_full = time.monotonic() + 2.0
                else:
                    next_full = time.monotonic() + self.full_sync_seconds
            try:
                async with asyncio.timeout(max(0.0, next_full - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(DEBOUNCE_SECONDS)  # let a burst of events land
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                await self.push_changed(dirty)
            except Exception as err:
                log.warning("could not push runtime rules to the router: %s", err)
                self._dirty |= dirty
                next_full = min(next_full, time.monotonic() + 2.0)

    async def push_changed(self, namespaces: set[str]) -> int:
        """Push the namespaces whose rules differ from the last push; how many were sent."""
        if not self.cache.bound:
            self._dirty |= namespaces
            return 0
        sent = 0
        for namespace in sorted(namespaces):
            rules = namespace_rules(self.cache, namespace)
            digest = _digest(rules)
            if self._pushed.get(namespace, _digest([])) == digest:
                continue
            await self.client.put_rules(namespace, rules)
            self._pushed[namespace] = digest
            sent += 1
            log.info(
                "runtime rules pushed",
                extra={"namespace": namespace, "governedFleets": len(rules)},
            )
        return sent

    async def push_all(self) -> None:
        """Replace every rule the router holds with what the Policies say now."""
        if not self.cache.bound:
            raise RuntimeError("the operator's cache has not filled yet")
        namespaces = self.cache.namespaces()
        everything = {ns: namespace_rules(self.cache, ns) for ns in sorted(namespaces)}
        everything = {ns: rules for ns, rules in everything.items() if rules}
        await self.client.replace_rules(everything)
        self._pushed = {ns: _digest(rules) for ns, rules in everything.items()}
