"""The router app in-process (ASGI, no network) on a SQLite file, with static tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agentarmy.router.app import create_app
from agentarmy.router.auth import StaticToken, StaticTokens
from agentarmy.router.lifecycle import RetryPolicy
from agentarmy.router.service import RouterService
from agentarmy.router.store.base import StoreSettings
from agentarmy.router.store.sqlite import SqliteStore

TOKENS = {
    "admin": StaticToken(token="admin-token-0000000001", name="admin", role="admin"),
    "client": StaticToken(
        token="client-token-000000001", name="alice", role="client", namespace="default"
    ),
    "agent": StaticToken(
        token="agent-token-0000000001",
        name="fleet-a",
        role="agent",
        namespace="default",
        fleet="fleet-a",
    ),
    "agent-b": StaticToken(
        token="agent-token-0000000002",
        name="fleet-b",
        role="agent",
        namespace="default",
        fleet="fleet-b",
    ),
    "metrics": StaticToken(token="metrics-token-00000001", name="prometheus", role="metrics"),
    "only-a1": StaticToken(
        token="agent-token-0000000003",
        name="a1-only",
        role="agent",
        namespace="default",
        fleet="fleet-a",
        agent="a1",
    ),
}


@dataclass
class Api:
    service: RouterService
    http: httpx.AsyncClient

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[who].token}"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = StoreSettings(lease_seconds=5.0, retry=RetryPolicy(0.05, 1.0))
    service = RouterService(SqliteStore(tmp_path / "router.db", settings))
    app = create_app(service, StaticTokens(list(TOKENS.values())))
    await service.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
        yield Api(service, http)
    await service.stop()
