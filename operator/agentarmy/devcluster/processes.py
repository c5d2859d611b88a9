"""Child processes of the devcluster, tests, demos and benchmarks: ports and stopping.

``free_port()`` asks the kernel for a loopback port nobody listens on. Between
that answer and the child's own bind another process can take the port (tests
start many servers at once), so a child that exits because its address is in
use is started again on a fresh port, at most ``PORT_ATTEMPTS`` times in all
(``lost_port_race`` tells that exit from any other).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

PORT_ATTEMPTS = 3
PR_SET_PDEATHSIG = 1
_ADDRESS_IN_USE = "address already in use"  # Go's and Python's (errno 98) wording alike
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


class ProcessExited(RuntimeError):
    """A child ended before it was ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_size(log: Path) -> int:
    """Where a child's output starts in ``log``: what it holds so far."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def lost_port_race(log: Path, since: int, ports: Iterable[int]) -> bool:
    """True if ``log``, from byte ``since`` on, says binding one of ``ports`` failed
    because the address was in use (the child lost its port to another process)."""
    try:
        with log.open("rb") as file:
            file.seek(since)
            text = file.read().decode(errors="replace")
    except FileNotFoundError:
        return False
    wanted = [str(port) for port in ports]
    return any(
        _ADDRESS_IN_USE in line.lower() and any(port in line for port in wanted)
        for line in text.splitlines()
    )


def listens(pid: int, port: int) -> bool:
    """True if process ``pid`` itself holds a socket listening on TCP ``port``. A
    connect would not tell: the process that took the port answers it too."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def _listening_inodes(port: int) -> set[str]:
    """``socket:[inode]`` of every socket listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(f"socket:[{inode}]")
    return found


def start_on_free_port(
    start: Callable[[], None],
    log: Path,
    port: Callable[[], int],
    pick_port: Callable[[], None] | None,
) -> None:
    """Run ``start`` (launch a child writing to ``log``, wait until it is ready, raise
    ProcessExited if it ends first). If it lost its port to another process and
    ``pick_port`` is given (the port is not yet known to anyone), pick another and
    start again."""
    for launch in range(1, PORT_ATTEMPTS + 1):
        since = log_size(log)
        try:
            start()
            return
        except ProcessExited:
            if pick_port is None or launch == PORT_ATTEMPTS:
                raise
            if not lost_port_race(log, since, [port()]):
                raise
            pick_port()


def die_with_parent() -> None:
    """preexec_fn: the kernel kills the child when its parent exits."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_process(
    process: subprocess.Popen[bytes] | None, grace: float = 10.0, *, group: bool = False
) -> int | None:
    """SIGTERM, then SIGKILL if it has not ended after ``grace`` seconds; returns the
    exit code (None if never started). ``group``: signal the child's whole process
    group, for a child started with ``start_new_session=True`` that has children."""
    if process is None:
        return None
    if process.poll() is None:
        _signal(process, signal.SIGTERM, group)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL, group)
            process.wait()
    return process.returncode


def kill_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL and reap: no shutdown code runs, like a node losing power."""
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
