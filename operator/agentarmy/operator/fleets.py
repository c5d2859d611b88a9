"""Fleet reconciler: create and delete Agents to match replicas and template.

The decisions are pure (rollout.py); this module reads the cache, carries
them out, and writes one status patch when something changed. Status writes
are spaced at least STATUS_INTERVAL apart per fleet, so a thousand agents
turning Ready cost a handful of Fleet writes, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from agentarmy.operator import canary, compliance, labels, metrics, rollout
from agentarmy.operator.cache import AgentView, Cache, FleetView
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
    agent_labels = {
        **template.metadata.labels,
        labels.FLEET: fleet.name,
        labels.TEMPLATE_HASH: hash_,
        labels.MANAGED_BY: labels.MANAGER,
    }
    return _owned_agent(
        fleet,
        name,
        agent_labels,
        dict(template.metadata.annotations),
        template.spec.model_dump(mode="json", exclude_none=True),
    )


def restored_agent_body(fleet: FleetView, source: AgentView, name: str) -> dict[str, Any]:
    """An Agent on an older template, copied from one still running it (a canary rolling
    back recreates the Agents it had replaced)."""
    return _owned_agent(
        fleet, name, dict(source.labels), dict(source.annotations), dict(source.spec)
    )


def _owned_agent(
    fleet: FleetView,
    name: str,
    agent_labels: dict[str, str],
    annotations: dict[str, str],
    spec: dict[str, Any],
) -> dict[str, Any]:
    """An Agent the Fleet owns (deleting the Fleet deletes it)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Agent",
        "metadata": {
            "name": name,
            "namespace": fleet.namespace,
            "labels": agent_labels,
            "annotations": annotations,
            "ownerReferences": [
                labels.owner_reference(API_VERSION, "Fleet", fleet.name, fleet.uid)
            ],
        },
        "spec": spec,
    }


def _expected_hash(fleet: str, agent: str, hash_: str, status: FleetStatus) -> str:
    """The template of an Agent we created that the watch has not shown yet: its name
    carries the hash's first characters (rollout.agent_name)."""
    if status.canary is not None:
        stable = status.canary.stableTemplateHash
        if stable and agent.startswith(f"{fleet}-{stable[:5]}-"):
            return stable
    return hash_


