"""Writes to the Kubernetes API: every one counted, every failure classified.

Reads come from the kopf indexes (cache.py); this module creates, patches,
replaces and deletes, so the write budget per Agent is visible in metrics.
The one read by name (``get``) is for children too few to be worth a watch
(a Fleet's egress NetworkPolicy).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import PatchType

from agentarmy.api.common import GROUP, VERSION, now_rfc3339
from agentarmy.operator import labels, metrics

log = logging.getLogger("agentarmy.operator")

AgentResource = create_namespaced_resource(GROUP, VERSION, "Agent", "agents")
FleetResource = create_namespaced_resource(GROUP, VERSION, "Fleet", "fleets")
PolicyResource = create_namespaced_resource(GROUP, VERSION, "Policy", "policies")
TaskResource = create_namespaced_resource(GROUP, VERSION, "Task", "tasks")
RESOURCES: dict[str, Any] = {
    "Agent": AgentResource,
    "Fleet": FleetResource,
    "Policy": PolicyResource,
    "Task": TaskResource,
    "Pod": Pod,
    "NetworkPolicy": NetworkPolicy,
}
BUILTIN = frozenset({"Pod", "NetworkPolicy"})


class Kube:
    def __init__(self, client: AsyncClient | None = None) -> None:
        self.client = client or AsyncClient(field_manager=labels.FIELD_MANAGER)

    async def close(self) -> None:
        await self.client.close()

    def _failed(self, verb: str, kind: str, err: ApiError) -> None:
        metrics.API_ERRORS.labels(verb, kind, str(err.status.code)).inc()

    async def create(self, body: dict[str, Any]) -> bool:
        """Create; False when it already exists (a stale cache, not an error)."""
        kind = body["kind"]
        metrics.API_WRITES.labels("create", kind).inc()
        try:
            await self.client.create(_object(body))
        except ApiError as err:
            self._failed("create", kind, err)
            if err.status.code == 409:
                return False
            raise
        return True

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Read one object by name; None when it does not exist."""
        try:
            obj = await self.client.get(RESOURCES[kind], name, namespace=namespace)
        except ApiError as err:
            self._failed("get", kind, err)
            if err.status.code == 404:
                return None
            raise
        result: dict[str, Any] = obj.to_dict()
        return result

    async def replace(self, body: dict[str, Any]) -> None:
        """Replace (PUT) the whole object. With ``metadata.resourceVersion`` set, a
        newer object makes it a 409 and the caller retries from a fresh read."""
        kind = body["kind"]
        metrics.API_WRITES.labels("update", kind).inc()
        try:
            await self.client.replace(_object(body))
        except ApiError as err:
            self._failed("update", kind, err)
            raise

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete; False when already gone."""
        metrics.API_WRITES.labels("delete", kind).inc()
        try:
            await self.client.delete(RESOURCES[kind], name, namespace=namespace)
        except ApiError as err:
            self._failed("delete", kind, err)
            if err.status.code in (404, 409):
                return False
            raise
        return True

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> None:
        """Patch status on top of the version we read: a newer object makes it a 409
        and the caller retries with a fresh cache, instead of writing stale news."""
        metrics.API_WRITES.labels("patch-status", kind).inc()
        try:
            await self.client.patch(
                RESOURCES[kind].Status,
                name,
                {"metadata": {"resourceVersion": resource_version}, "status": status},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        except ApiError as err:
            self._failed("patch-status", kind, err)
            if err.status.code == 404:
                return
            raise

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        """Set spec.replicas through the scale subresource (as an HPA does)."""
        metrics.API_WRITES.labels("patch-scale", kind).inc()
        try:
            await self.client.patch(
                RESOURCES[kind].Scale,
                name,
                {"spec": {"replicas": replicas}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        except ApiError as err:
            self._failed("patch-scale", kind, err)
            raise

    async def event(self, involved: dict[str, str], type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about a resource; failures are logged, never raised."""
        now = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": involved["namespace"],
            },
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": labels.MANAGER},
            "reportingComponent": labels.MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        metrics.API_WRITES.labels("create", "Event").inc()
        try:
            await self.client.create(codecs.from_dict(body))
        except ApiError as err:
            self._failed("create", "Event", err)
            log.warning(
                "could not post event %s on %s/%s: %s",
                reason,
                involved["namespace"],
                involved["name"],
                err,
            )


def _object(body: dict[str, Any]) -> Any:
    kind = body["kind"]
    return codecs.from_dict(body) if kind in BUILTIN else RESOURCES[kind].from_dict(body)


def involved(kind: str, namespace: str, name: str, uid: str) -> dict[str, str]:
    api_version = "v1" if kind == "Pod" else f"{GROUP}/{VERSION}"
    return {
        "apiVersion": api_version,
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "uid": uid,
    }
