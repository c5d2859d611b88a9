"""A keyed work queue in the manner of client-go's: a key is queued at most
once, never processed by two workers at once, and re-queued if it changed
while being processed. Retries back off exponentially per key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

Key = tuple[str, str]
"""(namespace, name)"""

BASE_DELAY = 0.5
MAX_DELAY = 60.0


@dataclass
class WorkQueue:
    name: str
    _queue: asyncio.Queue[Key] = field(default_factory=asyncio.Queue)
    _dirty: set[Key] = field(default_factory=set)
    _processing: set[Key] = field(default_factory=set)
    _failures: dict[Key, int] = field(default_factory=dict)
    _timers: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)

    def add(self, key: Key) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.put_nowait(key)

    def add_all(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.add(key)

    def add_after(self, key: Key, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; an earlier pending timer wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: Key) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(BASE_DELAY * 2.0 ** (failures - 1), MAX_DELAY)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.put_nowait(key)

    def __len__(self) -> int:
        return self._queue.qsize()


Reconcile = Callable[[Key], Awaitable[float | None]]
"""Returns seconds after which to look again (None: only on the next event)."""


async def run_workers(
    queue: WorkQueue,
    reconcile: Reconcile,
    workers: int,
    on_error: Callable[[Key, BaseException, float], None],
) -> None:
    async def worker() -> None:
        while True:
            key = await queue.get()
            try:
                requeue = await reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a failed reconcile is retried, never fatal
                on_error(key, err, queue.retry(key))
            else:
                queue.forget(key)
                if requeue is not None:
                    queue.add_after(key, requeue)
            finally:
                queue.done(key)

    await asyncio.gather(*(worker() for _ in range(workers)))
