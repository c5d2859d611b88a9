"""Pod runner: a stand-in kubelet for agent pods on kwok nodes.

kwok marks pods Running but runs no containers. For every Pod that is Running
on a kwok node and carries the ``agentarmy.io/agent`` label, the runner starts
the first container's command as a local process, with the pod's environment
(Secret, ConfigMap and field references resolved), its volumes as per-pod
directories (real ServiceAccount tokens from the TokenRequest API, refreshed at
80% of their lifetime) and paths under mount points rewritten to them. It stops
the process (SIGTERM, SIGKILL after the grace period) when the pod goes away and
reports an exit in the pod's status as a kubelet does for restartPolicy Never.

    python -m agentarmy.devcluster.podrunner --kubeconfig PATH [--log-dir DIR]
        [--namespace NS ...] [--max-processes N] [--rootfs DIR]

Level-based: it lists and watches agent pods, adopts pods that were Running
before it started, and lists again after a watch error. ``--namespace`` keeps
several runners (one per test) from running the same pod; ``--max-processes``
bounds how many processes run at once (more pods wait for a free slot; 0 runs
none), so a benchmark with 1000 agent pods can keep this small machine free.
Children die with the runner (PR_SET_PDEATHSIG), also when it is SIGKILLed.

``--rootfs`` (default: ``$AGENTARMY_POD_ROOTFS``) runs each command inside that
unpacked image instead (``hack/build-image``'s ``rootfs/``): chrooted, as the
pod's runAsUser, with its volumes mounted at their mount paths (see
``podchroot``). It needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.core.client import LabelSelector
from lightkube.models.core_v1 import Container
from lightkube.operators import exists
from lightkube.resources.core_v1 import Node, Pod, PodStatus

from agentarmy.api import labels
from agentarmy.devcluster import podchroot
from agentarmy.devcluster.podenv import ObjectCache, PodConfigError, container_env, expand
from agentarmy.devcluster.podvolumes import local_dir, materialize, mount_map, rewrite
from agentarmy.devcluster.processes import die_with_parent, stop_process
from agentarmy.logs import configure_json_logging

AGENT_LABEL = labels.AGENT  # on agent pods only: the ones the runner starts
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
DEFAULT_GRACE_SECONDS = 30
FIELD_MANAGER = "agentarmy-podrunner"
RUNNER_LOG = "podrunner.log"
RUNNER_STOP_SECONDS = 20.0  # the runner needs its children's grace (10 s by default) and more
ROOTFS_ENV = "AGENTARMY_POD_ROOTFS"
TERMINATION_LOG_BYTES = 2048  # a kubelet's FallbackToLogsOnError keeps at most this much
NODE_RELIST_SECONDS = 5.0

log = logging.getLogger("agentarmy.podrunner")


def emit(
    event: str, level: int = logging.INFO, exc: BaseException | None = None, **fields: object
) -> None:
    """One structured log line; callers pass names and numbers, never Secret values."""
    log.log(level, event, exc_info=exc, extra={"fields": fields})


class StartError(Exception):
    """The process could not be executed (a kubelet reports StartError, exit code 128)."""


@dataclass(frozen=True)
class RunnerConfig:
    kubeconfig: Path
    log_dir: Path
    work_dir: Path | None = None
    namespaces: frozenset[str] = frozenset()
    max_processes: int | None = None
    shutdown_timeout: float = 10.0
    rootfs: Path | None = None
    """An unpacked image to run pod commands in (chroot); None: the host's venv."""


@dataclass
class PodProcess:
    """A running pod process and what is needed to stop it and report its exit."""

    namespace: str
    name: str
    uid: str
    container: Container
    popen: subprocess.Popen[bytes]
    pod_dir: Path
    log_file: Path
    log_offset: int
    grace: float
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    refreshers: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: bool = False
    kill_timer: asyncio.TimerHandle | None = None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


def _meta(pod: Pod) -> tuple[str, str, str]:
    assert pod.metadata is not None
    return pod.metadata.namespace or "", pod.metadata.name or "", pod.metadata.uid or ""


