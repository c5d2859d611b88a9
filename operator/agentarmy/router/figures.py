"""``GET /v1/stats/watch``: a long-poll on the figures the operator acts on.

The operator scales, aborts canaries and mirrors halts from a few figures per fleet:
queued, running and awaiting-approval tasks, live agents, attempts and failures per
template, and the halt. A watcher holds a token (a digest of those figures, so it is
the same on every router replica for the same figures) and the call returns as soon as
the figures differ from the ones the token names, or when its timeout runs out.

The cost does not grow with the number of watchers: one loop per router recomputes the
stats when the service says something changed (``touch``) and at least every
``recheck_seconds`` (an agent's heartbeat going stale, a halt or an agent registered
through another replica), and every waiting watcher shares that one computation. A
recomputation runs at most every ``min_interval`` seconds and takes at most
``max_busy_share`` of the time, so a busy router (a task ending every millisecond)
computes its stats a few times a second, not once per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agentarmy.api import wire

FleetFigures = tuple[object, ...]
"""What the operator acts on of one fleet (hashable, comparable)."""


def fleet_figures(fleet: wire.FleetStats | None) -> FleetFigures:
    """The figures of one fleet that a watch reports changes of (``()`` for no fleet).
    Per-agent counters and heartbeat times are left out: they move all the time and
    nothing in the operator acts on them faster than its coarse status sync."""
    if fleet is None:
        return ()
    halt = fleet.halt
    return (
        fleet.queued,
        fleet.running,
        fleet.awaitingApproval,
        sum(1 for agent in fleet.agents if agent.live),
        tuple((t.templateHash, t.attempts, t.failures) for t in fleet.templates),
        None if halt is None else (halt.rule, halt.policy, halt.haltedAt),
    )


def figures_token(stats: wire.Stats) -> str:
    """A digest of every fleet's figures: equal tokens, equal figures."""
    digest = hashlib.blake2b(digest_size=12)
    for fleet in sorted(stats.fleets, key=lambda f: (f.namespace, f.fleet)):
        digest.update(repr((fleet.namespace, fleet.fleet, fleet_figures(fleet))).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class WatchSettings:
    recheck_seconds: float = 1.0
    """Recompute at least this often while someone watches, touched or not."""
    min_interval: float = 0.05
    """Never recompute more often than this."""
    max_busy_share: float = 0.1
    """Wait after a recomputation long enough that it takes at most this share of the time."""


@dataclass(frozen=True)
class Figures:
    token: str
    stats: wire.Stats
    at: float
    """time.monotonic() of the computation."""


class FiguresWatch:
    """One per router process; ``run`` is its recomputation loop."""

    def __init__(
        self, compute: Callable[[], Awaitable[wire.Stats]], settings: WatchSettings | None = None
    ) -> None:
        self.settings = settings or WatchSettings()
        self._compute = compute
        self._latest: Figures | None = None
        self._touched = asyncio.Event()
        self._news = asyncio.Event()
        """Set (and replaced) whenever the token changes."""
        self._watching = 0
        self._someone_watches = asyncio.Event()
        self._lock = asyncio.Lock()
        self.computations = 0
        """How many times the stats were computed for watchers (for tests and benchmarks)."""

    def touch(self) -> None:
        """Something that may move the figures happened (cheap: sets a flag)."""
        self._touched.set()

    async def watch(self, since: str, wait_seconds: float) -> wire.StatsWatch:
        """The figures once their token differs from ``since``, else (after
        ``wait_seconds``) the same token with no figures."""
        latest = await self._fresh()
        if latest.token != since:
            return wire.StatsWatch(token=latest.token, changed=True, stats=latest.stats)
        deadline = time.monotonic() + wait_seconds
        self._watching += 1
        self._someone_watches.set()
        try:
            while latest.token == since:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return wire.StatsWatch(token=since, changed=False)
                news = self._news
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news.wait(), remaining)
                assert self._latest is not None
                latest = self._latest
        finally:
            self._watching -= 1
            if not self._watching:
                self._someone_watches.clear()
        return wire.StatsWatch(token=latest.token, changed=True, stats=latest.stats)

    async def run(self) -> None:
        """Recompute while anyone watches: when touched, and every ``recheck_seconds``."""
        settings = self.settings
        while True:
            await self._someone_watches.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._touched.wait(), settings.recheck_seconds)
            started = time.monotonic()
            await self._refresh()
            took = time.monotonic() - started
            pause = max(settings.min_interval, took * (1 / settings.max_busy_share - 1))
            await asyncio.sleep(pause)

    async def _fresh(self) -> Figures:
        """The latest figures if at most ``recheck_seconds`` old, else recomputed now.
        A touch alone does not recompute here (the loop does, within its rate bound):
        otherwise every watcher coming back would cost a computation on a busy router."""
        latest = self._latest
        if latest is not None and time.monotonic() - latest.at <= self.settings.recheck_seconds:
            return latest
        return await self._refresh()

    async def _refresh(self) -> Figures:
        requested = time.monotonic()
        async with self._lock:
            latest = self._latest
            if latest is not None and latest.at >= requested:
                return latest  # computed while we waited for the lock
            self._touched.clear()
            at = time.monotonic()
            stats = await self._compute()
            self.computations += 1
            token = figures_token(stats)
            changed = latest is None or latest.token != token
            self._latest = Figures(token, stats, at)
            if changed:
                news, self._news = self._news, asyncio.Event()
                news.set()
            return self._latest
