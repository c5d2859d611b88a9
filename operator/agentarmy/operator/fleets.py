"""Fleet reconciler: create and delete Agents to match replicas and template.

The decisions are pure (rollout.py); this module reads the cache, carries
them out, and writes one status patch when something changed. Status writes
are spaced at least STATUS_INTERVAL apart per fleet, so a thousand agents
turning Ready cost a handful of Fleet writes, not a thousand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from agentarmy.api import conditions as c
from agentarmy.api.common import (
    API_VERSION,
    LabelSelector,
    describe_error,
    set_condition,
    transitioned,
)
from agentarmy.api.fleet import FleetSpec, FleetStatus
from agentarmy.operator import compliance, labels, rollout
from agentarmy.operator.cache import Cache, FleetView
from agentarmy.operator.decisions import announce
from agentarmy.operator.egress import EgressSync
from agentarmy.operator.expectations import Expectations
from agentarmy.operator.kube import Kube, involved
from agentarmy.operator.netpol import RouterPeer
from agentarmy.operator.workqueue import Key
from agentarmy.policy import RuntimeRules, effective_rules, fleet_subject

log = logging.getLogger("agentarmy.operator.fleet")

STATUS_INTERVAL = 1.0
WRITE_CONCURRENCY = 32


def template_hash(spec: FleetSpec) -> str:
    return labels.stable_hash(spec.template.model_dump(mode="json", exclude_none=True))


def selector_string(fleet: str, spec: FleetSpec) -> str:
    extra = spec.selector or LabelSelector()
    merged = extra.model_copy(update={"matchLabels": {**extra.matchLabels, labels.FLEET: fleet}})
    return merged.to_string()


def agent_body(fleet: FleetView, spec: FleetSpec, name: str, hash_: str) -> dict[str, Any]:
    template = spec.template
    return {
        "apiVersion": API_VERSION,
        "kind": "Agent",
        "metadata": {
            "name": name,
            "namespace": fleet.namespace,
            "labels": {
                **template.metadata.labels,
                labels.FLEET: fleet.name,
                labels.TEMPLATE_HASH: hash_,
                labels.MANAGED_BY: labels.MANAGER,
            },
            "annotations": dict(template.metadata.annotations),
            "ownerReferences": [
                labels.owner_reference(API_VERSION, "Fleet", fleet.name, fleet.uid)
            ],
        },
        "spec": template.spec.model_dump(mode="json", exclude_none=True),
    }


class FleetReconciler:
    def __init__(self, cache: Cache, kube: Kube, router: RouterPeer) -> None:
        """``router``: where agents reach the router, for the egress NetworkPolicy."""
        self.cache = cache
        self.kube = kube
        self.egress = EgressSync(kube, router)
        self.expectations = Expectations()
        self._last_status_write: dict[Key, float] = {}
        self._writes = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def reconcile(self, key: Key) -> float | None:
        namespace, name = key
        fleet = self.cache.fleet(namespace, name)
        if fleet is None or fleet.deleting:
            self._last_status_write.pop(key, None)
            self.egress.forget(key)
            # Owner references let the garbage collector remove the Agents and the
            # egress NetworkPolicy.
            return None
        try:
            spec = FleetSpec.model_validate(fleet.spec)
        except ValidationError as err:
            await self._invalid(fleet, err)
            return None

        hash_ = template_hash(spec)
        now = datetime.now(UTC)
        agents = [a for a in self.cache.agents_of(namespace, name) if a.owner_uid == fleet.uid]
        live = [a for a in agents if not a.deleting]
        members = [
            rollout.Member(
                a.name,
                a.template_hash,
                a.ready,
                rollout.is_available(a.ready_since, spec.minReadySeconds, now),
                a.created,
            )
            for a in live
        ]
        seen = {a.name for a in agents}
        # Agents we created that the watch has not delivered yet count as unready members.
        expected = self.expectations.pending(key, seen)
        members += [rollout.Member(n, hash_, False, False, "9999") for n in sorted(expected)]

        policy, rules = self.check_policy(fleet, spec)
        # Before any new Agent: its Pod must not start without the egress it is allowed.
        resync = await self.egress.sync(fleet, rules.egress)
        decision = rollout.plan(
            name,
            rollout.within_policy(spec, len(members), policy.replica_limit),
            hash_,
            members,
            taken_names=seen | expected,
        )
        if policy.blocked:
            decision = rollout.without_new_agents(decision, spec.replicas, members)
        await self._apply(fleet, spec, hash_, decision)

        status = rollout.fleet_status(
            spec,
            FleetStatus.model_validate(fleet.status or {}),
            fleet.generation,
            hash_,
            selector_string(name, spec),
            [m for m in members if m.name not in decision.delete],
            policy=policy,
            halt=self.cache.halts.get(key),
        )
        requeue = await self._write_status(key, fleet, status, policy)
        if spec.minReadySeconds and any(m.ready and not m.available for m in members):
            requeue = min(requeue or spec.minReadySeconds, float(spec.minReadySeconds))
        if resync is not None:
            requeue = min(requeue or resync, resync)
        return requeue

    def check_policy(
        self, fleet: FleetView, spec: FleetSpec
    ) -> tuple[compliance.Compliance, RuntimeRules]:
        """The verdict on the Fleet and the runtime rules its enforce-mode Policies set."""
        subject = fleet_subject(fleet.namespace, fleet.name, fleet.labels, spec)
        policies = self.cache.policy_set()
        rules = effective_rules(policies, fleet.namespace, subject.label_sets).enforced
        limit = rules.max_replicas
        verdict = compliance.Compliance(
            policies.evaluate(subject),
            subject,
            compliance.FLEET_CONSEQUENCE,
            replica_limit=None if limit is None else int(limit.value),
        )
        return verdict, rules

    async def _apply(
        self, fleet: FleetView, spec: FleetSpec, hash_: str, decision: rollout.Plan
    ) -> None:
        key = (fleet.namespace, fleet.name)
        if decision.create:
            self.expectations.expect(key, decision.create)
            await self._bounded(
                self.kube.create(agent_body(fleet, spec, n, hash_)) for n in decision.create
            )
        if decision.delete:
            await self._bounded(
                self.kube.delete("Agent", fleet.namespace, n) for n in decision.delete
            )
        if decision.create or decision.delete:
            log.info(
                "scaled fleet",
                extra={
                    "namespace": fleet.namespace,
                    "fleet": fleet.name,
                    "agentsCreated": len(decision.create),
                    "agentsDeleted": len(decision.delete),
                },
            )
            parts = []
            if decision.create:
                parts.append(f"created {len(decision.create)} agent(s)")
            if decision.delete:
                parts.append(f"deleted {len(decision.delete)} agent(s)")
            reason = (
                "ScaledUp"
                if decision.create and not decision.delete
                else ("ScaledDown" if not decision.create else "RollingUpdate")
            )
            await self.kube.event(
                involved("Fleet", fleet.namespace, fleet.name, fleet.uid),
                "Normal",
                reason,
                "; ".join(parts),
            )

    async def _bounded(self, calls: Any) -> None:
        async def one(call: Any) -> Any:
            async with self._writes:
                return await call

        results = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _write_status(
        self, key: Key, fleet: FleetView, status: FleetStatus, policy: compliance.Compliance
    ) -> float | None:
        new = status.model_dump(mode="json", exclude_none=True)
        current = FleetStatus.model_validate(fleet.status or {})
        old = current.model_dump(mode="json", exclude_none=True)
        if new == old:
            return None
        wait = self._last_status_write.get(key, 0.0) + STATUS_INTERVAL - time.monotonic()
        if wait > 0:
            return wait  # batch: look again when the interval has passed
        await self.kube.patch_status(
            "Fleet", fleet.namespace, fleet.name, new, fleet.resource_version
        )
        self._last_status_write[key] = time.monotonic()
        who = involved("Fleet", fleet.namespace, fleet.name, fleet.uid)
        condition = compliance.changed(current.conditions, status.conditions)
        if condition is not None:
            await announce(self.kube, who, condition, policy)
        halted = transitioned(current.conditions, status.conditions, c.HALTED)
        if halted is not None:
            warning = halted.status == "True"
            await self.kube.event(
                who,
                "Warning" if warning else "Normal",
                c.HALTED if warning else c.RESUMED,
                halted.message if warning else "the sentinel no longer halts dispatch",
            )
        return None

    async def _invalid(self, fleet: FleetView, err: ValidationError) -> None:
        message = describe_error(err)
        current = FleetStatus.model_validate(fleet.status or {})
        conditions = set_condition(
            current.conditions, c.PROGRESSING, "False", c.INVALID_SPEC, message, fleet.generation
        )
        status = current.model_copy(
            update={
                "conditions": conditions,
                "phase": "Degraded",
                "observedGeneration": fleet.generation,
            }
        )
        await self.kube.patch_status(
            "Fleet",
            fleet.namespace,
            fleet.name,
            status.model_dump(mode="json", exclude_none=True),
            fleet.resource_version,
        )


__all__ = ["FleetReconciler", "template_hash"]
