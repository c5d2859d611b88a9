"""Router figures into Agent and Fleet status, and autoscaling, at a coarse interval.

Task traffic never touches etcd: the router counts, and this loop copies the
counts (tasks succeeded/failed, last heartbeat, queue depth) into status once
per interval, and only for objects whose figures changed. Heartbeats alone
refresh at most every HEARTBEAT_REFRESH_SECONDS, so a thousand idle agents do
not cost a thousand writes per interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError
from pydantic import ValidationError

from agentarmy.api import wire
from agentarmy.api.fleet import Autoscaling, FleetSpec
from agentarmy.operator import autoscale
from agentarmy.operator.cache import Cache, FleetView
from agentarmy.operator.kube import Kube, involved
from agentarmy.operator.workqueue import Key
from agentarmy.policy import effective_rules, fleet_subject
from agentarmy.policy.effective import Limit
from agentarmy.router.client import RouterClient
from agentarmy.router.figures import fleet_figures

log = logging.getLogger("agentarmy.operator.stats")

HEARTBEAT_REFRESH_SECONDS = 300.0


def rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(stamp: str, now: float) -> float:
    if not stamp:
        return float("inf")
    return now - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def agent_news(status: dict[str, Any], figures: wire.AgentStats, now: float) -> dict[str, Any]:
    """The status fields to write for one agent; empty when nothing is worth a write."""
    counts = {"tasksSucceeded": figures.succeeded, "tasksFailed": figures.failed}
    changed = {k: v for k, v in counts.items() if status.get(k, 0) != v}
    stale_heartbeat = _age(status.get("lastHeartbeatTime", ""), now) > HEARTBEAT_REFRESH_SECONDS
    if not changed and not stale_heartbeat:
        return {}
    return {**counts, "lastHeartbeatTime": rfc3339(figures.lastHeartbeat)}


def record_figures(cache: Cache, stats: wire.Stats) -> set[Key]:
    """Keep the router's figures in ``cache.router_figures``; the fleets whose figures
    (as the router's watch compares them) changed."""
    new = {(f.namespace, f.fleet): f for f in stats.fleets}
    old = cache.router_figures
    changed = {
        k for k in old.keys() | new.keys() if fleet_figures(old.get(k)) != fleet_figures(new.get(k))
    }
    cache.router_figures = new
    return changed


def autoscale_message(
    current: int, target: int, fleet: wire.FleetStats, autoscaling: Autoscaling
) -> str:
    """The Autoscaled Event's message; waking from zero and going idle say so."""
    message = (
        f"scaled from {current} to {target} agents: {fleet.queued} queued and "
        f"{fleet.running} running tasks, target {autoscaling.targetQueueDepthPerAgent} per agent"
    )
    if current == 0:
        return f"woke from zero: {message}"
    if target == 0:
        message += "; idle at zero agents (minReplicas 0): the next task wakes the fleet"
    return message


class StatsSync:
    def __init__(
        self,
        cache: Cache,
        kube: Kube,
        client: RouterClient,
        interval: float,
        fleets_changed: Callable[[Iterable[Key]], None] = lambda keys: None,
    ) -> None:
        self.recommendations = autoscale.Recommendations()
        self.cache = cache
        self.kube = kube
        self.client = client
        self.interval = interval
        self.fleets_changed = fleets_changed
        self._scaling = asyncio.Lock()
        self._scaled: dict[Key, tuple[str, int]] = {}
        """Fleet -> (its resourceVersion when scaled, the replicas written): until the
        watch brings the new spec, the same write is not made again."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                writes = await self.sync_once()
            except Exception as err:  # the router may be down; status just stays coarse
                log.warning("could not read router stats: %s", err)
            else:
                log.debug("router stats copied", extra={"statusWrites": writes})

    async def sync_once(self) -> int:
        if not self.cache.bound:
            return 0
        stats = await self.client.stats()
        now = datetime.now(UTC).timestamp()
        self.fleets_changed(record_figures(self.cache, stats))
        writes = 0
        for fleet in stats.fleets:
            for figures in fleet.agents:
                agent = self.cache.agent(fleet.namespace, figures.name)
                if agent is None or agent.deleting:
                    continue
                news = agent_news(dict(agent.status), figures, now)
                if news and await self._patch(
                    "Agent", fleet.namespace, figures.name, news, agent.resource_version
                ):
                    writes += 1
            view = self.cache.fleet(fleet.namespace, fleet.fleet)
            if view is None or view.deleting:
                continue
            writes += await self._autoscale(view, fleet, now)
            if view.status.get("queueDepth", 0) == fleet.queued:
                continue
            news = {"queueDepth": fleet.queued}
            if await self._patch(
                "Fleet", fleet.namespace, fleet.fleet, news, view.resource_version
            ):
                writes += 1
        return writes

    async def scale_up(self, keys: Iterable[Key]) -> int:
        """Grow these fleets now if their work calls for more agents (wake from zero
        included); shrinking stays with the coarse loop and its stabilization window."""
        writes = 0
        now = datetime.now(UTC).timestamp()
        for namespace, name in sorted(keys):
            view = self.cache.fleet(namespace, name)
            figures = self.cache.router_figures.get((namespace, name))
            if view is not None and figures is not None and not view.deleting:
                writes += await self._autoscale(view, figures, now, grow_only=True)
        return writes

    async def _autoscale(
        self, view: FleetView, fleet: wire.FleetStats, now: float, grow_only: bool = False
    ) -> int:
        async with self._scaling:  # the watch and the coarse loop both call this
            return await self._autoscale_one(view, fleet, now, grow_only)

    async def _autoscale_one(
        self, view: FleetView, fleet: wire.FleetStats, now: float, grow_only: bool
    ) -> int:
        try:
            spec = FleetSpec.model_validate(view.spec)
        except ValidationError:
            return 0  # the fleet reconciler reports the invalid spec
        key = (view.namespace, view.name)
        if spec.autoscaling is None or not autoscale.manages(spec.autoscaling, spec.replicas):
            self.recommendations.forget(key)  # off, or stopped by a person (replicas 0)
            return 0
        wish = autoscale.wanted(spec.autoscaling, fleet.queued, fleet.running)
        if grow_only and wish <= spec.replicas:
            return 0
        target = self.recommendations.decide(key, spec.autoscaling, spec.replicas, wish, now)
        limit = self._replica_limit(view, spec)
        wanted = target
        target = autoscale.within_limit(
            target, spec.replicas, None if limit is None else int(limit.value)
        )
        if target == spec.replicas or self._scaled.get(key) == (view.resource_version, target):
            return 0
        await self.kube.scale("Fleet", view.namespace, view.name, target)
        self._scaled[key] = (view.resource_version, target)
        message = autoscale_message(spec.replicas, target, fleet, spec.autoscaling)
        if target < wanted and limit is not None:
            message += f"; held at {target} by policy {limit.policy} (maxReplicasPerFleet)"
        log.info(
            "autoscaled fleet",
            extra={
                "namespace": view.namespace,
                "fleet": view.name,
                "from": spec.replicas,
                "to": target,
            },
        )
        await self.kube.event(
            involved("Fleet", view.namespace, view.name, view.uid), "Normal", "Autoscaled", message
        )
        return 2

    def _replica_limit(self, view: FleetView, spec: FleetSpec) -> Limit | None:
        """The enforced maxReplicasPerFleet: the autoscaler never scales past it."""
        subject = fleet_subject(view.namespace, view.name, view.labels, spec)
        rules = effective_rules(self.cache.policy_set(), view.namespace, subject.label_sets)
        return rules.enforced.max_replicas

    async def _patch(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> bool:
        try:
            await self.kube.patch_status(kind, namespace, name, status, resource_version)
        except ApiError as err:
            if err.status.code == 409:
                return False  # changed meanwhile; the next round writes it
            raise
        return True
