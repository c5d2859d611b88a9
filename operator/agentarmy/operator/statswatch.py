"""The router's figures within a second: a long-poll of ``GET /v1/stats/watch``.

StatsSync copies the router's counts into status every stats interval (coarse on
purpose: etcd carries no task traffic). Decisions that cannot wait a minute — wake a
fleet scaled to zero, grow a fleet far behind its queue, judge a canary — read the
figures this loop keeps in ``cache.router_figures``: on every change it stores them,
queues the reconcile of each Fleet whose figures moved, and lets the autoscaler grow
those fleets at once. Nothing here writes status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from agentarmy.api import wire
from agentarmy.operator.cache import Cache
from agentarmy.operator.stats import record_figures
from agentarmy.operator.workqueue import Key
from agentarmy.router.client import RouterClient, RouterError

log = logging.getLogger("agentarmy.operator.statswatch")

WATCH_SECONDS = 30
"""How long one long-poll waits for a change (the router allows up to 60)."""
PAUSE_SECONDS = 0.2
"""After a change, before the next poll: a busy router's figures move all the time, and a
few answers a second are plenty for decisions made in seconds."""
RETRY_SECONDS = 1.0
"""After a failed poll (the router restarting, say)."""


class StatsWatch:
    def __init__(
        self,
        cache: Cache,
        client: RouterClient,
        fleets_changed: Callable[[Iterable[Key]], None],
        scale_up: Callable[[Iterable[Key]], Awaitable[int]],
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.cache = cache
        self.client = client
        self.fleets_changed = fleets_changed
        self.scale_up = scale_up
        self.watch_seconds = watch_seconds
        self._unscaled: set[Key] = set()

    async def run(self) -> None:
        token = ""
        while True:
            if not self.cache.bound:  # nothing to queue or scale before the cache fills
                await asyncio.sleep(RETRY_SECONDS)
                continue
            try:
                # A growth that failed is tried again within a second, change or not.
                wait = int(RETRY_SECONDS) if self._unscaled else self.watch_seconds
                answer = await self.client.watch_stats(token, wait)
            except RouterError as err:
                log.warning("cannot watch the router's figures: %s", err)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except Exception as err:  # the router may be down; StatsSync still polls
                log.debug("router stats watch failed: %s", err)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            try:
                if answer.changed and answer.stats is not None:
                    token = answer.token
                    await self.apply(answer.stats)
                elif self._unscaled:
                    await self._grow(set())
            except Exception as err:  # e.g. the API server refused a scale: retried soon
                log.warning("could not act on the router's figures: %s", err)
            if answer.changed:
                await asyncio.sleep(PAUSE_SECONDS)

    async def apply(self, stats: wire.Stats) -> set[Key]:
        """Store the figures; queue and grow the fleets whose figures changed (and those
        whose growth failed last time)."""
        changed = record_figures(self.cache, stats)
        if changed:
            self.fleets_changed(changed)
        await self._grow(changed)
        return changed

    async def _grow(self, keys: set[Key]) -> None:
        pending, self._unscaled = self._unscaled | keys, set()
        try:
            if pending:
                await self.scale_up(pending)
        except Exception:
            self._unscaled = pending
            raise
