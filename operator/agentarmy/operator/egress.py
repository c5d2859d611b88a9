"""Keep each Fleet's egress NetworkPolicy as its Policies say (see netpol.py).

Called from the Fleet reconciler, before it creates Agents, so a new agent Pod
never starts without the restriction its Policies ask for. Level-based: the
NetworkPolicy is created when the Fleet's enforced egress rules exist, replaced
when it differs from what they render, and deleted when no enforce-mode Policy
that selects the Fleet has egress rules any more. A deleted Fleet needs nothing
from here: the owner reference lets the garbage collector remove it.

There is no watch on NetworkPolicies: there is at most one per Fleet and the
operator should be its only writer, so it remembers what it confirmed. It reads
one by name when it has not seen it yet (the first reconcile after a start),
when the rules changed, and every ``RESYNC_SECONDS`` while one exists, which
undoes hand edits and deletions within that time. In between, a reconcile
costs no API call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentarmy.api.common import GROUP
from agentarmy.operator import labels, netpol
from agentarmy.operator.cache import FleetView
from agentarmy.operator.kube import Kube, involved
from agentarmy.operator.workqueue import Key
from agentarmy.policy.effective import Egress

log = logging.getLogger("agentarmy.operator.egress")

RESYNC_SECONDS = 300.0
"""How often an existing NetworkPolicy is read back and repaired if someone changed it."""


class EgressConflict(RuntimeError):
    """``<fleet>-egress`` exists and another controller owns it: we do not take it over."""


class EgressPending(RuntimeError):
    """``<fleet>-egress`` is on its way out (left by an earlier Fleet of the same name)."""


@dataclass(frozen=True)
class _Seen:
    uid: str
    digest: str | None
    """Hash of the NetworkPolicy we confirmed on the server; None: confirmed absent."""
    at: float


def _controller(obj: dict[str, Any]) -> dict[str, Any] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def _ours(obj: dict[str, Any], fleet_uid: str) -> bool:
    owner = _controller(obj)
    return owner is not None and owner.get("uid") == fleet_uid


def _foreign(obj: dict[str, Any]) -> bool:
    """Controlled by something that is not a Fleet (a Fleet of the same name that was
    deleted and made again leaves ours behind until the garbage collector runs)."""
    owner = _controller(obj)
    if owner is None:
        return False
    return not (
        owner.get("kind") == "Fleet" and owner.get("apiVersion", "").startswith(GROUP + "/")
    )


def up_to_date(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Does ``current`` (from the server) say what ``desired`` says? Others' labels
    and annotations are theirs; ours, the owner reference and the spec must match."""
    have, want = current.get("metadata") or {}, desired["metadata"]
    return (
        current.get("spec") == desired["spec"]
        and _contains(have.get("labels"), want["labels"])
        and _contains(have.get("annotations"), want["annotations"])
        and _controller(current) == want["ownerReferences"][0]
    )


def _contains(have: dict[str, str] | None, want: dict[str, str]) -> bool:
    have = have or {}
    return all(have.get(k) == v for k, v in want.items())


