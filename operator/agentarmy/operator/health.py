"""One small HTTP server per operator replica: /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentarmy.operator.metrics import REGISTRY


async def start_health_server(
    address: str, port: int, alive: Callable[[], bool], ready: Callable[[], bool]
) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok" if alive() else "unhealthy", status=200 if alive() else 500)

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok" if ready() else "not ready", status=200 if ready() else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
