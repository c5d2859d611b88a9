"""How the operator learns what the router did with the Tasks it submitted, and
cancels what a deleted Task left running.

Learning of changes: one list call per (namespace, fleet) that has open Tasks,
every POLL_SECONDS. The router lists a fleet's tasks in submission order from a
cursor (an indexed range scan), so a pass starts at the oldest open Task's
``seq``, jumps the cursor over gaps to the next open one, and sees every open
Task of the fleet in one or a few pages. Open Tasks the pages did not reach (a
fleet flooded by API callers between two Tasks) are read one by one, bounded in
concurrency. 1,000 open Tasks of one fleet cost about one request per second;
no open Tasks cost none.

Not per-Task long-polls (``/wait``): each would hold a connection, a router
coroutine and a 2-second store re-read for as long as its task runs, so 1,000
Tasks would keep 1,000 connections and ~500 store reads/s busy to learn what one
list read tells. Not the stats endpoint: it counts per fleet (a full GROUP BY
over the task table on each call) and does not say *which* task changed.

Only what the status mirrors is kept per task (phase, attempt, agent, error,
times and a result capped at RESULT_LIMIT_BYTES): never the input, and nothing
once the Task's terminal status is written. A change in it queues the Task;
heartbeats change none of it, so they cost nothing.

Cancelling: a level-based sweep, no finalizer (see tasks.py for why). A
tracked router task whose every owning Task is gone (or deleting, or replaced by
a new object with another uid) is cancelled at once when the Task's deletion
is seen, and by the sweep every SWEEP_SECONDS if that failed. Tasks deleted
while no operator ran are found once per leadership: router tasks that are not
finished, whose idempotency key is a uid no Task has and whose trace id is that
uid's hex (the mark only this operator puts on what it submits).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pydantic_core

from agentarmy.api import wire
from agentarmy.api.task import RESULT_LIMIT_BYTES, TERMINAL_PHASES, TaskPhase
from agentarmy.operator.cache import Cache
from agentarmy.operator.workqueue import Key, WorkQueue
from agentarmy.router.client import RouterClient, RouterError

log = logging.getLogger("agentarmy.operator.tasks")

POLL_SECONDS = 1.0
SWEEP_SECONDS = 10.0
PAGE_SIZE = 500
MAX_PAGES = 4
"""Pages per fleet and pass; open Tasks beyond them are read one by one."""
GROUP_CONCURRENCY = 8
GET_CONCURRENCY = 16
MAX_BACKOFF_SECONDS = 30.0
UID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
OPEN_PHASES: tuple[str, ...] = tuple(
    p
    for p in TaskPhase.__args__  # type: ignore[attr-defined]
    if p not in TERMINAL_PHASES
)

Owner = tuple[Key, str]
"""A Task as (namespace, name) and its uid: a re-created Task is another owner."""


def trace_id_for(uid: str) -> str | None:
    """The trace id a Task's router task carries: its uid in hex (joins logs to the Task)."""
    return uid.replace("-", "") if UID_PATTERN.match(uid) else None


def submitted_by_operator(task: wire.Task) -> str | None:
    """The Task uid a router task was submitted for with the default key, else None."""
    key = task.idempotencyKey or ""
    if UID_PATTERN.match(key) and task.traceId == trace_id_for(key):
        return key
    return None


@dataclass(frozen=True)
class Snapshot:
    """What the status mirrors of one router task; equal snapshots mean nothing to write."""

    id: str
    seq: int
    namespace: str
    fleet: str
    phase: str
    attempt: int = 0
    agent: str = ""
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    result_truncated: bool = False
    lost: bool = False
    """The router no longer knows this task."""

    @classmethod
    def of(cls, task: wire.Task) -> Snapshot:
        result, truncated = task.result, False
        if result is not None and len(pydantic_core.to_json(result)) > RESULT_LIMIT_BYTES:
            result, truncated = None, True
        return cls(
            id=task.id,
            seq=task.seq,
            namespace=task.namespace,
            fleet=task.fleet,
            phase=task.phase,
            attempt=task.attempt,
            agent=task.agent,
            error=task.error,
            started_at=task.attempts[0].startedAt if task.attempts else None,
            finished_at=task.finishedAt,
            result=result,
            result_truncated=truncated,
        )

    @property
    def terminal(self) -> bool:
        return self.lost or self.phase in TERMINAL_PHASES


@dataclass
class _Entry:
    snapshot: Snapshot
    owners: set[Owner] = field(default_factory=set)


