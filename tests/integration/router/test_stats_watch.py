"""``GET /v1/stats/watch`` on real router processes: it answers as soon as the figures the
operator acts on move (on SQLite, and on NATS across replicas: a submit to one replica
wakes a watcher on the other), holds the same token until its timeout when they do not,
and ignores what the operator does not act on (heartbeats)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentarmy.api import wire
from agentarmy.router.client import RouterClient, RouterError
from agentarmy.router.testing import NatsServer, RouterProcess, write_token_file

pytestmark = pytest.mark.integration
ADMIN = "watch-admin-token-0001"
CLIENT = "watch-client-token-001"
AGENT = "watch-agent-token-0001"


@pytest.fixture(params=["sqlite", "nats"])
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer
) -> Iterator[tuple[RouterProcess, RouterProcess]]:
    """(where tasks are submitted, where the watcher waits): one SQLite router twice, or
    two router processes on one NATS JetStream."""
    tokens = write_token_file(
        tmp_path / "tokens.yaml",
        [
            {"token": ADMIN, "name": "admin", "role": "admin"},
            {"token": CLIENT, "name": "alice", "role": "client", "namespace": "default"},
            {"token": AGENT, "name": "fw", "role": "agent", "namespace": "default", "fleet": "fw"},
        ],
    )
    if request.param == "sqlite":
        with RouterProcess(
            f"sqlite:///{tmp_path / 'router.db'}", tokens, tmp_path / "r.log"
        ) as one:
            yield one, one
        return
    store = f"{nats_server.url}?prefix=w{uuid.uuid4().hex[:8]}"
    with (
        RouterProcess(store, tokens, tmp_path / "router-1.log") as first,
        RouterProcess(store, tokens, tmp_path / "router-2.log") as second,
    ):
        yield first, second


def fleet(answer: wire.StatsWatch, name: str) -> wire.FleetStats:
    assert answer.stats is not None
    (found,) = [f for f in answer.stats.fleets if f.fleet == name]
    return found


async def test_a_submit_wakes_a_watcher_at_once(
    replicas: tuple[RouterProcess, RouterProcess],
) -> None:
    submit_to, watch_on = replicas
    async with (
        RouterClient(submit_to.url, ADMIN) as submitter,
        RouterClient(watch_on.url, ADMIN) as watcher,
    ):
        started = time.monotonic()
        first = await watcher.watch_stats("", 30)
        assert first.changed and first.stats is not None and first.token
        assert time.monotonic() - started < 1.0, "no token held: the answer comes at once"

        started = time.monotonic()
        unchanged = await watcher.watch_stats(first.token, 1)
        waited = time.monotonic() - started
        assert (unchanged.changed, unchanged.token, unchanged.stats) == (False, first.token, None)
        assert 0.9 <= waited < 3.0

        waiting = asyncio.create_task(watcher.watch_stats(first.token, 30))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        submitted_at = time.monotonic()
        await submitter.submit(wire.SubmitTask(fleet="fw", capability="test"))
        answer = await asyncio.wait_for(waiting, 5)
        woke_after = time.monotonic() - submitted_at
        assert answer.changed and answer.token != first.token
        assert fleet(answer, "fw").queued == 1
        assert woke_after < 1.0, f"the watcher woke {woke_after:.2f}s after the submit"

        # Held tokens name figures, not replicas: the other replica agrees on them.
        again = await submitter.watch_stats(answer.token, 1)
        assert (again.changed, again.token) == (False, answer.token)


async def test_heartbeats_do_not_wake_a_watcher_but_a_new_agent_does(
    replicas: tuple[RouterProcess, RouterProcess],
) -> None:
    submit_to, watch_on = replicas
    async with (
        RouterClient(submit_to.url, AGENT) as agent,
        RouterClient(watch_on.url, ADMIN) as watcher,
    ):
        before = await watcher.watch_stats("", 1)
        waiting = asyncio.create_task(watcher.watch_stats(before.token, 30))
        await agent.register(
            wire.RegisterAgent(
                namespace="default", name="a1", fleet="fw", capabilities=["test"], concurrency=1
            )
        )
        registered = await asyncio.wait_for(waiting, 5)
        assert registered.changed
        assert [a.live for a in fleet(registered, "fw").agents] == [True]

        beating = asyncio.create_task(watcher.watch_stats(registered.token, 2))
        for _ in range(4):
            await agent.heartbeat("default", "a1", wire.HeartbeatRequest())
            await asyncio.sleep(0.2)
        quiet = await beating
        assert (quiet.changed, quiet.token) == (False, registered.token)


async def test_only_admins_watch_and_bad_input_names_the_field(
    replicas: tuple[RouterProcess, RouterProcess],
) -> None:
    router, _ = replicas
    async with RouterClient(router.url, CLIENT) as client, RouterClient(router.url, ADMIN) as admin:
        with pytest.raises(RouterError) as refused:
            await client.watch_stats("", 1)
        assert refused.value.status == 403
        with pytest.raises(RouterError) as bad_token:
            await admin.watch_stats("not-a-token", 1)
        assert (bad_token.value.status, bad_token.value.field) == (400, "since")
        with pytest.raises(RouterError) as too_long:
            await admin.watch_stats("", 61)
        assert (too_long.value.status, too_long.value.field) == (400, "timeoutSeconds")
