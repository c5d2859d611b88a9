"""Shared fixtures. The `cluster` fixture starts one real local control plane for
the whole session (or uses AGENTARMY_KUBECONFIG, e.g. a kind cluster)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentarmy.api import crdgen
from agentarmy.devcluster.admission import LocalAdmission, install_admission, remove_admission
from agentarmy.devcluster.cluster import DevCluster, ExistingCluster
from agentarmy.devcluster.operator_process import OPERATOR_NAMESPACE

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


@pytest.fixture(scope="module")
def admission(cluster: DevCluster | ExistingCluster) -> Iterator[LocalAdmission]:
    """The admission webhook configured for the modules that ask for it: from then on
    Agent, Fleet and Policy writes need an operator replica serving it (fails closed)."""
    local = install_admission(cluster, OPERATOR_NAMESPACE)
    try:
        yield local
    finally:
        remove_admission(cluster, OPERATOR_NAMESPACE)


@pytest.fixture(scope="session")
def agent_image() -> Path:
    """hack/build-image's folder (oci/, rootfs/, image.json), built now if its inputs changed.

    Building (mmdebstrap, buildah) and running the image (chroot) need root: without it
    the test fails naming the reason rather than skipping, so the image is never untested.
    """
    if os.geteuid() != 0:
        pytest.fail(
            "the agentarmy image tests need root: hack/build-image runs mmdebstrap and "
            "buildah (chroot isolation), and the pod runner chroots into the image",
            pytrace=False,
        )
    built = subprocess.run(
        [str(REPO / "hack" / "build-image")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"hack/build-image failed:\n{built.stderr[-4000:]}", pytrace=False)
    return Path(built.stdout.strip().splitlines()[-1])
