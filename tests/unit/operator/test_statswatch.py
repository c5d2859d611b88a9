"""What the operator does with an answer of the router's stats watch: keep the figures,
queue the Fleets whose figures moved, grow them at once, and try a failed growth again."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from agentarmy.api import wire
from agentarmy.api.fleet import Autoscaling
from agentarmy.operator.cache import Cache
from agentarmy.operator.stats import autoscale_message, record_figures
from agentarmy.operator.statswatch import StatsWatch
from agentarmy.operator.workqueue import Key


def fleet(name: str, queued: int = 0, succeeded: int = 0) -> wire.FleetStats:
    return wire.FleetStats(
        namespace="ns",
        fleet=name,
        queued=queued,
        queuedByPriority={},
        running=0,
        succeeded=succeeded,
        failed=0,
        deadLettered=0,
        cancelled=0,
        agents=[],
        templates=[],
    )


def stats(*fleets: wire.FleetStats) -> wire.Stats:
    return wire.Stats(generatedAt=0.0, fleets=list(fleets))


def test_record_figures_names_the_fleets_whose_figures_moved() -> None:
    cache = Cache()
    assert record_figures(cache, stats(fleet("a"), fleet("b"))) == {("ns", "a"), ("ns", "b")}
    # b's queue moved; a's succeeded count is not a figure the operator acts on at once.
    moved = record_figures(cache, stats(fleet("a", succeeded=5), fleet("b", queued=2)))
    assert moved == {("ns", "b")}
    assert cache.router_figures[("ns", "a")].succeeded == 5  # but it is kept
    assert record_figures(cache, stats(fleet("b", queued=2))) == {("ns", "a")}
    assert set(cache.router_figures) == {("ns", "b")}


class Recorder:
    def __init__(self, failures: int = 0) -> None:
        self.queued: list[set[Key]] = []
        self.grown: list[set[Key]] = []
        self.failures = failures

    def enqueue(self, keys: Iterable[Key]) -> None:
        self.queued.append(set(keys))

    async def scale_up(self, keys: Iterable[Key]) -> int:
        self.grown.append(set(keys))
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the API server refused")
        return 2


def watcher(recorder: Recorder) -> StatsWatch:
    client: Any = None  # apply() makes no router call
    return StatsWatch(Cache(), client, recorder.enqueue, recorder.scale_up)


async def test_a_change_queues_and_grows_only_the_fleets_that_moved() -> None:
    recorder = Recorder()
    watch = watcher(recorder)
    await watch.apply(stats(fleet("a"), fleet("b")))
    await watch.apply(stats(fleet("a"), fleet("b", queued=1)))
    assert recorder.queued == [{("ns", "a"), ("ns", "b")}, {("ns", "b")}]
    assert recorder.grown == recorder.queued
    assert await watch.apply(stats(fleet("a"), fleet("b", queued=1))) == set()
    assert len(recorder.grown) == 2


async def test_a_failed_growth_is_tried_again_with_the_next_answer() -> None:
    recorder = Recorder(failures=1)
    watch = watcher(recorder)
    with pytest.raises(RuntimeError):
        await watch.apply(stats(fleet("a", queued=1)))
    await watch.apply(stats(fleet("a", queued=1), fleet("b", queued=1)))
    assert recorder.grown == [{("ns", "a")}, {("ns", "a"), ("ns", "b")}]


def test_the_event_says_when_a_fleet_wakes_or_goes_idle() -> None:
    policy = Autoscaling(minReplicas=0, maxReplicas=3)
    woke = autoscale_message(0, 1, fleet("a", queued=1), policy)
    assert woke.startswith("woke from zero: scaled from 0 to 1 agents: 1 queued")
    idle = autoscale_message(2, 0, fleet("a"), policy)
    assert "idle at zero agents (minReplicas 0): the next task wakes the fleet" in idle
