"""The image itself works as an agent: with AGENTARMY_POD_ROOTFS set, the pod
runner runs each agent pod's command chrooted in hack/build-image's rootfs, as
the pod's non-root user with its volumes (the projected ServiceAccount token the
router checks by TokenReview, an emptyDir /tmp); a Fleet of such agents becomes
Available and completes tasks through the router."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentarmy.api import wire
from agentarmy.devcluster.podrunner import ROOTFS_ENV
from agentarmy.devcluster.stack import Stack, local_stack, wait_for_agents
from agentarmy.router.client import RouterClient
from tests.e2e.test_fleet_e2e import agent_pids
from tests.integration.operator_process import wait_for

pytestmark = pytest.mark.e2e

REPLICAS = 2
TASKS = 12


@pytest.fixture(scope="module")
def image_stack(
    cluster: Any, agent_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ROOTFS_ENV, str(agent_image / "rootfs"))  # read by the pod runner it starts
        with local_stack(cluster, "e2e-image", tmp_path_factory.mktemp("stack")) as running:
            yield running


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


def test_agents_from_the_image_complete_tasks(cluster: Any, image_stack: Stack) -> None:
    ns = image_stack.namespace
    fleet = {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": "imaged"},
        "spec": {"replicas": REPLICAS, "template": {"spec": {"capabilities": ["echo"]}}},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(fleet))
    cluster.kubectl("wait", "-n", ns, "--for=condition=Available", "fleet/imaged", "--timeout=120s")
    asyncio.run(wait_for_agents(image_stack.router_url, image_stack.admin_token, ns, REPLICAS))

    out = cluster.kubectl("get", "agents", "-n", ns, "-o", "name").stdout.split()
    names = sorted(name.split("/", 1)[1] for name in out)
    wait_for(lambda: all(agent_pids(ns, n) for n in names), 60, what="agent processes")
    for name in names:
        (pid,) = agent_pids(ns, name)
        root = Path(f"/proc/{pid}/root")
        # the process runs the image's armyctl, chrooted, as the pods' non-root user
        assert os.readlink(root) != "/", f"{name} is not chrooted"
        assert (root / "usr/local/bin/armyctl").is_file()
        assert not (root / sys.executable.lstrip("/")).exists(), "the host's venv is visible"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"/usr/local/bin/armyctl" in cmdline, cmdline
        assert uid_of(pid) == 65532
        # the projected token, mounted at /var/run/secrets/agentarmy.io (the image's /var/run
        # is a symlink to /run, which read from here would resolve against the host's root)
        assert (root / "run/secrets/agentarmy.io/token").is_file()

    async def run_tasks() -> list[wire.Task]:
        async with RouterClient(image_stack.router_url, image_stack.client_token) as client:
            submitted = await client.submit_batch(
                [
                    wire.SubmitTask(
                        namespace=ns,
                        fleet="imaged",
                        capability="echo",
                        input={"text": f"from the image {i}"},
                        timeout="20s",
                    )
                    for i in range(TASKS)
                ]
            )
            ids = [r.task.id for r in submitted.results]
            return list(await asyncio.gather(*(client.wait(i, timeout_seconds=90) for i in ids)))

    done = asyncio.run(run_tasks())
    assert [t.phase for t in done] == ["Succeeded"] * TASKS
    assert {t.agent for t in done} <= {f"{ns}/{n}" for n in names}
    assert [t.result for t in done] == [
        {"echo": {"text": f"from the image {i}"}} for i in range(TASKS)
    ]
