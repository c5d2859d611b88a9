"""A pod's volumes as local directories: emptyDir, secret, configMap,
downwardAPI and projected volumes (ServiceAccount tokens from the TokenRequest
API, refreshed like a kubelet refreshes them). Mount paths map to those
directories so values that name a path inside the container can be rewritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from lightkube import ApiError, AsyncClient
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.core_v1 import (
    Container,
    KeyToPath,
    ServiceAccountTokenProjection,
    Volume,
    VolumeProjection,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod, ServiceAccount

from agentarmy.devcluster.podenv import ObjectCache, PodConfigError, field_value

log = logging.getLogger("agentarmy.podrunner")

DEFAULT_TOKEN_SECONDS = 3600
REFRESH_AT = 0.8
"""Fraction of a token's lifetime after which it is replaced (a kubelet's rule)."""


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never half of one (a kubelet swaps symlinks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class TokenFile:
    """A projected ServiceAccount token for one pod, bound to it, kept fresh on disk."""

    client: AsyncClient
    pod: Pod
    source: ServiceAccountTokenProjection
    path: Path
    mode: int = 0o644
    refresh_at: float = REFRESH_AT
    lifetime: float = field(default=0.0, init=False)

    async def write(self) -> None:
        meta, spec = self.pod.metadata, self.pod.spec
        assert meta is not None and spec is not None
        requested = self.source.expirationSeconds or DEFAULT_TOKEN_SECONDS
        request = ServiceAccount.Token(
            metadata=ObjectMeta(),
            spec=TokenRequestSpec(
                audiences=[self.source.audience] if self.source.audience else [],
                expirationSeconds=requested,
                boundObjectRef=BoundObjectReference(
                    apiVersion="v1", kind="Pod", name=meta.name, uid=meta.uid
                ),
            ),
        )
        issued = datetime.now(UTC)
        response = await self.client.create(
            request, spec.serviceAccountName or "default", namespace=meta.namespace
        )
        status = response.status
        if status is None or not status.token or status.expirationTimestamp is None:
            raise PodConfigError("the TokenRequest API answered without a token")
        write_atomically(self.path, status.token.encode(), self.mode)
        # the API server may extend a pod-bound token's life; rotate on what was asked for
        granted = (status.expirationTimestamp - issued).total_seconds()
        self.lifetime = min(granted, float(requested))

    async def keep_fresh(self) -> None:
        """Replace the token at ``refresh_at`` of its lifetime; retry sooner when that fails."""
        delay = self.lifetime * self.refresh_at
        while True:
            await asyncio.sleep(delay)
            try:
                await self.write()
                delay = self.lifetime * self.refresh_at
            except (ApiError, OSError) as err:
                delay = min(30.0, max(1.0, delay / 4))
                log.warning(
                    "token refresh failed",
                    extra={
                        "fields": {"path": str(self.path), "error": str(err), "retry_in": delay}
                    },
                )


@dataclass
class PodVolumes:
    """Where each volume of one pod lives on this machine, and its tokens to keep fresh."""

    root: Path
    dirs: dict[str, Path] = field(default_factory=dict)
    tokens: list[TokenFile] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


async def materialize(
    client: AsyncClient, pod: Pod, refs: ObjectCache, root: Path, refresh_at: float = REFRESH_AT
) -> PodVolumes:
    """Create a directory under ``root`` for each volume and fill it as a kubelet would."""
    assert pod.spec is not None
    volumes = PodVolumes(root)
    for volume in pod.spec.volumes or []:
        target = root / volume.name
        target.mkdir(parents=True, exist_ok=True)
        volumes.dirs[volume.name] = target
        await _fill(client, pod, refs, volume, target, volumes, refresh_at)
    for token in volumes.tokens:
        await token.write()
    return volumes


async def _fill(
    client: AsyncClient,
    pod: Pod,
    refs: ObjectCache,
    volume: Volume,
    target: Path,
    volumes: PodVolumes,
    refresh_at: float,
) -> None:
    if volume.emptyDir is not None:
        os.chmod(target, 0o777)  # a kubelet's emptyDir: writable by the pod's non-root user
        return
    if volume.secret is not None:
        s = volume.secret
        await _write_keys(refs, "Secret", s.secretName, s.items, s.optional, target, s.defaultMode)
    elif volume.configMap is not None:
        c = volume.configMap
        await _write_keys(refs, "ConfigMap", c.name, c.items, c.optional, target, c.defaultMode)
    elif volume.downwardAPI is not None:
        for item in volume.downwardAPI.items or []:
            if item.fieldRef is not None:
                value = field_value(pod, item.fieldRef.fieldPath)
                mode = item.mode or volume.downwardAPI.defaultMode or 0o644
                write_atomically(_inside(target, item.path), value.encode(), mode)
    elif volume.projected is not None:
        mode = volume.projected.defaultMode or 0o644
        for source in volume.projected.sources or []:
            await _project(client, pod, refs, source, target, mode, volumes, refresh_at)
    else:
        volumes.unsupported.append(volume.name)  # stays an empty directory


async def _project(
    client: AsyncClient,
    pod: Pod,
    refs: ObjectCache,
    source: VolumeProjection,
    target: Path,
    mode: int,
    volumes: PodVolumes,
    refresh_at: float,
) -> None:
    if source.serviceAccountToken is not None:
        path = _inside(target, source.serviceAccountToken.path)
        token = TokenFile(client, pod, source.serviceAccountToken, path, mode, refresh_at)
        volumes.tokens.append(token)
    elif source.secret is not None:
        s = source.secret
        await _write_keys(refs, "Secret", s.name, s.items, s.optional, target, mode)
    elif source.configMap is not None:
        c = source.configMap
        await _write_keys(refs, "ConfigMap", c.name, c.items, c.optional, target, mode)
    elif source.downwardAPI is not None:
        for item in source.downwardAPI.items or []:
            if item.fieldRef is not None:
                value = field_value(pod, item.fieldRef.fieldPath).encode()
                write_atomically(_inside(target, item.path), value, item.mode or mode)


async def _write_keys(
    refs: ObjectCache,
    kind: str,
    name: str | None,
    items: Iterable[KeyToPath] | None,
    optional: bool | None,
    target: Path,
    mode: int | None,
) -> None:
    data = await refs.data(kind, name)
    if data is None:
        if optional:
            return
        raise PodConfigError(f"{kind} {refs.namespace}/{name} (volume) not found")
    wanted = list(items) if items else [KeyToPath(key=k, path=k) for k in data]
    for item in wanted:
        if item.key not in data:
            if optional:
                continue
            raise PodConfigError(f"key {item.key!r} not found in {kind} {refs.namespace}/{name}")
        write_atomically(_inside(target, item.path), data[item.key], item.mode or mode or 0o644)


def _inside(directory: Path, relative: str) -> Path:
    """``directory / relative``, refusing paths that climb out of it."""
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts:
        raise PodConfigError(f"volume path {relative!r} must be relative and stay inside")
    return directory.joinpath(*parts)


def mount_map(container: Container, volumes: PodVolumes) -> list[tuple[str, Path]]:
    """(mountPath, local path) pairs, longest mount path first so nested mounts win."""
    pairs: list[tuple[str, Path]] = []
    for mount in container.volumeMounts or []:
        local = volumes.dirs.get(mount.name)
        if local is None:
            continue
        if mount.subPath:
            local = _inside(local, mount.subPath)
            if not local.exists():  # a kubelet creates a missing subPath as a directory
                local.mkdir(parents=True)
        pairs.append((mount.mountPath.rstrip("/") or "/", local))
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def rewrite(value: str, mounts: list[tuple[str, Path]]) -> str:
    """A value that names a path under a mount, pointed at the mount's local directory.

    A path that exists on this machine is left alone: the interpreter itself
    may live under a mount path (a checkout in /tmp, with /tmp mounted), and
    must not be pointed into the pod's empty volume.
    """
    for mount_path, local in mounts:
        if value == mount_path:
            return str(local)
        if value.startswith(mount_path + "/") and not Path(value).exists():
            return str(local) + value[len(mount_path) :]
    return value


def local_dir(path: str, mounts: list[tuple[str, Path]]) -> Path | None:
    """The local directory of the volume mounted exactly at ``path``, if any."""
    return next((local for mount_path, local in mounts if mount_path == path), None)
