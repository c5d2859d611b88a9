"""Shared fixtures. The `cluster` fixture starts one real local control plane for
the whole session (or uses AGENTARMY_KUBECONFIG, e.g. a kind cluster)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentarmy.api import crdgen
from agentarmy.devcluster.cluster import DevCluster, ExistingCluster

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cluster() -> Iterator[DevCluster | ExistingCluster]:
    external = os.environ.get("AGENTARMY_KUBECONFIG")
    if external:
        existing = ExistingCluster(Path(external))
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
def namespace(cluster: DevCluster | ExistingCluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