def _forget_gauge(namespace: str, fleet: str) -> None:
    with contextlib.suppress(KeyError):
        metrics.ROLLOUT_ABORTED.remove(namespace, fleet)


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
            _forget_gauge(namespace, name)
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
        current = FleetStatus.model_validate(fleet.status or {})
        # Agents we created that the watch has not delivered yet count as unready members.
        expected = self.expectations.pending(key, seen)
        members += [
            rollout.Member(n, _expected_hash(name, n, hash_, current), False, False, "9999")
            for n in sorted(expected)
        ]

        policy, rules = self.check_policy(fleet, spec)
        # Before any new Agent: its Pod must not start without the egress it is allowed.
        resync = await self.egress.sync(fleet, rules.egress)
        limited = rollout.within_policy(spec, len(members), policy.replica_limit)
        taken = seen | expected
        progress = self._canary(fleet, limited, hash_, current, members, now)
        if progress is not None and progress.targets is not None:
            decision = rollout.plan_targets(name, limited, hash_, progress.targets, members, taken)
        else:
            decision = rollout.plan(name, limited, hash_, members, taken_names=taken)
        if policy.blocked:
            decision = rollout.without_new_agents(decision, spec.replicas, members)

        status = rollout.fleet_status(
            spec,
            current,
            fleet.generation,
            hash_,
            selector_string(name, spec),
            [m for m in members if m.name not in decision.delete],
            policy=policy,
            halt=self.cache.halts.get(key),
            canary=progress.status if progress is not None else current.canary,
        )
        recorded = progress is not None and progress.recorded
        if recorded:
            # A step or verdict is written before it is acted on: a restarted operator
            # resumes at the step the Agents are at, never a step behind.
            await self._write_status(key, fleet, status, policy, now_or_never=True)
        stable = progress.status.stableTemplateHash if progress and progress.status else ""
        await self._apply(fleet, spec, hash_, decision, stable)
        requeue = None if recorded else await self._write_status(key, fleet, status, policy)
        if progress is not None and progress.requeue is not None:
            requeue = min(requeue or progress.requeue, progress.requeue)
        if spec.minReadySeconds and any(m.ready and not m.available for m in members):
            requeue = min(requeue or spec.minReadySeconds, float(spec.minReadySeconds))
        if resync is not None:
            requeue = min(requeue or resync, resync)
        return requeue

    def _canary(
        self,
        fleet: FleetView,
        spec: FleetSpec,
        hash_: str,
        current: FleetStatus,
        members: list[rollout.Member],
        now: datetime,
    ) -> canary.Decision | None:
        """The canary's step and verdict, for a Fleet whose strategy is Canary."""
        if spec.strategy.type != "Canary" or spec.strategy.canary is None:
            _forget_gauge(fleet.namespace, fleet.name)
            return None
        progress = canary.decide(
            fleet.name,
            spec,
            hash_,
            current.stableTemplateHash,
            current.canary,
            members,
            self._template_counts(fleet, hash_),
            fleet.annotations.get(canary.RETRY_ANNOTATION, ""),
            now,
        )
        metrics.ROLLOUT_ABORTED.labels(fleet.namespace, fleet.name).set(int(progress.aborted))
        return progress

    def _template_counts(self, fleet: FleetView, hash_: str) -> canary.TemplateCounts | None:
        """What the router counted for the template; None before the operator heard from it."""
        figures = self.cache.router_figures.get((fleet.namespace, fleet.name))
        if figures is None:
            return None
        for template in figures.templates:
            if template.templateHash == hash_:
                return canary.TemplateCounts(template.attempts, template.failures)
        return canary.TemplateCounts(0, 0)

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
        self,
        fleet: FleetView,
        spec: FleetSpec,
        hash_: str,
        decision: rollout.Plan,
        stable: str = "",
    ) -> None:
        """``stable``: the template a canary restores Agents of (``decision.restore``)."""
        key = (fleet.namespace, fleet.name)
        bodies = [agent_body(fleet, spec, n, hash_) for n in decision.create]
        bodies += self._restored(fleet, decision.restore, stable)
        if bodies:
            self.expectations.expect(key, [b["metadata"]["name"] for b in bodies])
            await self._bounded(self.kube.create(body) for body in bodies)
        if decision.delete:
            await self._bounded(
                self.kube.delete("Agent", fleet.namespace, n) for n in decision.delete
            )
        if decision.create or decision.restore or decision.delete:
            log.info(
                "scaled fleet",
                extra={
                    "namespace": fleet.namespace,
                    "fleet": fleet.name,
                    "agentsCreated": len(decision.create) + len(decision.restore),
                    "agentsDeleted": len(decision.delete),
                },
            )
            parts = []
            if decision.create:
                parts.append(f"created {len(decision.create)} agent(s)")
            if decision.restore:
                parts.append(f"restored {len(decision.restore)} agent(s) of the old template")
            if decision.delete:
                parts.append(f"deleted {len(decision.delete)} agent(s)")
            grew = decision.create or decision.restore
            reason = (
                "ScaledUp"
                if grew and not decision.delete
                else ("ScaledDown" if not grew else "RollingUpdate")
            )
            await self.kube.event(
                involved("Fleet", fleet.namespace, fleet.name, fleet.uid),
                "Normal",
                reason,
                "; ".join(parts),
            )

    def _restored(
        self, fleet: FleetView, names: tuple[str, ...], stable: str
    ) -> list[dict[str, Any]]:
        """Bodies for Agents of the ``stable`` template, copied from one still running it."""
        if not names:
            return []
        source = next(
            (
                view
                for member in self.cache.agents_of(fleet.namespace, fleet.name)
                if member.template_hash == stable
                and (view := self.cache.agent(fleet.namespace, member.name)) is not None
                and view.spec
                and not view.deleting
            ),
            None,
        )
        if source is None:
            # Every Agent of the old template is gone: nothing to copy it from.
            log.warning(
                "cannot restore agents of the old template: none is left to copy",
                extra={"namespace": fleet.namespace, "fleet": fleet.name, "template": stable},
            )
            return []
        return [restored_agent_body(fleet, source, name) for name in names]

    async def _bounded(self, calls: Any) -> None:
        async def one(call: Any) -> Any:
            async with self._writes:
                return await call

        results = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _write_status(
        self,
        key: Key,
        fleet: FleetView,
        status: FleetStatus,
        policy: compliance.Compliance,
        now_or_never: bool = False,
    ) -> float | None:
        """Write status when it changed, at most once per STATUS_INTERVAL unless
        ``now_or_never`` (a decision that must be on record before it is carried out)."""
        new = status.model_dump(mode="json", exclude_none=True)
        current = FleetStatus.model_validate(fleet.status or {})
        old = current.model_dump(mode="json", exclude_none=True)
        if new == old:
            return None
        wait = self._last_status_write.get(key, 0.0) + STATUS_INTERVAL - time.monotonic()
        if wait > 0 and not now_or_never:
            return wait  # batch: look again when the interval has passed
        await self.kube.patch_status(
            "Fleet", fleet.namespace, fleet.name, new, fleet.resource_version
        )
        self._last_status_write[key] = time.monotonic()
        who = involved("Fleet", fleet.namespace, fleet.name, fleet.uid)
        condition = compliance.changed(current.conditions, status.conditions)
        if condition is not None:
            await announce(self.kube, who, condition, policy)
        await self._announce_canary(who, current, status)
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

    async def _announce_canary(
        self, who: dict[str, Any], before: FleetStatus, after: FleetStatus
    ) -> None:
        """One Event per canary step, promotion and abort."""
        old, new = before.canary, after.canary
        if new is None or (
            old is not None
            and (old.templateHash, old.retry, old.step, old.phase == "Aborted")
            == (new.templateHash, new.retry, new.step, new.phase == "Aborted")
            and (old.phase == "Promoted") == (new.phase == "Promoted")
        ):
            return
        if new.phase == "Aborted":
            await self.kube.event(who, "Warning", c.ROLLOUT_ABORTED, new.message)
        elif new.phase == "Promoted":
            await self.kube.event(who, "Normal", "RolloutPromoted", new.message)
        else:
            await self.kube.event(
                who,
                "Normal",
                c.CANARY_STEP,
                f"canary of template {new.templateHash[:5]}: {new.message}",
            )

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
