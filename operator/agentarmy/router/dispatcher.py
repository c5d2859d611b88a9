"""Dispatch: which waiting agent gets the next task.

Agents long-poll for work. A claim that finds work returns at once; otherwise the
agent waits here. When work may have appeared (a submit, a retry whose backoff
ended, another replica's write), the fleet's waiters are served least-loaded first
(running tasks / concurrency, then longest waiting). The store decides which tasks
(priority, FIFO, capability, concurrency); this module decides for whom. With routing by
results (:mod:`agentarmy.router.scoring`) an agent's claim is first admitted: an open
breaker or a pacing pause holds it back, and among equally loaded waiters the better
score goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo, Task
from agentarmy.router import lifecycle
from agentarmy.router.scoring import Routing
from agentarmy.router.store.base import Submitted, TaskStore

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
    offered: bool = False
    """A claim for this waiter is in flight: no other round may claim for it meanwhile."""

    def __post_init__(self) -> None:
        self.holder = lifecycle.agent_id(self.agent.namespace, self.agent.name)


def _pick(waiters: list[_Waiter], budget: dict[str, int]) -> list[_Waiter]:
    """The waiters (in the given order) that the claimable tasks can serve, one claim each."""
    left = dict(budget)
    picked = []
    for waiter in waiters:
        wanted = waiter.max_tasks
        for capability in waiter.agent.capabilities:
            take = min(wanted, left.get(capability, 0))
            left[capability] = left.get(capability, 0) - take
            wanted -= take
        if wanted < waiter.max_tasks:
            picked.append(waiter)
    return picked


@contextlib.contextmanager
def _offering(waiters: list[_Waiter]) -> Iterator[None]:
    """Mark the waiters as having a claim in flight for as long as the block runs."""
    for waiter in waiters:
        waiter.offered = True
    try:
        yield
    finally:
        for waiter in waiters:
            waiter.offered = False


class Dispatcher:
    def __init__(
        self,
        store: TaskStore,
        clock: Callable[[], float],
        on_claimed: Callable[[AgentInfo, list[Task]], None],
        halted: Callable[[str, str], bool] = lambda namespace, fleet: False,
        routing: Routing | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_claimed = on_claimed
        self.halted = halted
        """A fleet the sentinel halted gets no dispatch: its agents wait, its tasks stay queued."""
        self._waiters: dict[FleetKey, list[_Waiter]] = {}
        self._wanted: dict[FleetKey, Counter[str]] = {}
        """Per fleet: capability -> slots its waiting agents ask for (what a round looks for)."""
        self._dirty: set[FleetKey] = set()
        self._serving: dict[FleetKey, asyncio.Task[None]] = {}
        self.routing = routing or Routing()
        self._holds: dict[str, asyncio.Future[None]] = {}
        """Agents held back by routing (holder -> wake-up), outside the waiters: they do not
        make others queue behind them, and a drain ends their hold."""

    async def claim(self, agent: AgentInfo, max_tasks: int, wait_seconds: float) -> list[Task]:
        key = (agent.namespace, agent.fleet)
        max_tasks, wait_seconds = await self._admitted(agent, max_tasks, wait_seconds)
        if max_tasks == 0:
            return []
        if not self._waiters.get(key) and not self.halted(*key):  # nobody ahead: try at once
            tasks = await self.store.claim(agent, max_tasks, self.clock())
            if tasks:
                self.routing.granted(agent, tasks, self.clock())
                self.on_claimed(agent, tasks)
                return tasks
        if wait_seconds <= 0:
            return []
        waiter = _Waiter(agent, max_tasks, asyncio.get_running_loop().create_future())
        self._waiters.setdefault(key, []).append(waiter)
        wanted = self._wanted.setdefault(key, Counter())
        for capability in agent.capabilities:
            wanted[capability] += max_tasks
        self.notify(*key)  # work may have arrived between the claim above and now
        try:
            # Not wait_for: its extra waiter future costs two loop turns on every delivery.
            async with asyncio.timeout(wait_seconds):
                return await waiter.future
        except TimeoutError:
            # Delivered in the same loop turn as the timeout fired: the tasks are ours.
            future = waiter.future
            return future.result() if future.done() and not future.cancelled() else []
        finally:
            waiters = self._waiters.get(key, [])
            if waiter in waiters:
                waiters.remove(waiter)
                for capability in agent.capabilities:
                    wanted[capability] -= max_tasks

    async def _admitted(
        self, agent: AgentInfo, max_tasks: int, wait_seconds: float
    ) -> tuple[int, float]:
        """(tasks the agent may be given, wait left) once routing admits it; (0, 0) when its
        wait ran out (or it started draining) while held back."""
        while True:
            admission = self.routing.admit(agent, max_tasks, self.clock())
            if admission.tasks > 0:
                return admission.tasks, wait_seconds
            pause = min(admission.hold_seconds, wait_seconds)
            if pause <= 0 or not await self._hold(agent, pause):
                return 0, 0.0
            wait_seconds -= pause

    async def _hold(self, agent: AgentInfo, seconds: float) -> bool:
        """Sleep ``seconds`` unless the agent drains meanwhile (False)."""
        holder = lifecycle.agent_id(agent.namespace, agent.name)
        wake = self._holds[holder] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):
                await wake
            return False
        except TimeoutError:
            return True
        finally:
            if self._holds.get(holder) is wake:
                del self._holds[holder]

    def notify(self, namespace: str, fleet: str) -> None:
        """Work may be claimable in this fleet: serve its waiters (coalesced)."""
        key = (namespace, fleet)
        if not self._waiters.get(key) or self.halted(*key):
            return
        self._dirty.add(key)
        if key not in self._serving:
            self._serving[key] = asyncio.create_task(
                self._serve(key), name=f"dispatch-{namespace}/{fleet}"
            )

    async def submit(self, requests: Sequence[wire.SubmitTask], now: float) -> list[Submitted]:
        """Store new tasks; when their fleet has agents waiting, lease the tasks to them in
        the same durable write (one commit from submission to lease, where the store can)."""
        keys = {(r.namespace, r.fleet) for r in requests}
        if not keys:
            return []
        key = next(iter(keys))
        waiters: list[_Waiter] = []
        if (
            len(keys) == 1
            and self.store.leases_on_submit
            and self._waiters.get(key)
            and not self.halted(*key)
        ):
            capabilities = {r.capability for r in requests}
            # Least loaded first; each can take at least one task, so no more are needed.
            waiters = await self._least_loaded(key, len(requests), capabilities)
        if len(keys) != 1 or not waiters:
            submitted = await self.store.submit(requests, now)
            self._notify_created(submitted)
            return submitted
        with _offering(waiters):
            submitted, leases = await self.store.submit_and_lease(
                requests, now, [(w.agent, w.max_tasks) for w in waiters]
            )
        for waiter, tasks in zip(waiters, leases, strict=True):
            if tasks:
                await self._deliver(waiter, tasks)
        # Let the agents' answers go out before the submitter's: theirs lead to the result.
        await asyncio.sleep(0)
        created = sum(1 for item in submitted if item.created)
        if sum(len(tasks) for tasks in leases) < created:
            self.notify(*key)  # the store left some for the usual round
        return submitted

    async def _least_loaded(
        self, key: FleetKey, count: int, capabilities: set[str] | None = None
    ) -> list[_Waiter]:
        """Up to ``count`` free waiters with room (and one of ``capabilities``) that routing
        lets receive work, least loaded (running / concurrency) first, then the better
        score, then longest waiting. At most one pass over
        the fleet's waiters: this runs for every submission and every dispatch round."""
        running = await self.store.running_counts(*key)
        now = self.clock()
        candidates = []
        for waiter in self._waiters.get(key, ()):
            if waiter.offered or waiter.future.done():
                continue
            if capabilities is not None and capabilities.isdisjoint(waiter.agent.capabilities):
                continue
            if not self.routing.may_receive(waiter.agent, now):
                continue  # its breaker opened while it waited
            held = running.get(waiter.holder, 0)
            # Scores in tenths, so that noise does not reorder healthy agents.
            rank = -round(self.routing.weight(waiter.agent, now), 1)
            if held == 0 and count == 1 and rank == -1.0:
                return [waiter]  # kept in arrival order: the first idle one is the answer
            if held < waiter.agent.concurrency:
                load = held / waiter.agent.concurrency
                candidates.append((load, rank, waiter.order, waiter))
        return [waiter for *_, waiter in heapq.nsmallest(count, candidates)]

    def _notify_created(self, submitted: Sequence[Submitted]) -> None:
        for namespace, fleet in {(s.task.namespace, s.task.fleet) for s in submitted if s.created}:
            self.notify(namespace, fleet)

    def end_waits(self, namespace: str, name: str) -> None:
        """The agent is draining: answer its pending long-polls with no work."""
        held = self._holds.pop(lifecycle.agent_id(namespace, name), None)
        if held is not None and not held.done():
            held.set_result(None)
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
        if self.halted(*key):
            return
        # Counted over every waiter, also those with a claim in flight: at worst a round
        # looks for a little more than it can give out.
        wanted = {c: n for c, n in self._wanted.get(key, Counter()).items() if n > 0}
        if not wanted:
            return
        capabilities = sorted(wanted)
        budget = await self.store.claimable(*key, capabilities, self.clock(), sum(wanted.values()))
        if not any(budget.values()):
            return  # the usual case for an agent coming back for more: nothing to lease
        now = self.clock()
        waiters = await self._least_loaded(key, len(self._waiters.get(key, ())))
        picked = _pick(waiters, budget)
        with _offering(picked):
            claims = await asyncio.gather(
                *(self.store.claim(w.agent, w.max_tasks, now) for w in picked)
            )
        for waiter, tasks in zip(picked, claims, strict=True):
            if tasks:
                await self._deliver(waiter, tasks)
        if any(claims) and len(picked) < len(waiters):
            # The budget is an estimate per capability; look again (one cheap read) so that
            # no waiter is left out while work it could take remains.
            self._dirty.add(key)

    async def _deliver(self, waiter: _Waiter, tasks: list[Task]) -> None:
        if waiter.future.done():  # gave up while we were claiming: hand the tasks back
            await self._release(waiter.agent, tasks)
            return
        waiter.future.set_result(tasks)
        self.routing.granted(waiter.agent, tasks, self.clock())
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
