"""The figures a stats watch compares, and the watch's cost bound: many watchers and a
burst of changes share a few computations."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agentarmy.api import wire
from agentarmy.router.figures import FiguresWatch, WatchSettings, figures_token, fleet_figures

Api = Any  # the `api` fixture (tests/unit/router/conftest.py)


def agent(
    name: str, live: bool = True, succeeded: int = 0, heartbeat: float = 0.0
) -> wire.AgentStats:
    return wire.AgentStats(
        name=name,
        ready=True,
        live=live,
        templateHash="h1",
        running=0,
        succeeded=succeeded,
        failed=0,
        lastHeartbeat=heartbeat,
    )


def fleet(name: str = "f", queued: int = 0, **changes: object) -> wire.FleetStats:
    base = wire.FleetStats(
        namespace="ns",
        fleet=name,
        queued=queued,
        queuedByPriority={},
        running=0,
        succeeded=0,
        failed=0,
        deadLettered=0,
        cancelled=0,
        agents=[agent("a1"), agent("a2", live=False)],
        templates=[wire.TemplateStats(templateHash="h1", attempts=4, failures=1, errorRate=0.25)],
    )
    return base.model_copy(update=changes)


def test_heartbeats_and_per_agent_counters_are_not_figures() -> None:
    quiet = fleet(agents=[agent("a1", succeeded=9, heartbeat=99.0), agent("a2", live=False)])
    assert fleet_figures(quiet) == fleet_figures(fleet())
    assert fleet_figures(fleet(succeeded=50)) == fleet_figures(fleet())


def test_demand_health_liveness_and_halts_are_figures() -> None:
    halt = wire.Halt(
        namespace="ns",
        fleet="f",
        rule="maxErrorRate",
        policy="p",
        measured=0.5,
        bound=0.1,
        message="m",
        haltedAt=1.0,
    )
    moved = [
        fleet(queued=1),
        fleet(running=1),
        fleet(awaitingApproval=1),
        fleet(agents=[agent("a1"), agent("a2")]),
        fleet(
            templates=[wire.TemplateStats(templateHash="h1", attempts=5, failures=1, errorRate=0.2)]
        ),
        fleet(halt=halt),
    ]
    assert all(fleet_figures(m) != fleet_figures(fleet()) for m in moved)
    assert fleet_figures(None) == ()


def test_the_token_names_the_figures_whatever_the_order() -> None:
    one = wire.Stats(generatedAt=1.0, fleets=[fleet("a"), fleet("b")])
    other = wire.Stats(generatedAt=2.0, fleets=[fleet("b"), fleet("a")])
    assert figures_token(one) == figures_token(other)
    moved = wire.Stats(generatedAt=1.0, fleets=[fleet("a"), fleet("b", queued=3)])
    assert figures_token(moved) != figures_token(one)


async def test_many_watchers_and_a_burst_share_few_computations() -> None:
    queued = 0
    compute_seconds = 0.01

    async def compute() -> wire.Stats:
        await asyncio.sleep(compute_seconds)  # stands in for a store's GROUP BY
        return wire.Stats(generatedAt=time.time(), fleets=[fleet(queued=queued)])

    watch = FiguresWatch(compute, WatchSettings(recheck_seconds=5.0, min_interval=0.05))
    loop = asyncio.create_task(watch.run())
    try:
        token = (await watch.watch("", 1)).token
        watchers = [asyncio.create_task(watch.watch(token, 5)) for _ in range(500)]
        await asyncio.sleep(0.1)
        before = watch.computations
        started = time.monotonic()
        for _ in range(1000):  # a burst: a thousand changes, each touching the watch
            queued += 1
            watch.touch()
            await asyncio.sleep(0)
        answers = await asyncio.gather(*watchers)
        took = time.monotonic() - started
    finally:
        loop.cancel()
    assert all(a.changed and a.token != token for a in answers)
    assert took < 1.0
    # 500 watchers and 1,000 touches: a handful of computations, bounded by the intervals.
    assert watch.computations - before <= 3


async def test_the_router_touches_the_watch_on_a_submit(api: Api) -> None:
    held = (await api.http.get("/v1/stats/watch", headers=api.auth("admin"))).json()["token"]
    params = {"since": held, "timeoutSeconds": "10"}
    waiting = asyncio.create_task(
        api.http.get("/v1/stats/watch", params=params, headers=api.auth("admin"))
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    submitted = await api.http.post(
        "/v1/tasks", json={"fleet": "fleet-a", "capability": "test"}, headers=api.auth("client")
    )
    assert submitted.status_code == 201
    answer = (await asyncio.wait_for(waiting, 2)).json()
    assert answer["changed"] and answer["token"] != held
    assert [f["queued"] for f in answer["stats"]["fleets"]] == [1]


async def test_the_watch_is_in_the_openapi_document(api: Api) -> None:
    document = (await api.http.get("/openapi.json")).json()
    operation = document["paths"]["/v1/stats/watch"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert params["timeoutSeconds"]["maximum"] == 60
    assert params["since"]["pattern"] == "^[0-9a-f]*$"
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/StatsWatch"
    )
