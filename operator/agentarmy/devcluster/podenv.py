"""The environment a pod's first container would get from a kubelet, resolved
for a local process: literal values with ``$(VAR)`` expansion, Secret and
ConfigMap references (honouring ``optional``), ``fieldRef`` and ``envFrom``.

Errors name the object and key, never a value: Secret values must not reach logs.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping

from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import Container, EnvVar, EnvVarSource
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret


class PodConfigError(Exception):
    """The pod cannot start yet (a kubelet says CreateContainerConfigError)."""


class ObjectCache:
    """Secrets and ConfigMaps of one namespace, each fetched at most once per pod start."""

    def __init__(self, client: AsyncClient, namespace: str) -> None:
        self._client = client
        self.namespace = namespace
        self._objects: dict[tuple[str, str], dict[str, bytes] | None] = {}

    async def data(self, kind: str, name: str | None) -> dict[str, bytes] | None:
        """The object's keys (None when it does not exist); kind is Secret or ConfigMap."""
        if not name:
            raise PodConfigError(f"a {kind} reference has no name")
        if (kind, name) not in self._objects:
            self._objects[kind, name] = await self._fetch(kind, name)
        return self._objects[kind, name]

    async def _fetch(self, kind: str, name: str) -> dict[str, bytes] | None:
        try:
            if kind == "Secret":
                secret = await self._client.get(Secret, name, namespace=self.namespace)
                return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            config_map = await self._client.get(ConfigMap, name, namespace=self.namespace)
        except ApiError as err:
            if err.status.code == 404:
                return None
            raise
        data = {k: v.encode() for k, v in (config_map.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (config_map.binaryData or {}).items()})
        return data

    async def key(
        self, kind: str, name: str | None, key: str, optional: bool | None
    ) -> bytes | None:
        """One key's value; None if the object or key is missing and the ref is optional."""
        data = await self.data(kind, name)
        if data is None:
            if optional:
                return None
            raise PodConfigError(f"{kind} {self.namespace}/{name} not found")
        if key not in data:
            if optional:
                return None
            raise PodConfigError(f"key {key!r} not found in {kind} {self.namespace}/{name}")
        return data[key]


_VAR = re.compile(r"\$(\$|\(([^)]*)\))")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: ``$$`` escapes, undefined references stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        name = match.group(2)
        return env.get(name, match.group(0))

    return _VAR.sub(replace, value)


_KEYED_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Pod, path: str) -> str:
    """A downward-API field of the pod (the fields a kubelet supports for env and volumes)."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    keyed = _KEYED_FIELD.match(path)
    if keyed and meta is not None:
        values: dict[str, str] = (
            meta.labels if keyed.group(1) == "labels" else meta.annotations
        ) or {}
        return values.get(keyed.group(2), "")
    if path in ("metadata.labels", "metadata.annotations") and meta is not None:
        values = (meta.labels if path == "metadata.labels" else meta.annotations) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    simple: dict[str, str | None] = {
        "metadata.name": meta.name if meta else None,
        "metadata.namespace": meta.namespace if meta else None,
        "metadata.uid": meta.uid if meta else None,
        "spec.nodeName": spec.nodeName if spec else None,
        "spec.serviceAccountName": spec.serviceAccountName if spec else None,
        "status.podIP": status.podIP if status else None,
        "status.hostIP": status.hostIP if status else None,
        "status.podIPs": ",".join(ip.ip for ip in status.podIPs or [] if ip.ip) if status else None,
    }
    if path not in simple:
        raise PodConfigError(f"fieldRef {path!r} is not supported by the pod runner")
    return simple[path] or ""


async def container_env(pod: Pod, container: Container, refs: ObjectCache) -> dict[str, str]:
    """The container's variables in a kubelet's order: envFrom first, then env on top."""
    env: dict[str, str] = {}
    for source in container.envFrom or []:
        if source.secretRef is not None:
            kind, name, optional = "Secret", source.secretRef.name, source.secretRef.optional
        elif source.configMapRef is not None:
            kind, name, optional = (
                "ConfigMap",
                source.configMapRef.name,
                source.configMapRef.optional,
            )
        else:
            continue
        data = await refs.data(kind, name)
        if data is None:
            if optional:
                continue
            raise PodConfigError(f"{kind} {refs.namespace}/{name} (envFrom) not found")
        for key, raw in data.items():
            if "=" not in key:  # the only name a process environment cannot carry
                env[(source.prefix or "") + key] = raw.decode(errors="replace")
    for var in container.env or []:
        value = await _env_value(var, pod, refs, env)
        if value is not None:
            env[var.name] = value
    return env


async def _env_value(
    var: EnvVar, pod: Pod, refs: ObjectCache, env: Mapping[str, str]
) -> str | None:
    if var.valueFrom is None:
        return expand(var.value or "", env)
    return await _ref_value(var.valueFrom, pod, refs)


async def _ref_value(source: EnvVarSource, pod: Pod, refs: ObjectCache) -> str | None:
    if source.secretKeyRef is not None:
        ref = source.secretKeyRef
        raw = await refs.key("Secret", ref.name, ref.key, ref.optional)
    elif source.configMapKeyRef is not None:
        cm = source.configMapKeyRef
        raw = await refs.key("ConfigMap", cm.name, cm.key, cm.optional)
    elif source.fieldRef is not None:
        return field_value(pod, source.fieldRef.fieldPath)
    else:
        raise PodConfigError("only secretKeyRef, configMapKeyRef and fieldRef env sources work")
    return None if raw is None else raw.decode(errors="replace")
