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
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError
from pydantic import ValidationError

from agentarmy.api import wire
from agentarmy.api.fleet import FleetSpec
from agentarmy.operator import autoscale
from agentarmy.operator.cache import Cache, FleetView
from agentarmy.operator.kube import Kube, involved
from agentarmy.policy import effective_rules, fleet_subject
from agentarmy.policy.effective import Limit
from agentarmy.router.client import RouterClient

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


class StatsSync:
    def __init__(self, cache: Cache, kube: Kube, client: RouterClient, interval: float) -> None:
        self.recommendations = autoscale.Recommendations()
        self.cache = cache
        self.kube = kube
        self.client = client
        self.interval = interval

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

    async def _autoscale(self, view: FleetView, fleet: wire.FleetStats, now: float) -> int:
        try:
            spec = FleetSpec.model_validate(view.spec)
        except ValidationError:
            return 0  # the fleet reconciler reports the invalid spec
        key = (view.namespace, view.name)
        if spec.autoscaling is None or not spec.autoscaling.enabled or spec.replicas == 0:
            self.recommendations.forget(key)
            return 0
        wish = autoscale.wanted(spec.autoscaling, fleet.queued, fleet.running)
        target = self.recommendations.decide(key, spec.autoscaling, spec.replicas, wish, now)
        limit = self._replica_limit(view, spec)
        wanted = target
        target = autoscale.within_limit(
            target, spec.replicas, None if limit is None else int(limit.value)
        )
        if target == spec.replicas:
            return 0
        await self.kube.scale("Fleet", view.namespace, view.name, target)
        message = (
            f"scaled from {spec.replicas} to {target} agents: {fleet.queued} queued and "
            f"{fleet.running} running tasks, target "
            f"{spec.autoscaling.targetQueueDepthPerAgent} per agent"
        )
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
