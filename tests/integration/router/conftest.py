"""Fixtures for the router against real backends: a nats-server with JetStream on
loopback (one per session, temp store dir) and a fresh store of either kind per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentarmy.router.lifecycle import RetryPolicy
from agentarmy.router.store.base import StoreSettings, TaskStore
from agentarmy.router.store.nats import NatsStore
from agentarmy.router.store.sqlite import SqliteStore
from agentarmy.router.testing import NatsServer

T0 = 1_800_000_000.0
"""A fixed 'now' for store tests: stores take time as a parameter, so tests control it."""
SETTINGS = StoreSettings(lease_seconds=10.0, liveness_seconds=60.0, retry=RetryPolicy(1.0, 60.0))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


def make_store(kind: str, tmp_path: Path, nats_url: str, prefix: str) -> TaskStore:
    if kind == "sqlite":
        return SqliteStore(tmp_path / "router.db", SETTINGS)
    if kind == "sqlite-full":  # batches on a writer thread, reads on a reader thread
        return SqliteStore(tmp_path / "router.db", SETTINGS, synchronous="full")
    return NatsStore(nats_url, SETTINGS, prefix=prefix)


@pytest.fixture(params=["sqlite", "sqlite-full", "nats"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer
) -> AsyncIterator[tuple[str, object]]:
    """(kind, open_store): open_store() opens another handle on the same data (a restart,
    or for NATS a second replica). All handles are closed at the end."""
    kind: str = request.param
    prefix = f"t{uuid.uuid4().hex[:10]}"
    opened: list[TaskStore] = []

    async def open_store(now: float = T0) -> TaskStore:
        store = make_store(kind, tmp_path, nats_server.url, prefix)
        await store.open(now)
        opened.append(store)
        return store

    yield kind, open_store
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: tuple[str, object]) -> TaskStore:
    _, open_store = store_factory
    opened: TaskStore = await open_store()  # type: ignore[operator]
    return opened
