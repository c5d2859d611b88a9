"""The devcluster starts even when other processes take ports it picked before its
components bind them (many servers start at once in a test run)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import yaml

from agentarmy.devcluster.cluster import DevCluster, Ports

pytestmark = pytest.mark.integration


@pytest.fixture
def two_taken_ports() -> Iterator[tuple[int, int]]:
    with ExitStack() as stack:
        ports = []
        for _ in range(2):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            ports.append(sock.getsockname()[1])
        yield ports[0], ports[1]


def test_components_that_lose_their_port_start_again_on_a_fresh_one(
    monkeypatch: pytest.MonkeyPatch, two_taken_ports: tuple[int, int]
) -> None:
    taken_apiserver, taken_scheduler = two_taken_ports
    pick = Ports.pick_again

    def pick_then_lose_the_race(self: Ports, names: tuple[str, ...]) -> None:
        pick(self, names)
        if names == tuple(Ports.__dataclass_fields__):  # the first pick of all of them
            self.apiserver, self.scheduler = taken_apiserver, taken_scheduler

    monkeypatch.setattr(Ports, "pick_again", pick_then_lose_the_race)
    with DevCluster(nodes=1) as cluster:
        assert cluster.ports.apiserver != taken_apiserver
        assert cluster.ports.scheduler != taken_scheduler
        kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
        assert kubeconfig["clusters"][0]["cluster"]["server"] == cluster.server
        assert "kwok-node-0" in cluster.kubectl("get", "nodes", "-o", "name").stdout
        logs = cluster.workdir / "logs"  # type: ignore[operator]
        for name, port in (
            ("kube-apiserver", taken_apiserver),
            ("kube-scheduler", taken_scheduler),
        ):
            assert f"{port}: bind: address already in use" in (logs / f"{name}.log").read_text()
        scheduler = next(c for c in cluster.components if c.name == "kube-scheduler")
        assert scheduler.launches == 2 and scheduler.process is not None
        assert scheduler.process.poll() is None
