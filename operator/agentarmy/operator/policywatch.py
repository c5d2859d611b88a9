"""The Policies every operator replica admits against, kept current by a watch.

Admission runs on every replica, leader or not, so it cannot read the
leader's kopf indexes: each replica lists Policies once, then watches them.
A PolicySet per namespace is compiled on first use after a change and reused
until the next one, so a webhook call costs a dict lookup, not a compile.

On any watch failure the catalog lists again and replaces what it holds: an
event missed while disconnected (a Policy deleted, say) cannot linger.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from lightkube import AsyncClient
from pydantic import ValidationError

from agentarmy.operator.kube import PolicyResource
from agentarmy.policy import NamedPolicy, PolicySet

log = logging.getLogger("agentarmy.operator.policywatch")

WATCH_TIMEOUT = 290
"""Seconds the API server keeps one watch request open."""
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
EMPTY = PolicySet()


def _body(obj: Any) -> dict[str, Any]:
    body: dict[str, Any] = obj if isinstance(obj, dict) else obj.to_dict()
    return body


def _named(body: dict[str, Any]) -> NamedPolicy | None:
    try:
        return NamedPolicy.from_object(body)
    except ValidationError as err:
        # Admission refuses such Policies; one stored before the webhook existed is skipped
        # here and shows Ready=False (InvalidSpec) from the Policy reconciler.
        meta = body.get("metadata", {})
        log.warning(
            "skipping invalid Policy %s/%s: %s", meta.get("namespace"), meta.get("name"), err
        )
        return None


class PolicyCatalog:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._policies: dict[str, dict[str, NamedPolicy]] = defaultdict(dict)
        self._compiled: dict[str, PolicySet] = {}
        self.synced = asyncio.Event()

    def policy_set(self, namespace: str) -> PolicySet:
        """The Policies of ``namespace``, compiled (shared until one of them changes)."""
        compiled = self._compiled.get(namespace)
        if compiled is None:
            members = self._policies.get(namespace)
            compiled = PolicySet(members.values()) if members else EMPTY
            self._compiled[namespace] = compiled
        return compiled

    def replace(self, policies: list[NamedPolicy]) -> None:
        fresh: dict[str, dict[str, NamedPolicy]] = defaultdict(dict)
        for policy in policies:
            fresh[policy.namespace][policy.name] = policy
        self._policies = fresh
        self._compiled.clear()

    def put(self, namespace: str, name: str, policy: NamedPolicy | None) -> None:
        members = self._policies[namespace]
        if members.get(name) == policy:
            return  # a status write: the rules are the same, keep the compiled set
        if policy is None:
            members.pop(name, None)
        else:
            members[name] = policy
        self._compiled.pop(namespace, None)

    async def _list(self) -> str:
        listing = self.client.list(PolicyResource, namespace="*")
        policies = [p async for obj in listing if (p := _named(_body(obj))) is not None]
        self.replace(policies)
        version: str = listing.resourceVersion
        return version

    async def run(self) -> None:
        """List, then watch; on any failure list again after a short backoff."""
        failures = 0
        while True:
            try:
                version = await self._list()
                self.synced.set()
                failures = 0
                watch = self.client.watch(
                    PolicyResource,
                    namespace="*",
                    resource_version=version,
                    server_timeout=WATCH_TIMEOUT,
                )
                async for event, obj in watch:
                    body = _body(obj)
                    meta = body["metadata"]
                    gone = event == "DELETED"
                    self.put(meta["namespace"], meta["name"], None if gone else _named(body))
            except asyncio.CancelledError:
                raise
            except Exception as err:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("Policy watch failed, listing again in %.1fs: %s", delay, err)
                await asyncio.sleep(delay)