def grace_seconds(pod: Pod | None) -> float:
    """The grace a deletion asked for, else the pod's terminationGracePeriodSeconds.

    kwok deletes a terminating pod at once with grace 0, so a zero deletion grace is
    kwok's, not the user's: it falls back to the spec rather than killing at once.
    """
    if pod is not None and pod.metadata is not None and pod.metadata.deletionGracePeriodSeconds:
        return float(pod.metadata.deletionGracePeriodSeconds)
    if (
        pod is not None
        and pod.spec is not None
        and pod.spec.terminationGracePeriodSeconds is not None
    ):
        return float(pod.spec.terminationGracePeriodSeconds)
    return float(DEFAULT_GRACE_SECONDS)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_status_patch(
    container: Container,
    returncode: int,
    started_at: datetime,
    finished_at: datetime,
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The status a kubelet writes when the only container of a restartPolicy Never pod ends."""
    signal_number = -returncode if returncode < 0 else 0
    exit_code = 128 + signal_number if signal_number else returncode
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": _time(started_at),
        "finishedAt": _time(finished_at),
    }
    if signal_number:
        terminated["signal"] = signal_number
    if message:
        terminated["message"] = message
    conditions = [
        {
            "type": kind,
            "status": "False",
            "reason": "PodCompleted",
            "lastTransitionTime": _time(finished_at),
        }
        for kind in ("Ready", "ContainersReady")
    ]
    status = {
        "name": container.name,
        "image": container.image or "",
        "ready": False,
        "started": False,
        "restartCount": 0,
        # strategic merge: null removes the running state kwok wrote
        "state": {"running": None, "waiting": None, "terminated": terminated},
    }
    phase = "Succeeded" if exit_code == 0 else "Failed"
    return {"status": {"phase": phase, "conditions": conditions, "containerStatuses": [status]}}


def _log_tail(path: Path, offset: int) -> str:
    """The end of this run's output, for terminationMessagePolicy FallbackToLogsOnError."""
    with contextlib.suppress(OSError), path.open("rb") as logfile:
        size = logfile.seek(0, os.SEEK_END)
        logfile.seek(max(offset, size - TERMINATION_LOG_BYTES))
        return logfile.read().decode(errors="replace")
    return ""


class PodRunner:
    """Watches agent pods and keeps one local process per runnable pod."""

    def __init__(self, config: RunnerConfig, client: AsyncClient | None = None) -> None:
        self.config = config
        self.client = client or AsyncClient(
            config=KubeConfig.from_file(config.kubeconfig), field_manager=FIELD_MANAGER
        )
        self._own_work_dir = config.work_dir is None
        self.work_dir = config.work_dir or Path(tempfile.mkdtemp(prefix="agentarmy-podrunner-"))
        self.pods: dict[str, Pod] = {}  # agent pods as last seen, by uid
        self.procs: dict[str, PodProcess] = {}
        self.starting: dict[str, asyncio.Task[None]] = {}
        self.finished: set[str] = set()  # exited on their own: never started again
        self.waiting: set[str] = set()  # runnable, but --max-processes is reached
        self.retries: dict[str, int] = {}
        self.retry_timers: dict[str, asyncio.TimerHandle] = {}
        self.kwok_nodes: set[str] = set()
        self._nodes_listed_at = 0.0
        self._node_refresh: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._synced = False
        self._shutting_down = False
        self._no_processes = asyncio.Event()

    # -- watching ----------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then stop every child."""
        watcher = asyncio.create_task(self.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (watcher, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.shutdown()

    async def run(self) -> None:
        """List and watch agent pods forever; after an error, list again (level-based)."""
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        backoff = 0.5
        while True:
            try:
                await self._list_and_watch()
                backoff = 0.5
            except Exception as err:
                emit(
                    "watch failed; listing again",
                    logging.WARNING,
                    error=repr(err),
                    retry_in=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    @property
    def _watch_namespace(self) -> str:
        if len(self.config.namespaces) == 1:
            return next(iter(self.config.namespaces))
        return "*"

    async def _list_and_watch(self) -> None:
        await self._refresh_nodes()
        selector: LabelSelector = {AGENT_LABEL: exists()}
        listing = self.client.list(Pod, namespace=self._watch_namespace, labels=selector)
        current = {_meta(pod)[2]: pod async for pod in listing}
        for uid in set(self.pods) - set(current):
            self._forget(uid, None)
        for pod in current.values():
            self._observe(pod)
        if not self._synced:
            self._synced = True
            emit(
                "synced",
                pods=len(current),
                log_dir=str(self.config.log_dir),
                work_dir=str(self.work_dir),
                max_processes=self.config.max_processes,
                rootfs=str(self.config.rootfs) if self.config.rootfs else None,
            )
        events = self.client.watch(
            Pod,
            namespace=self._watch_namespace,
            labels=selector,
            resource_version=listing.resourceVersion,
            server_timeout=300,
        )
        async for kind, pod in events:
            if kind == "DELETED":
                self._forget(_meta(pod)[2], pod)
            else:
                self._observe(pod)

    def _observe(self, pod: Pod) -> None:
        uid = _meta(pod)[2]
        self.pods[uid] = pod
        self._sync(uid)

    def _forget(self, uid: str, gone: Pod | None) -> None:
        last = self.pods.pop(uid, None)
        self.finished.discard(uid)
        self.retries.pop(uid, None)
        self._sync(uid, gone or last)

    async def _refresh_nodes(self) -> None:
        nodes = [node async for node in self.client.list(Node)]
        self._nodes_listed_at = time.monotonic()
        self.kwok_nodes = {
            node.metadata.name or ""
            for node in nodes
            if node.metadata is not None
            and (node.metadata.annotations or {}).get(KWOK_NODE_ANNOTATION) == "fake"
        }

    def _unknown_node(self) -> None:
        """A pod on a node not seen yet: list nodes again, but not for every such pod."""
        recent = time.monotonic() - self._nodes_listed_at < NODE_RELIST_SECONDS
        if self._node_refresh is None and not recent:
            self._node_refresh = asyncio.create_task(self._refresh_nodes_and_sync())

    async def _refresh_nodes_and_sync(self) -> None:
        try:
            await self._refresh_nodes()
            for uid in list(self.pods):
                self._sync(uid)
        except Exception as err:
            emit("listing nodes failed", logging.WARNING, error=repr(err))
        finally:
            self._node_refresh = None

    # -- desired state -----------------------------------------------------------
    def _wanted(self, pod: Pod) -> bool:
        meta, spec, status = pod.metadata, pod.spec, pod.status
        if meta is None or spec is None or status is None:
            return False
        if meta.deletionTimestamp is not None or AGENT_LABEL not in (meta.labels or {}):
            return False
        if self.config.namespaces and meta.namespace not in self.config.namespaces:
            return False
        if status.phase != "Running" or not spec.nodeName:
            return False
        if spec.nodeName not in self.kwok_nodes:
            self._unknown_node()
            return False
        return True

    def _sync(self, uid: str, gone: Pod | None = None) -> None:
        pod = self.pods.get(uid)
        if self._shutting_down:
            return
        if pod is not None and uid not in self.finished and self._wanted(pod):
            self._ensure_running(uid, pod)
        else:
            self._ensure_stopped(uid, pod or gone)

    def _at_capacity(self) -> bool:
        limit = self.config.max_processes
        return limit is not None and len(self.procs) + len(self.starting) >= limit

    def _ensure_running(self, uid: str, pod: Pod) -> None:
        if uid in self.procs or uid in self.starting or uid in self.retry_timers:
            return
        if self._at_capacity():
            if uid not in self.waiting:
                self.waiting.add(uid)
                namespace, name, _ = _meta(pod)
                emit("waiting for a process slot", namespace=namespace, name=name)
            return
        self.waiting.discard(uid)
        self.starting[uid] = asyncio.create_task(self._start(uid, pod))

    def _ensure_stopped(self, uid: str, pod: Pod | None) -> None:
        self.waiting.discard(uid)
        timer = self.retry_timers.pop(uid, None)
        if timer is not None:
            timer.cancel()
        task = self.starting.pop(uid, None)
        if task is not None:
            task.cancel()  # _launch removes what it made; it spawns only after its last await
        proc = self.procs.get(uid)
        if proc is not None:
            self._stop(proc, grace_seconds(pod) if pod is not None else proc.grace)

    def _fill_slots(self) -> None:
        def created(uid: str) -> str:
            meta = self.pods[uid].metadata if uid in self.pods else None
            stamp = meta.creationTimestamp if meta is not None else None
            return stamp.isoformat() if stamp is not None else ""

        for uid in sorted(self.waiting, key=created):
            if self._at_capacity():
                return
            self.waiting.discard(uid)
            self._sync(uid)

    # -- starting ----------------------------------------------------------------
    async def _start(self, uid: str, pod: Pod) -> None:
        namespace, name, _ = _meta(pod)
        try:
            proc = await self._launch(pod)
        except Exception as err:  # a cancellation (pod gone) is not caught: it propagates
            self.starting.pop(uid, None)  # before _fill_slots, which counts starting pods
            if isinstance(err, StartError):
                self.finished.add(uid)
                emit("start failed", logging.ERROR, namespace=namespace, name=name, error=str(err))
                self._spawn_task(self._report_start_error(pod, str(err)))
            else:
                self._retry_later(uid, namespace, name, err)
            self._fill_slots()
            return
        self.starting.pop(uid, None)
        self.retries.pop(uid, None)
        self.procs[uid] = proc
        self._watch_exit(proc)
        emit(
            "started",
            namespace=namespace,
            name=name,
            pid=proc.popen.pid,
            command=proc.popen.args[0] if isinstance(proc.popen.args, list) else "",
            log=str(proc.log_file),
        )

    async def _launch(self, pod: Pod) -> PodProcess:
        namespace, name, uid = _meta(pod)
        assert pod.spec is not None
        container = pod.spec.containers[0]
        if not container.command:
            raise StartError(
                "the container has no command (the runner cannot see the image's entrypoint)"
            )
        pod_dir = self.work_dir / f"{namespace}_{name}_{uid[:8]}"
        pod_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        refreshers: list[asyncio.Task[None]] = []
        try:
            refs = ObjectCache(self.client, namespace)
            volumes = await materialize(self.client, pod, refs, pod_dir / "volumes")
            env = await container_env(pod, container, refs)
            mounts = mount_map(container, volumes)
            # a kubelet expands $(VAR) in command and args with the container's variables
            args = [expand(arg, env) for arg in container.command + (container.args or [])]
            if self.config.rootfs is not None:  # inside the image the mount paths are real
                scratch = pod_dir / "root"
                argv = podchroot.command(self.config.rootfs, scratch, pod, container, mounts, args)
                process_env = podchroot.environment(env, name)
                cwd = pod_dir
            else:
                argv = [rewrite(arg, mounts) for arg in args]
                process_env = self._process_env(env, mounts)
                cwd = (
                    Path(rewrite(container.workingDir, mounts)) if container.workingDir else pod_dir
                )
                if not cwd.is_dir():
                    cwd = pod_dir
            log_file = self.config.log_dir / f"{namespace}_{name}.log"
            with log_file.open("ab") as out:
                offset = out.tell()
                try:  # Popen, not asyncio's: only it takes preexec_fn; a fork is quick
                    popen = subprocess.Popen(  # noqa: ASYNC220
                        argv,
                        env=process_env,
                        cwd=cwd,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, signalled as one
                        preexec_fn=die_with_parent,
                    )
                except OSError as err:
                    raise StartError(f"cannot execute {argv[0]!r}: {err.strerror}") from err
            refreshers = [asyncio.create_task(token.keep_fresh()) for token in volumes.tokens]
        except BaseException:
            shutil.rmtree(pod_dir, ignore_errors=True)
            raise
        for unsupported in volumes.unsupported:
            emit(
                "volume type not supported; mounted as an empty directory",
                logging.WARNING,
                namespace=namespace,
                name=name,
                volume=unsupported,
            )
        return PodProcess(
            namespace,
            name,
            uid,
            container,
            popen,
            pod_dir,
            log_file,
            offset,
            grace_seconds(pod),
            refreshers=refreshers,
        )

    @staticmethod
    def _process_env(env: dict[str, str], mounts: list[tuple[str, Path]]) -> dict[str, str]:
        local = {key: os.environ[key] for key in ("HOME", "LANG") if key in os.environ}
        local.update({key: rewrite(value, mounts) for key, value in env.items()})
        # PATH names the image's directories, which do not exist here: use ours, venv first
        path = os.environ.get("PATH", os.defpath)
        local["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
        tmp = local_dir("/tmp", mounts)
        if tmp is not None and "TMPDIR" not in env:
            local["TMPDIR"] = str(tmp)
        return local

    def _retry_later(self, uid: str, namespace: str, name: str, err: Exception) -> None:
        attempt = self.retries.get(uid, 0) + 1
        self.retries[uid] = attempt
        delay = min(60.0, 2.0**attempt)
        expected = isinstance(err, PodConfigError | ApiError)
        reason = str(err) if expected else repr(err)
        emit(
            "cannot start yet",
            logging.WARNING,
            exc=None if expected else err,
            namespace=namespace,
            name=name,
            error=reason,
            retry_in=delay,
        )

        def retry() -> None:
            self.retry_timers.pop(uid, None)
            self._sync(uid)

        self.retry_timers[uid] = asyncio.get_running_loop().call_later(delay, retry)

    # -- stopping and exits ------------------------------------------------------
    def _stop(self, proc: PodProcess, grace: float) -> None:
        if proc.stopping:
            return  # the first deletion decides the grace; kwok's forced delete follows it
        proc.stopping = True
        emit("stopping", namespace=proc.namespace, name=proc.name, pid=proc.popen.pid, grace=grace)
        proc.signal_group(signal.SIGTERM)

        def kill() -> None:
            emit(
                "grace period over; killing",
                logging.WARNING,
                namespace=proc.namespace,
                name=proc.name,
                pid=proc.popen.pid,
            )
            proc.signal_group(signal.SIGKILL)

        proc.kill_timer = asyncio.get_running_loop().call_later(grace, kill)

    def _watch_exit(self, proc: PodProcess) -> None:
        """Learn of the exit from a pidfd on the event loop: no thread per child."""
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(proc.popen.pid)

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            proc.popen.wait()
            self._spawn_task(self._on_exit(proc))

        loop.add_reader(pidfd, exited)

    async def _on_exit(self, proc: PodProcess) -> None:
        finished_at = datetime.now(UTC)
        if proc.kill_timer is not None:
            proc.kill_timer.cancel()
        proc.signal_group(signal.SIGKILL)  # the container is gone, and so is all it started
        for refresher in proc.refreshers:
            refresher.cancel()
        self.procs.pop(proc.uid, None)
        if not self.procs:
            self._no_processes.set()
        shutil.rmtree(proc.pod_dir, ignore_errors=True)
        code = proc.popen.returncode
        emit(
            "exited",
            namespace=proc.namespace,
            name=proc.name,
            pid=proc.popen.pid,
            exit_code=code if code >= 0 else 128 - code,
            signal=-code if code < 0 else None,
            stopped=proc.stopping,
        )
        if not proc.stopping and not self._shutting_down:
            self.finished.add(proc.uid)
            message = None
            if code != 0 and proc.container.terminationMessagePolicy == "FallbackToLogsOnError":
                message = _log_tail(proc.log_file, proc.log_offset)
            patch = exit_status_patch(
                proc.container, code, proc.started_at, finished_at, message=message
            )
            await self._patch_status(proc.namespace, proc.name, patch)
        self._fill_slots()

    async def _report_start_error(self, pod: Pod, message: str) -> None:
        assert pod.spec is not None
        namespace, name, _ = _meta(pod)
        now = datetime.now(UTC)
        patch = exit_status_patch(pod.spec.containers[0], 128, now, now, "StartError", message)
        await self._patch_status(namespace, name, patch)

    async def _patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        phase = patch["status"]["phase"]
        for attempt in range(5):
            try:
                await self.client.patch(PodStatus, name, patch, namespace=namespace)
            except ApiError as err:
                if err.status.code == 404:
                    return  # the pod is gone: nobody to tell
                error = str(err)
            except Exception as err:  # connection trouble: try again shortly
                error = repr(err)
            else:
                emit("reported exit", namespace=namespace, name=name, phase=phase)
                return
            await asyncio.sleep(0.5 * 2**attempt)
        emit(
            "reporting the exit failed", logging.ERROR, namespace=namespace, name=name, error=error
        )

    def _spawn_task(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- shutdown ----------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop every child (SIGTERM, SIGKILL after at most ``shutdown_timeout``)."""
        self._shutting_down = True
        for timer in self.retry_timers.values():
            timer.cancel()
        pending = [*self.starting.values(), *([self._node_refresh] if self._node_refresh else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for proc in list(self.procs.values()):
            self._stop(proc, min(proc.grace, self.config.shutdown_timeout))
        if self.procs:
            self._no_processes.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_processes.wait(), self.config.shutdown_timeout + 5)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.client.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        emit("stopped", left_running=len(self.procs))


# -- running it ----------------------------------------------------------------
def default_log_dir() -> Path:
    return Path(tempfile.gettempdir()) / "agentarmy-podrunner" / "logs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agentarmy.devcluster.podrunner",
        description="Run agent pods on kwok nodes as local processes.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=default_log_dir(),
        help="where <namespace>_<pod>.log files go (default: %(default)s)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="parent of the per-pod directories (default: a fresh temp dir)",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        dest="namespaces",
        help="only run pods in this namespace (repeatable; default: all)",
    )
    parser.add_argument(
        "--max-processes",
        type=int,
        default=None,
        help="run at most N processes; other pods wait (0: run none)",
    )
    parser.add_argument(
        "--rootfs",
        type=Path,
        default=os.environ.get(ROOTFS_ENV) or None,
        help=f"run pod commands chrooted in this unpacked image (needs root; default: ${ROOTFS_ENV})",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, seconds children get before SIGKILL",
    )
    return parser


async def _serve(config: RunnerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await PodRunner(config).serve(stop)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rootfs is not None:
        if not (args.rootfs / "usr" / "bin").is_dir():
            parser.error(f"--rootfs {args.rootfs}: not an unpacked image (no usr/bin in it)")
        if os.geteuid() != 0:
            parser.error(f"--rootfs {args.rootfs}: running pods in an image needs root (chroot)")
    configure_json_logging()
    config = RunnerConfig(
        kubeconfig=args.kubeconfig,
        log_dir=args.log_dir,
        work_dir=args.work_dir,
        namespaces=frozenset(args.namespaces),
        max_processes=args.max_processes,
        shutdown_timeout=args.shutdown_timeout,
        rootfs=args.rootfs,
    )
    asyncio.run(_serve(config))
    return 0


def _synced(log_file: Path, offset: int) -> bool:
    with contextlib.suppress(OSError), log_file.open("rb") as logfile:
        logfile.seek(offset)
        return any(b'"msg":"synced"' in line for line in logfile)
    return False


def start_pod_runner(
    kubeconfig: Path, log_dir: Path, *options: str, timeout: float = 30.0
) -> subprocess.Popen[bytes]:
    """Start the runner as a child process and return once it has listed the pods.

    Its own log is ``<log_dir>/podrunner.log``; it dies with the calling process.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / RUNNER_LOG
    offset = log_file.stat().st_size if log_file.exists() else 0
    command = [
        sys.executable,
        "-m",
        "agentarmy.devcluster.podrunner",
        f"--kubeconfig={kubeconfig}",
        f"--log-dir={log_dir}",
        *options,
    ]
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    deadline = time.monotonic() + timeout
    while not _synced(log_file, offset):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process, grace=RUNNER_STOP_SECONDS)
            tail = log_file.read_text(errors="replace")[offset:][-2000:]
            raise RuntimeError(f"the pod runner did not start; its log ({log_file}) ends:\n{tail}")
        time.sleep(0.05)
    return process


@contextlib.contextmanager
def pod_runner(kubeconfig: Path, log_dir: Path, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """``with pod_runner(kubeconfig, log_dir, "--namespace", ns) as runner: ...``"""
    process = start_pod_runner(kubeconfig, log_dir, *options)
    try:
        yield process
    finally:
        stop_process(process, grace=RUNNER_STOP_SECONDS)  # on SIGTERM it stops its children


if __name__ == "__main__":
    sys.exit(main())
