"""Shared fixtures. The `cluster` fixture starts one real local control plane for
the whole session (or uses AGENTARMY_KUBECONFIG, e.g. a kind cluster)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agentarmy.api import crdgen
from agentarmy.devcluster.cluster import DevCluster, install_crds, run_kubectl

REPO = Path(__file__).resolve().parents[1]


class ExternalCluster:
    """An existing cluster named by AGENTARMY_KUBECONFIG."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
        self.server: str = cluster["cluster"]["server"]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.kubeconfig, *args, input=input, check=check, timeout=timeout)

    def install_crds(self, crd_dir: Path, timeout: float = 60) -> None:
        install_crds(self.kubeconfig, crd_dir, timeout)


@pytest.fixture(scope="session")
def cluster() -> Iterator[DevCluster | ExternalCluster]:
    external = os.environ.get("AGENTARMY_KUBECONFIG")
    if external:
        existing = ExternalCluster(Path(external))
        existing.install_crds(crdgen.default_output())
        yield existing
        return
    dev = DevCluster()
    dev.start()
    try:
        dev.install_crds(crdgen.default_output())
        yield dev
    finally:
        dev.stop()


@pytest.fixture
def namespace(cluster: DevCluster | ExternalCluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