def _replacement(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` on top of ``current``: keeps others' labels and annotations and
    other (non-controller) owners, and the resourceVersion it was read at."""
    have = current.get("metadata") or {}
    want = desired["metadata"]
    others = [r for r in have.get("ownerReferences") or [] if not r.get("controller")]
    return {
        **desired,
        "metadata": {
            **want,
            "labels": {**(have.get("labels") or {}), **want["labels"]},
            "annotations": {**(have.get("annotations") or {}), **want["annotations"]},
            "ownerReferences": [*others, *want["ownerReferences"]],
            "resourceVersion": have.get("resourceVersion", ""),
        },
    }


class EgressSync:
    def __init__(
        self,
        kube: Kube,
        router: netpol.RouterPeer,
        resync: float = RESYNC_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.router = router
        self.resync = resync
        self.clock = clock
        self._seen: dict[Key, _Seen] = {}
        self._conflicts: set[Key] = set()
        """Fleets told (once, by a Warning Event) that their NetworkPolicy name is taken."""

    def forget(self, key: Key) -> None:
        self._seen.pop(key, None)
        self._conflicts.discard(key)

    async def sync(self, fleet: FleetView, egress: Egress | None) -> float | None:
        """Make the Fleet's NetworkPolicy match ``egress`` (its enforced rules, None when
        it has none). Returns when to look again (None: at the next event)."""
        key = (fleet.namespace, fleet.name)
        desired = (
            None
            if egress is None
            else netpol.render_network_policy(
                fleet.name, fleet.namespace, fleet.uid, egress, self.router
            )
        )
        digest = None if desired is None else labels.stable_hash(desired, 16)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and seen.uid == fleet.uid and seen.digest == digest:
            if digest is None:
                return None
            if now - seen.at < self.resync:
                return seen.at + self.resync - now

        if desired is None:
            await self._lift(fleet)
        else:
            assert egress is not None
            try:
                await self._apply(fleet, desired, egress)
            except EgressConflict as err:
                if key not in self._conflicts:
                    self._conflicts.add(key)
                    who = involved("Fleet", fleet.namespace, fleet.name, fleet.uid)
                    await self.kube.event(who, "Warning", "EgressPolicyConflict", str(err))
                raise
        self._conflicts.discard(key)
        self._seen[key] = _Seen(fleet.uid, digest, now)
        return None if digest is None else self.resync

    async def _lift(self, fleet: FleetView) -> None:
        name = netpol.policy_name(fleet.name)
        current = await self.kube.get(netpol.KIND, fleet.namespace, name)
        if current is not None and _ours(current, fleet.uid):
            await self.kube.delete(netpol.KIND, fleet.namespace, name)
            await self._announce(
                fleet, "EgressPolicyDeleted", "no enforce-mode Policy restricts egress any more"
            )

    async def _apply(self, fleet: FleetView, desired: dict[str, Any], egress: Egress) -> None:
        name = netpol.policy_name(fleet.name)
        current = await self.kube.get(netpol.KIND, fleet.namespace, name)
        if current is None:
            if await self.kube.create(desired):
                await self._announce(fleet, "EgressPolicyCreated", _describe(egress))
                return
            # Made meanwhile (by us, before a restart): read it and go on from there.
            current = await self.kube.get(netpol.KIND, fleet.namespace, name)
            if current is None:
                raise EgressPending(f"NetworkPolicy {fleet.namespace}/{name} came and went")
        if (current.get("metadata") or {}).get("deletionTimestamp"):
            # Left by an earlier Fleet of this name; retried (with backoff) until it is gone.
            raise EgressPending(f"NetworkPolicy {fleet.namespace}/{name} is being deleted")
        if _foreign(current):
            raise EgressConflict(
                f"NetworkPolicy {fleet.namespace}/{name} is controlled by "
                f"{_controller(current)}; delete or rename it so the egress rules of "
                f"{', '.join(egress.policies)} can be applied"
            )
        if not up_to_date(current, desired):
            await self.kube.replace(_replacement(current, desired))
            await self._announce(fleet, "EgressPolicyUpdated", _describe(egress))

    async def _announce(self, fleet: FleetView, reason: str, what: str) -> None:
        name = netpol.policy_name(fleet.name)
        log.info(
            "egress NetworkPolicy %s",
            reason.removeprefix("EgressPolicy").lower(),
            extra={"namespace": fleet.namespace, "fleet": fleet.name, "networkPolicy": name},
        )
        await self.kube.event(
            involved("Fleet", fleet.namespace, fleet.name, fleet.uid),
            "Normal",
            reason,
            f"NetworkPolicy {name}: {what}",
        )


def _describe(egress: Egress) -> str:
    allowed = ["the router"]
    if egress.allow_dns:
        allowed.append("DNS")
    if egress.cidrs and egress.ports:
        ports = ", ".join(str(p) for p in egress.ports)
        allowed.append(f"{', '.join(egress.cidrs)} on TCP {ports}")
    return f"egress only to {'; '.join(allowed)} (from {', '.join(egress.policies)})"


__all__ = ["RESYNC_SECONDS", "EgressConflict", "EgressSync", "up_to_date"]
