"""Run a pod's command inside an image's root filesystem, as a container runtime would.

The devcluster pod runner uses it when ``AGENTARMY_POD_ROOTFS`` (or its
``--rootfs``) names an unpacked image, such as ``rootfs/`` of
``hack/build-image``: then an agent pod runs the image's own Python and
``armyctl``, not the host's venv.

    python -I -m agentarmy.devcluster.podchroot --rootfs DIR --scratch DIR
        --user UID:GID [--group GID ...] [--bind SRC:DEST[:ro] ...] [--read-only]
        [--workdir DIR] -- COMMAND [ARG ...]

Needs root. Everything happens in a private mount namespace, so nothing leaks
to the host and all of it vanishes with the process: an overlay with the image
read-only below and a tmpfs above (the image stays untouched and shared by
every pod; mount points for volumes can be made), the host's /proc, a minimal
/dev, the host's /etc/hosts and /etc/resolv.conf (a kubelet mounts its own),
each volume bound at its mount path (resolved inside the image, so the image's
symlinks such as /var/run -> /run are followed there), then the root made
read-only when the container asks for it, then chroot, drop to the pod's user
and groups, and exec the command: same pid, so the runner's signals and its
pidfd reach the command itself.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightkube.models.core_v1 import Container
    from lightkube.resources.core_v1 import Pod

IMAGE_USER = 65532
"""The image's USER (hack/build-image, agent-image/Dockerfile), for pods that set no runAsUser."""
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The image's PATH (its config's Env), for pods that set none."""
START_ERROR_EXIT = 128
"""What a kubelet reports when a container's command cannot be executed."""

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def raw(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    result = _libc.mount(raw(source), raw(target), raw(fstype), flags, raw(data) if data else None)
    _check(result, f"mount {source or fstype} on {target}")


@dataclass(frozen=True)
class Bind:
    """A volume: a host path bound at ``dest`` inside the image."""

    source: Path
    dest: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Bind:
        source, _, rest = text.partition(":")
        dest, _, mode = rest.partition(":")
        if not source or not dest.startswith("/") or mode not in ("", "ro"):
            raise argparse.ArgumentTypeError(f"--bind {text!r}: want SRC:/DEST or SRC:/DEST:ro")
        return cls(Path(source), dest, mode == "ro")

    def arg(self) -> str:
        return f"{self.source}:{self.dest}{':ro' if self.read_only else ''}"


# -- what the pod runner calls -------------------------------------------------------
def pod_identity(pod: Pod, container: Container) -> tuple[int, int, list[int]]:
    """uid, gid and supplementary groups from the security contexts (container's first)."""
    pod_sc = pod.spec.securityContext if pod.spec is not None else None
    sc = container.securityContext

    def pick(field: str) -> int | None:
        for context in (sc, pod_sc):
            value = getattr(context, field, None) if context is not None else None
            if value is not None:
                return int(value)
        return None

    uid = pick("runAsUser")
    uid = IMAGE_USER if uid is None else uid
    gid = pick("runAsGroup")
    groups = list(pod_sc.supplementalGroups or []) if pod_sc is not None else []
    if pod_sc is not None and pod_sc.fsGroup is not None:
        groups.append(pod_sc.fsGroup)
    return uid, uid if gid is None else gid, sorted(set(groups))


def command(
    rootfs: Path,
    scratch: Path,
    pod: Pod,
    container: Container,
    mounts: Sequence[tuple[str, Path]],
    argv: Sequence[str],
) -> list[str]:
    """The runner's argv for ``argv`` run inside ``rootfs`` with the pod's user and volumes."""
    uid, gid, groups = pod_identity(pod, container)
    read_only = {
        m.mountPath.rstrip("/") or "/": bool(m.readOnly) for m in container.volumeMounts or []
    }
    sc = container.securityContext
    result = [
        sys.executable,
        "-I",  # the pod's PYTHON* variables are for the pod's Python, not this one
        "-m",
        "agentarmy.devcluster.podchroot",
        f"--rootfs={rootfs}",
        f"--scratch={scratch}",
        f"--user={uid}:{gid}",
        *(f"--group={group}" for group in groups),
        *(
            f"--bind={Bind(local, path, read_only.get(path, False)).arg()}"
            for path, local in mounts
        ),
    ]
    if sc is not None and sc.readOnlyRootFilesystem:
        result.append("--read-only")
    if container.workingDir:
        result.append(f"--workdir={container.workingDir}")
    return [*result, "--", *argv]


def environment(pod_env: dict[str, str], hostname: str) -> dict[str, str]:
    """The pod's variables over the image's defaults; nothing of the host's environment."""
    return {"PATH": IMAGE_PATH, "HOSTNAME": hostname, **pod_env}


# -- inside the child ----------------------------------------------------------------
def _overlay(rootfs: Path, scratch: Path) -> Path:
    for path in (rootfs, scratch):
        if any(c in str(path) for c in ",:"):  # they would split the overlay's options
            raise ValueError(f"{path}: a path with ',' or ':' cannot be an overlay layer")
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    _mount("tmpfs", str(scratch), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")
    upper, work, root = scratch / "upper", scratch / "work", scratch / "root"
    for path in (upper, work, root):
        path.mkdir()
    options = f"lowerdir={rootfs},upperdir={upper},workdir={work}"
    _mount("overlay", str(root), "overlay", 0, options)
    return root


def _minimal_dev(root: Path) -> None:
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    _mount("tmpfs", str(dev), "tmpfs", MS_NOSUID, "mode=0755")
    for name in DEVICES:
        if not Path(f"/dev/{name}").exists():
            continue
        (dev / name).touch()
        _mount(f"/dev/{name}", str(dev / name), None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        (dev / name).symlink_to(target)
    (dev / "stdout").symlink_to("/proc/self/fd/1")
    (dev / "stderr").symlink_to("/proc/self/fd/2")
    (dev / "shm").mkdir()
    _mount("tmpfs", str(dev / "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def _host_file(root: Path, path: str) -> None:
    inside = root / path.lstrip("/")
    if Path(path).is_file() and not inside.is_symlink():
        inside.touch()
        _mount(path, str(inside), None, MS_BIND)


def _bind_volumes(sources: Sequence[tuple[Bind, int]]) -> None:
    """After chroot: mount points made inside the image, sources reached through their fds."""
    for bind, fd in sorted(sources, key=lambda pair: pair[0].dest.count("/")):
        dest = Path(bind.dest)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.touch()
        _mount(f"/proc/self/fd/{fd}", bind.dest, None, MS_BIND | MS_REC)
        if bind.read_only:
            _mount(None, bind.dest, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)


def _home(uid: int) -> str:
    """The user's home from the image's /etc/passwd (a runtime's rule), else /."""
    try:
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 5 and fields[2] == str(uid):
                return fields[5]
    except OSError:
        pass
    return "/"


def enter(args: argparse.Namespace) -> None:
    """Build the pod's root, chroot into it and become the pod's user (then exec)."""
    parent = os.getppid()
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # mounts below stay in this namespace
    root = _overlay(args.rootfs.resolve(), args.scratch.resolve())
    (root / "proc").mkdir(exist_ok=True)
    _mount("/proc", str(root / "proc"), None, MS_BIND | MS_REC)
    _minimal_dev(root)
    for path in ("/etc/hosts", "/etc/resolv.conf"):
        _host_file(root, path)
    # opened before chroot: afterwards the host's paths are out of reach, their fds are not
    sources = [(bind, os.open(bind.source, os.O_PATH)) for bind in args.binds]
    os.chroot(root)
    os.chdir("/")
    _bind_volumes(sources)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)  # a runtime creates a missing workingDir
    if args.read_only:
        _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chdir(workdir)
    uid, _, gid = args.user.partition(":")
    os.setgroups(args.groups)
    os.setgid(int(gid or uid))
    os.setuid(int(uid))
    # changing credentials cleared the runner's parent-death signal: set it again
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    os.environ.setdefault("HOME", _home(int(uid)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agentarmy.devcluster.podchroot",
        description="Run a command inside an image's root filesystem as a pod would.",
    )
    parser.add_argument("--rootfs", type=Path, required=True, help="the unpacked image")
    parser.add_argument(
        "--scratch", type=Path, required=True, help="an empty folder for the overlay's upper layer"
    )
    parser.add_argument("--user", default=f"{IMAGE_USER}:{IMAGE_USER}", help="UID[:GID]")
    parser.add_argument("--group", type=int, action="append", default=[], dest="groups")
    parser.add_argument("--bind", type=Bind.parse, action="append", default=[], dest="binds")
    parser.add_argument("--read-only", action="store_true", help="readOnlyRootFilesystem")
    parser.add_argument("--workdir", default="/")
    parser.add_argument("argv", nargs="+", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        enter(args)
        os.execvp(args.argv[0], args.argv)  # PATH lookup with the pod's PATH
    except OSError as err:
        print(f"podchroot: cannot run {args.argv[0]!r} in {args.rootfs}: {err}", file=sys.stderr)
    return START_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