class TaskWatch:
    def __init__(
        self,
        cache: Cache,
        client: RouterClient | None,
        queue: WorkQueue,
        poll_seconds: float = POLL_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
    ) -> None:
        self.cache = cache
        self.client = client
        self.queue = queue
        self.poll_seconds = poll_seconds
        self.sweep_seconds = sweep_seconds
        self._entries: dict[str, _Entry] = {}
        self._by_key: dict[Key, Owner] = {}
        self._router_ids: dict[Owner, str] = {}
        self.orphans_checked = False

    # -- what the reconciler tells and asks -------------------------------------------------

    def track(self, owner: Owner, snapshot: Snapshot) -> None:
        """``owner`` submitted (or found) ``snapshot``'s router task: follow it."""
        key = owner[0]
        previous = self._by_key.get(key)
        if previous is not None and previous != owner:
            self._disown(previous)  # the name now belongs to a new object
        self._by_key[key] = owner
        self._router_ids[owner] = snapshot.id
        entry = self._entries.setdefault(snapshot.id, _Entry(snapshot))
        entry.snapshot = snapshot
        entry.owners.add(owner)

    def latest(self, task_id: str) -> Snapshot | None:
        entry = self._entries.get(task_id)
        return entry.snapshot if entry else None

    def router_id(self, owner: Owner) -> str | None:
        """The router task submitted for ``owner`` (when the cache has not shown it yet)."""
        return self._router_ids.get(owner)

    def settle(self, owner: Owner) -> None:
        """``owner``'s terminal status is written: nothing more to watch for it."""
        task_id = self._router_ids.pop(owner, None)
        if self._by_key.get(owner[0]) == owner:
            del self._by_key[owner[0]]
        entry = self._entries.get(task_id or "")
        if entry is not None:
            entry.owners.discard(owner)
            if not entry.owners:
                del self._entries[entry.snapshot.id]

    def note_deleted(self, owner: Owner, task_id: str) -> None:
        """A Task with an unfinished router task was deleted; if that task is not
        tracked (the Task was deleted before this operator looked at it), track it
        now so that ``release`` cancels it."""
        if task_id in self._entries or owner in self._router_ids:
            return
        (namespace, _), _uid = owner
        # seq 0: unknown, so never polled; it only waits to be cancelled.
        placeholder = Snapshot(id=task_id, seq=0, namespace=namespace, fleet="", phase="")
        self._entries[task_id] = _Entry(placeholder, {owner})
        self._router_ids[owner] = task_id
        self._by_key.setdefault(owner[0], owner)  # a newer object's entry is left to the sweep

    async def release(self, key: Key) -> None:
        """The Task at ``key`` is gone or deleting: cancel what nothing else owns."""
        owner = self._by_key.get(key)
        if owner is not None and not self._alive(owner):
            task_id = self._disown(owner)
            if task_id is not None:
                await self._cancel_unowned([task_id])

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self.client is None:
            await asyncio.Event().wait()  # nothing is submitted without a router
        failures = 0
        next_sweep = 0.0  # the first sweep (and the orphan check) right away
        while True:
            await asyncio.sleep(min(self.poll_seconds * 2**failures, MAX_BACKOFF_SECONDS))
            try:
                await self.poll_once()
            except Exception as err:  # the router may be down: look again later
                failures = min(failures + 1, 8)
                log.warning("cannot read task states from the router: %s", err)
                continue
            failures = 0
            if time.monotonic() >= next_sweep:
                # Its own pace, so a failing sweep never stops the polling.
                swept = await self._sweep_safely()
                pause = self.sweep_seconds if swept else self.poll_seconds
                next_sweep = time.monotonic() + pause

    async def _sweep_safely(self) -> bool:
        """Sweep; False when the orphan check still waits for the cache to fill."""
        try:
            if not self.orphans_checked:
                if not self.cache.bound:
                    return False
                await self.cancel_orphans()
                self.orphans_checked = True
            await self.sweep()
        except Exception as err:
            log.warning("cannot cancel the router tasks of deleted Tasks yet: %s", err)
        return True

    async def poll_once(self) -> int:
        """One pass over every open task; returns how many changed."""
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for task_id, entry in self._entries.items():
            if entry.owners and not entry.snapshot.terminal and entry.snapshot.seq:
                groups[(entry.snapshot.namespace, entry.snapshot.fleet)].append(task_id)
        if not groups:
            return 0
        limit = asyncio.Semaphore(GROUP_CONCURRENCY)

        async def one(group: tuple[str, str], ids: list[str]) -> int:
            async with limit:
                return await self._poll_fleet(group[0], group[1], ids)

        counts = await asyncio.gather(*(one(g, ids) for g, ids in groups.items()))
        return sum(counts)

    async def _poll_fleet(self, namespace: str, fleet: str, ids: list[str]) -> int:
        assert self.client is not None
        pending = {i: self._entries[i].snapshot.seq for i in ids if i in self._entries}
        changed = 0
        after = min(pending.values(), default=1) - 1
        for _ in range(MAX_PAGES):
            if not pending:
                break
            page = await self.client.list(
                namespace=namespace, fleet=fleet, after=after, limit=PAGE_SIZE
            )
            for task in page.tasks:
                if pending.pop(task.id, None) is not None:
                    changed += self._observe(Snapshot.of(task))
            if page.next is None or not pending:
                break
            # Jump over the fleet's tasks that no Task owns.
            after = max(int(page.next), min(pending.values()) - 1)
        return changed + await self._read_each(list(pending))

    async def _read_each(self, ids: Iterable[str]) -> int:
        """Tasks the list did not reach, or that it no longer shows, one GET each."""
        assert self.client is not None
        client = self.client
        limit = asyncio.Semaphore(GET_CONCURRENCY)

        async def one(task_id: str) -> int:
            async with limit:
                try:
                    snapshot = Snapshot.of(await client.get(task_id))
                except RouterError as err:
                    if err.status != 404:
                        raise
                    entry = self._entries.get(task_id)
                    if entry is None:
                        return 0
                    snapshot = replace(entry.snapshot, lost=True)
                return self._observe(snapshot)

        return sum(await asyncio.gather(*(one(i) for i in ids)))

    def _observe(self, snapshot: Snapshot) -> int:
        entry = self._entries.get(snapshot.id)
        if entry is None or entry.snapshot == snapshot:
            return 0
        entry.snapshot = snapshot
        for key, _uid in entry.owners:
            self.queue.add(key)
        return 1

    # -- cancelling -------------------------------------------------------------------------

    def _alive(self, owner: Owner) -> bool:
        (namespace, name), uid = owner
        view = self.cache.task(namespace, name)
        return view is not None and view.uid == uid and not view.deleting

    def _disown(self, owner: Owner) -> str | None:
        """Forget ``owner``; the router id it owned, if that task has no owner left."""
        task_id = self._router_ids.pop(owner, None)
        if self._by_key.get(owner[0]) == owner:
            del self._by_key[owner[0]]
        entry = self._entries.get(task_id or "")
        if entry is None:
            return None
        entry.owners.discard(owner)
        return task_id if not entry.owners else None

    async def sweep(self) -> int:
        """Cancel tracked tasks whose Tasks are all gone; returns how many were cancelled."""
        unowned = []
        for task_id, entry in list(self._entries.items()):
            for owner in [o for o in entry.owners if not self._alive(o)]:
                self._disown(owner)
            if not entry.owners:
                unowned.append(task_id)
        return await self._cancel_unowned(unowned)

    async def _cancel_unowned(self, ids: list[str]) -> int:
        assert self.client is not None
        cancelled = 0
        for task_id in ids:
            entry = self._entries.get(task_id)
            if entry is None or entry.owners:
                continue
            if not entry.snapshot.terminal:
                try:
                    task = await self.client.cancel(task_id)
                except RouterError as err:
                    if err.status != 404:
                        raise  # kept: the next sweep tries again
                else:
                    cancelled += task.phase == "Cancelled"
                    log.info(
                        "cancelled the router task of a deleted Task",
                        extra={"taskId": task_id, "namespace": task.namespace},
                    )
            self._entries.pop(task_id, None)
        return cancelled

    async def cancel_orphans(self) -> int:
        """Once per leadership: cancel unfinished router tasks of Tasks deleted while no
        operator ran (default-key ones; see the module docstring)."""
        assert self.client is not None
        started = time.time()
        candidates: list[wire.Task] = []
        for phase in OPEN_PHASES:
            after = 0
            while True:
                page = await self.client.list(phase=phase, after=after, limit=1000)
                candidates += [
                    t
                    for t in page.tasks
                    if t.createdAt < started and submitted_by_operator(t) is not None
                ]
                if page.next is None:
                    break
                after = int(page.next)
        # Read the live uids only now: a Task created during the scan is in the cache.
        live = {v.uid for v in self.cache.all_tasks() if not v.deleting}
        cancelled = 0
        for task in candidates:
            if submitted_by_operator(task) in live or task.id in self._entries:
                continue
            try:
                await self.client.cancel(task.id)
            except RouterError as err:
                if err.status != 404:
                    raise
                continue
            cancelled += 1
            log.info(
                "cancelled the router task of a Task deleted while no operator ran",
                extra={"taskId": task.id, "namespace": task.namespace, "uid": task.idempotencyKey},
            )
        return cancelled

    def __len__(self) -> int:
        return len(self._entries)
