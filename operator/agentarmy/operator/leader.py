"""Exactly one active operator replica, chosen by a coordination.k8s.io Lease.

kopf's peering pauses by priority and freezes replicas of equal priority; a
Lease is what other controllers use, and it bounds failover: a standby takes
over at most ``lease_seconds + retry_seconds`` after the leader stops renewing.
A leader that cannot renew before its lease runs out stops acting (the caller
exits), so two replicas never reconcile at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from agentarmy.operator import metrics

log = logging.getLogger("agentarmy.operator.leader")


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: float,
        renew_seconds: float,
        retry_seconds: float,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.retry_seconds = retry_seconds
        self._renewed_at = 0.0  # monotonic time of the last successful acquire/renew
        self._observed: tuple[str | None, str] = (None, "")
        self._observed_at = 0.0

    async def acquire(self) -> None:
        """Block until this replica holds the lease."""
        log.info("waiting for leadership", extra={"lease": self.name, "identity": self.identity})
        while not await self._try():  # noqa: ASYNC110 - polls the API server
            await asyncio.sleep(self.retry_seconds)
        metrics.LEADER.set(1)
        log.info("became leader", extra={"lease": self.name, "identity": self.identity})

    async def keep(self) -> None:
        """Renew until renewal fails for a whole lease period; then return (leadership lost)."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if await self._try():
                    continue
                log.error("lease taken by another replica", extra={"lease": self.name})
                break
            except Exception as err:  # transient API trouble: retry until the lease would expire
                log.warning("lease renewal failed: %s", err, extra={"lease": self.name})
            if time.monotonic() - self._renewed_at > self.lease_seconds - self.retry_seconds:
                log.error("could not renew the lease in time", extra={"lease": self.name})
                break
        metrics.LEADER.set(0)

    async def release(self) -> None:
        """Give the lease up on a clean shutdown so a standby takes over at once."""
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec and lease.spec.holderIdentity == self.identity:
                lease.spec.holderIdentity = None
                lease.spec.leaseDurationSeconds = 1
                await self.client.replace(lease)
        except ApiError as err:
            log.warning("could not release the lease: %s", err)
        metrics.LEADER.set(0)

    async def _try(self) -> bool:
        now = _now()
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as err:
            if err.status.code != 404:
                raise
            lease = Lease(
                metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, transitions=0, acquired=now),
            )
            try:
                await self.client.create(lease)
            except ApiError as create_err:
                if create_err.status.code == 409:
                    return False
                raise
            self._renewed_at = time.monotonic()
            return True

        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity
        if holder and holder != self.identity and not self._expired(spec):
            return False
        mine = holder == self.identity
        transitions = (spec.leaseTransitions or 0) + (0 if mine else 1)
        acquired = spec.acquireTime if mine and spec.acquireTime else now
        lease.spec = self._spec(now, transitions, acquired)
        try:
            # replace() carries resourceVersion: a concurrent writer makes this a 409.
            await self.client.replace(lease)
        except ApiError as err:
            if err.status.code == 409:
                return False
            raise
        self._renewed_at = time.monotonic()
        return True

    def _spec(self, now: datetime, transitions: int, acquired: datetime) -> LeaseSpec:
        return LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=int(self.lease_seconds),
            acquireTime=acquired,
            renewTime=now,
            leaseTransitions=transitions,
        )

    def _expired(self, spec: LeaseSpec) -> bool:
        """Expired when the record has not changed for a lease duration *as we saw it*.

        Like client-go, this uses our own monotonic clock from the moment we
        observed the record, never a comparison of wall clocks across machines.
        """
        record = (spec.holderIdentity, str(spec.renewTime))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        return time.monotonic() - self._observed_at > (spec.leaseDurationSeconds or 0)
