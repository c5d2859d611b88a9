"""Dispatch: which waiting agent gets the next task.

Agents long-poll for work. A claim that finds work returns at once; otherwise the
agent waits here. When work may have appeared (a submit, a retry whose backoff
ended, another replica's write), the fleet's waiters are served least-loaded first
(running tasks / concurrency, then longest waiting). The store decides which tasks
(priority, FIFO, capability, concurrency); this module decides for whom.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo, Task
from agentarmy.router import lifecycle
from agentarmy.router.store.base import TaskStore

log = logging.getLogger(__name__)

FleetKey = tuple[str, str]
_order = itertools.count()


@dataclass(eq=False)
class _Waiter:
    agent: AgentInfo
    max_tasks: int
    future: asyncio.Future[list[Task]]
    order: int = field(default_factory=lambda: next(_order))
    holder: str = ""
    """namespace/name, as the store counts running leases (computed once, sorted on often)."""

    def __post_init__(self) -> None:
        self.holder = lifecycle.agent_id(self.agent.namespace, self.agent.name)


class Dispatcher:
    def __init__(
        self,
        store: TaskStore,
        clock: Callable[[], float],
        on_claimed: Callable[[AgentInfo, list[Task]], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_claimed = on_claimed
        self._waiters: dict[FleetKey, list[_Waiter]] = {}
        self._dirty: set[FleetKey] = set()
        self._serving: dict[FleetKey, asyncio.Task[None]] = {}

    async def claim(self, agent: AgentInfo, max_tasks: int, wait_seconds: float) -> list[Task]:
        key = (agent.namespace, agent.fleet)
        if not self._waiters.get(key):  # nobody ahead in line: try at once
            tasks = await self.store.claim(agent, max_tasks, self.clock())
            if tasks:
                self.on_claimed(agent, tasks)
                return tasks
        if wait_seconds <= 0:
            return []
        waiter = _Waiter(agent, max_tasks, asyncio.get_running_loop().create_future())
        self._waiters.setdefault(key, []).append(waiter)
        self.notify(*key)  # work may have arrived between the claim above and now
        try:
            return await asyncio.wait_for(waiter.future, wait_seconds)
        except TimeoutError:
            return []
        finally:
            waiters = self._waiters.get(key, [])
            if waiter in waiters:
                waiters.remove(waiter)

    def notify(self, namespace: str, fleet: str) -> None:
        """Work may be claimable in this fleet: serve its waiters (coalesced)."""
        key = (namespace, fleet)
        if not self._waiters.get(key):
            return
        self._dirty.add(key)
        if key not in self._serving:
            self._serving[key] = asyncio.create_task(
                self._serve(key), name=f"dispatch-{namespace}/{fleet}"
            )

    def end_waits(self, namespace: str, name: str) -> None:
        """The agent is draining: answer its pending long-polls with no work."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                mine = waiter.agent.namespace == namespace and waiter.agent.name == name
                if mine and not waiter.future.done():
                    waiter.future.set_result([])

    def waiting_fleets(self) -> list[FleetKey]:
        return [key for key, waiters in self._waiters.items() if waiters]

    async def _serve(self, key: FleetKey) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                await self._serve_once(key)
        except Exception:
            log.exception("dispatch for %s/%s failed; the next notify retries", *key)
        finally:
            del self._serving[key]

    async def _serve_once(self, key: FleetKey) -> None:
        waiters = [w for w in self._waiters.get(key, []) if not w.future.done()]
        if not waiters:
            return
        running = await self.store.running_counts(*key)
        waiters.sort(key=lambda w: (running.get(w.holder, 0) / w.agent.concurrency, w.order))
        # Waiters with the same capabilities compete for the same tasks: serve each such group
        # least loaded first, in rounds of 1, 2, 4 ... claims (one group commit per round), and
        # stop a group once a claim comes back short - its tasks are gone.
        groups: dict[tuple[str, ...], list[_Waiter]] = {}
        for waiter in waiters:
            groups.setdefault(tuple(sorted(waiter.agent.capabilities)), []).append(waiter)
        size = 1
        while groups:
            now = self.clock()
            round_ = {caps: group[:size] for caps, group in groups.items()}
            picked = [w for group in round_.values() for w in group]
            claims = await asyncio.gather(
                *(self.store.claim(w.agent, w.max_tasks, now) for w in picked)
            )
            short: set[_Waiter] = set()
            for waiter, tasks in zip(picked, claims, strict=True):
                if len(tasks) < waiter.max_tasks:
                    short.add(waiter)
                if tasks:
                    await self._deliver(waiter, tasks)
            groups = {
                caps: group[size:]
                for caps, group in groups.items()
                if group[size:] and not short.intersection(round_[caps])
            }
            size *= 2

    async def _deliver(self, waiter: _Waiter, tasks: list[Task]) -> None:
        if waiter.future.done():  # gave up while we were claiming: hand the tasks back
            await self._release(waiter.agent, tasks)
            return
        waiter.future.set_result(tasks)
        self.on_claimed(waiter.agent, tasks)

    async def _release(self, agent: AgentInfo, tasks: list[Task]) -> None:
        results = [
            wire.TaskResult(
                taskId=t.id,
                attempt=t.attempt,
                outcome="released",
                error="claim abandoned before delivery",
            )
            for t in tasks
        ]
        await self.store.report(agent, results, self.clock())
