"""Two router processes on one NATS JetStream: agents on either replica share one queue,
no task runs twice at once, each gets exactly one outcome, and one replica can die."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agentarmy.api import runtime_env as env
from agentarmy.api import wire
from agentarmy.api.task import TERMINAL_PHASES
from agentarmy.devcluster.processes import stop_process
from agentarmy.router.client import RouterClient
from agentarmy.router.testing import NatsServer, RouterProcess, write_token_file

pytestmark = pytest.mark.integration
ADMIN = "replica-admin-token-01"
AGENT = "replica-agent-token-01"


def start_agent(
    router_url: str, name: str, token_file: Path, logs: Path
) -> subprocess.Popen[bytes]:
    agent_env = {
        **os.environ,
        env.ROUTER_URL: router_url,
        env.AGENT_NAME: name,
        env.FLEET: "fa",
        env.CAPABILITIES: "test",
        env.CONCURRENCY: "4",
        env.HEARTBEAT_INTERVAL: "1s",
        env.TOKEN_FILE: str(token_file),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "agentarmy.cli.main", "agent"],
        env=agent_env,
        stdout=(logs / f"{name}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_two_replicas_share_the_work(tmp_path: Path, nats_server: NatsServer) -> None:
    tokens = write_token_file(
        tmp_path / "tokens.yaml",
        [
            {"token": ADMIN, "name": "admin", "role": "admin"},
            {"token": AGENT, "name": "fa", "role": "agent", "namespace": "default", "fleet": "fa"},
        ],
    )
    (tmp_path / "agent.token").write_text(AGENT)
    store = f"{nats_server.url}?prefix=rep{uuid.uuid4().hex[:8]}"
    args = ["--lease", "3s", "--retry-backoff", "100ms", "--reap-interval", "200ms"]
    first = RouterProcess(store, tokens, tmp_path / "router-1.log", extra_args=args).start()
    second = RouterProcess(store, tokens, tmp_path / "router-2.log", extra_args=args).start()
    agents = [
        start_agent(router.url, f"a{i}-{n}", tmp_path / "agent.token", tmp_path)
        for n, router in enumerate((first, second))
        for i in range(2)
    ]
    try:
        async with (
            RouterClient(first.url, ADMIN) as via_first,
            RouterClient(second.url, ADMIN) as via_second,
        ):
            for _ in range(200):  # all four agents registered, two through each replica
                stats = await via_second.stats()
                if sum(len(f.agents) for f in stats.fleets) == 4:
                    break
                await asyncio.sleep(0.1)
            requests = [
                wire.SubmitTask(
                    fleet="fa", capability="test", input={"sleep": 0.05}, idempotencyKey=f"k{i}"
                )
                for i in range(400)
            ]
            accepted = (await via_first.submit_batch(requests[:200])).results
            accepted += (await via_second.submit_batch(requests[200:])).results
            again = await via_second.submit_batch(requests[:10])  # the key is shared by replicas
            assert [r.task.id for r in again.results] == [r.task.id for r in accepted[:10]]
            assert not any(r.created for r in again.results)
            ids = [r.task.id for r in accepted]
            await asyncio.sleep(0.5)
            first.kill()  # its agents' claims fail until it is back; the other replica goes on
            await asyncio.sleep(1.0)
            first.start()
            for _ in range(300):
                tasks = [await via_second.get(task_id) for task_id in ids]
                if all(t.phase in TERMINAL_PHASES for t in tasks):
                    break
                await asyncio.sleep(0.2)
    finally:
        for process in agents:
            stop_process(process)
        first.stop()
        second.stop()
    phases = collections.Counter(t.phase for t in tasks)
    assert phases == {"Succeeded": 400}, phases
    assert all(sum(a.outcome == "Succeeded" for a in t.attempts) == 1 for t in tasks)
    served_by = {a.agent.rsplit("-", 1)[1] for t in tasks for a in t.attempts}
    assert served_by == {"0", "1"}, "agents of both replicas should have run tasks"
