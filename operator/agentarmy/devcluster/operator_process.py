"""Run the real operator as a local process against a cluster (tests, demo, benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from agentarmy.devcluster.admission import LocalAdmission
from agentarmy.devcluster.processes import (
    PORT_ATTEMPTS,
    free_port,
    kill_process,
    listens,
    log_size,
    lost_port_race,
    stop_process,
)

OPERATOR_NAMESPACE = "agentarmy-system"


class OperatorProcess:
    """One operator replica on a free health port; short lease timings by default.

    ``wait_ready`` starts it again on a fresh health port if another process took the
    port first (until it was ready once: then the port is known to whoever reads it)."""

    def __init__(
        self,
        kubeconfig: Path,
        identity: str,
        lease_seconds: float = 6.0,
        router_url: str = "http://127.0.0.1:1",
        extra_env: dict[str, str] | None = None,
        admission: LocalAdmission | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.extra_env = {**(admission.operator_env() if admission else {}), **(extra_env or {})}
        self.identity = identity
        self.port = free_port()
        self.port_may_move = True
        self.launches = 0
        self.log_offset = 0  # where the latest launch's output starts in the log
        self.lease_seconds = lease_seconds
        self.router_url = router_url
        self.log = Path(tempfile.mkstemp(prefix=f"operator-{identity}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "POD_NAME": self.identity,
            "AGENTARMY_HEALTH_PORT": str(self.port),
            "AGENTARMY_LEASE_SECONDS": str(self.lease_seconds),
            "AGENTARMY_RENEW_SECONDS": "1",
            "AGENTARMY_RETRY_SECONDS": "0.5",
            "AGENTARMY_ROUTER_URL": self.router_url,
            **self.extra_env,
        }
        self.log_offset = log_size(self.log)
        self.launches += 1
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agentarmy.operator.main"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def metrics(self) -> dict[str, float]:
        """Sample values by full series name (labels included)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("agentarmy_") and " " in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def is_leader(self) -> bool:
        try:
            return self.metrics().get("agentarmy_operator_leader", 0.0) == 1.0
        except OSError:
            return False

    def is_ready(self) -> bool:
        """/readyz: the Policy catalog is loaded, so admission can answer."""
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> OperatorProcess:
        deadline = time.monotonic() + timeout
        while not (self.is_ready() and listens(self.pid, self.port)):
            if self.process is not None and self.process.poll() is not None:
                if not self._lost_health_port():
                    raise RuntimeError(f"operator {self.identity} exited:\n{self.tail()}")
                self.port = free_port()
                self.start()
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator {self.identity} not ready in {timeout:.0f}s")
            time.sleep(0.2)
        self.port_may_move = False
        return self

    def _lost_health_port(self) -> bool:
        return (
            self.port_may_move
            and self.launches < PORT_ATTEMPTS
            and lost_port_race(self.log, self.log_offset, [self.port])
        )

    def stop(self) -> None:
        stop_process(self.process, grace=20)

    def kill(self) -> None:
        kill_process(self.process)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid
