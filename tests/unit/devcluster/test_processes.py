"""The process helpers with real child processes: ports lost to a race, stopping."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentarmy.devcluster.processes import (
    PORT_ATTEMPTS,
    ProcessExited,
    free_port,
    lost_port_race,
    start_on_free_port,
    stop_process,
)

# Binds the port given as argv[1] and serves until stopped; on a taken port it exits
# with Python's own "[Errno 98] Address already in use" message, as the router does.
SERVER = textwrap.dedent(
    """
    import socket, sys, time
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError as err:
        print(f"cannot bind 127.0.0.1:{sys.argv[1]}: {err}", flush=True)
        sys.exit(1)
    sock.listen()
    print("listening", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_go_and_python_bind_failures_count_as_lost_races(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_text(
        "I0101 starting\n"
        "E0101 run.go:72] listen tcp 127.0.0.1:48527: bind: address already in use\n"
    )
    assert lost_port_race(log, 0, [48527])
    log.write_text(  # uvicorn, as the router logs it
        '{"level":"error","logger":"uvicorn.error","msg":"[Errno 98] error while attempting '
        "to bind on address ('127.0.0.1', 3150): address already in use\"}\n"
    )
    assert lost_port_race(log, 0, [3150])
    log.write_text("listen tcp 127.0.0.1:3150: bind: permission denied\n")
    assert not lost_port_race(log, 0, [3150])  # another error: a fresh port would not help


def test_only_the_latest_launch_and_its_own_ports_count(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    earlier = "listen tcp 127.0.0.1:4000: bind: address already in use\n"
    log.write_text(earlier + "panic: out of memory\n")
    assert not lost_port_race(log, len(earlier), [4000])  # this launch failed otherwise
    assert not lost_port_race(log, 0, [4001])  # someone else's port
    assert not lost_port_race(tmp_path / "never-written.log", 0, [4000])


def _launcher(log: Path, ports: list[int], launched: list[subprocess.Popen[bytes]]) -> None:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(ports[-1])], stdout=out, stderr=subprocess.STDOUT
        )
    launched.append(process)
    # Its own word, not a connect: the port's other owner would answer that.
    deadline = time.monotonic() + 10
    while "listening" not in log.read_text():
        if process.poll() is not None:
            raise ProcessExited(f"exited with {process.returncode}")
        assert time.monotonic() < deadline, "the server neither listened nor exited"
        time.sleep(0.02)


def test_a_child_that_lost_its_port_starts_again_on_a_fresh_one(
    tmp_path: Path, taken_port: int
) -> None:
    log = tmp_path / "server.log"
    ports = [taken_port]
    launched: list[subprocess.Popen[bytes]] = []
    try:
        start_on_free_port(
            lambda: _launcher(log, ports, launched),
            log,
            lambda: ports[-1],
            lambda: ports.append(free_port()),
        )
        assert len(launched) == 2 and launched[0].returncode == 1
        assert ports[-1] != taken_port and launched[-1].poll() is None
        with socket.create_connection(("127.0.0.1", ports[-1]), timeout=5):
            pass
    finally:
        for process in launched:
            stop_process(process)


def test_a_port_that_may_not_move_or_keeps_being_taken_fails(
    tmp_path: Path, taken_port: int
) -> None:
    log = tmp_path / "server.log"
    launched: list[subprocess.Popen[bytes]] = []
    with pytest.raises(ProcessExited):
        start_on_free_port(
            lambda: _launcher(log, [taken_port], launched), log, lambda: taken_port, None
        )
    assert len(launched) == 1
    with pytest.raises(ProcessExited):  # every fresh port is "taken" too: bounded
        start_on_free_port(
            lambda: _launcher(log, [taken_port], launched), log, lambda: taken_port, lambda: None
        )
    assert len(launched) == 1 + PORT_ATTEMPTS


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)",
        ]
    )
    _wait_for_file(ready)
    started = time.monotonic()
    assert stop_process(stubborn, grace=0.5) == -9
    assert time.monotonic() - started < 5
    assert stop_process(None) is None


def test_group_stop_ends_the_grandchildren_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, subprocess, sys, time;"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid)); time.sleep(60)",
        ],
        start_new_session=True,
    )
    _wait_for_file(pid_file)
    grandchild = int(pid_file.read_text())
    assert stop_process(parent, grace=5, group=True) == -15
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def _wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (gone) parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_free_port_gives_a_bindable_port() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if someone listens there
