"""NATS JetStream store, for several router replicas across machines.

Layout: three KV buckets (file storage, history 1).

- ``<prefix>_tasks``: task id -> task JSON. Every change is a compare-and-swap
  (``update(key, value, last=revision)``), so two replicas can never both claim a
  task or both record an outcome for it: the loser re-reads and re-decides.
- ``<prefix>_idem``: hash(namespace, idempotency key) -> task id, written with
  ``create`` (fails if present), so keys are remembered for the task's lifetime,
  not just the 2-minute ``Nats-Msg-Id`` window.
- ``<prefix>_agents``: namespace.name -> agent registration and last heartbeat.

Each replica watches the buckets and keeps a compact mirror in memory: raw task
bytes plus the few fields dispatch needs (priority heaps per fleet and capability,
running leases, counters). Reads and candidate selection use the mirror; writes
always go through compare-and-swap, so a stale mirror costs a retry, never a
wrong decision. Durability: a write returns after JetStream stored it (file
storage; fsync on JetStream's sync interval, like SQLite's synchronous=NORMAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import nats
from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo, Task
from agentarmy.router import lifecycle
from agentarmy.router.store import summary
from agentarmy.router.store.base import (
    QueueDepths,
    Reported,
    StoreError,
    StoreSettings,
    Submitted,
    TaskQuery,
    TaskStore,
    UnknownAgent,
    leases_by_agent,
    plan_leases,
    room_for,
)
from agentarmy.router.store.nats_governance import NatsGovernance

log = logging.getLogger(__name__)
R = TypeVar("R")
P = ParamSpec("P")

CAS_RETRIES = 8
WRITE_TIMEOUT = 10.0
WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream's error codes for a compare-and-swap that lost (JSStreamWrongLastSequence*)."""


@dataclass(slots=True)
class _Entry:
    """What the mirror keeps per task: the raw JSON and the fields dispatch reads."""

    revision: int
    raw: bytes
    phase: str
    namespace: str
    fleet: str
    capability: str
    priority: int
    seq: int
    agent: str
    parent: str | None
    join_round: int | None
    waits_for: tuple[int, wire.JoinMode] | None
    """While WaitingForChildren: the join round it waits for and how (all, failFast)."""
    available_at: float
    expires_at: float | None
    ended_attempts: tuple[tuple[str, str, str], ...]
    """(agent, templateHash, outcome) of every ended attempt, for the counters."""
    running: Task | None
    """The parsed task while it runs (few at a time): its result is recorded without a parse."""

    def task(self) -> Task:
        return self.running if self.running is not None else Task.model_validate_json(self.raw)


def _entry(revision: int, raw: bytes, task: Task) -> _Entry:
    ends = [t for t in (task.leaseExpiresAt, task.deadlineAt) if t is not None]
    running = task.phase == "Running"
    return _Entry(
        revision=revision,
        raw=raw,
        phase=task.phase,
        namespace=task.namespace,
        fleet=task.fleet,
        capability=task.capability,
        priority=task.priority,
        seq=task.seq,
        agent=task.agent,
        parent=task.parentTaskId,
        join_round=task.joinRound,
        waits_for=(
            (task.join.round, task.join.mode)
            if task.phase == "WaitingForChildren" and task.join is not None
            else None
        ),
        available_at=task.availableAt,
        expires_at=min(ends) if running and ends else None,
        ended_attempts=tuple(
            (a.agent, a.templateHash, a.outcome) for a in task.attempts if a.outcome is not None
        ),
        running=task if running else None,
    )


class _Mirror:
    """In-memory view of the tasks bucket, updated by our own writes and the watcher."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.heaps: dict[tuple[str, str, str], list[tuple[int, int, str]]] = defaultdict(list)
        self.expiring: dict[str, float] = {}
        self.running_by_agent: Counter[str] = Counter()
        self.phase_counts: Counter[tuple[str, str, str]] = Counter()
        self.depths: Counter[tuple[str, str, int]] = Counter()
        self.queued: Counter[tuple[str, str, str]] = Counter()  # (ns, fleet, capability)
        self.agent_tally: Counter[tuple[str, str]] = Counter()  # (agent, Succeeded|Failed)
        self.template_attempts: Counter[tuple[str, str, str]] = Counter()  # (ns, fleet, hash)
        self.template_failures: Counter[tuple[str, str, str]] = Counter()  # (ns, fleet, hash)
        self.children: defaultdict[str, set[str]] = defaultdict(set)  # parent -> child ids
        self.waiting: set[str] = set()  # parents WaitingForChildren
        self.rounds: defaultdict[tuple[str, int], Counter[str]] = defaultdict(Counter)
        """(parent id, join round) -> phase -> children: a child's end asks "was that the
        last one?" without reading the parent or its other children."""

    def apply(self, task_id: str, entry: _Entry) -> bool:
        """Take a newer version of a task; False if we already had this one or a newer one."""
        old = self.entries.get(task_id)
        if old is not None and old.revision >= entry.revision:
            return False
        if old is not None:
            self._count(old, -1)
        self.entries[task_id] = entry
        self._count(entry, +1)
        if entry.parent is not None:
            self.children[entry.parent].add(task_id)
        if entry.phase == "WaitingForChildren":
            self.waiting.add(task_id)
        else:
            self.waiting.discard(task_id)
        self.expiring.pop(task_id, None)
        if entry.phase == "Queued":
            heapq.heappush(
                self.heaps[(entry.namespace, entry.fleet, entry.capability)],
                (-entry.priority, entry.seq, task_id),
            )
        elif entry.phase == "Running" and entry.expires_at is not None:
            self.expiring[task_id] = entry.expires_at
        return True

    def _count(self, entry: _Entry, sign: int) -> None:
        self.phase_counts[(entry.namespace, entry.fleet, entry.phase)] += sign
        if entry.phase == "Queued":
            self.depths[(entry.namespace, entry.fleet, entry.priority)] += sign
            self.queued[(entry.namespace, entry.fleet, entry.capability)] += sign
        if entry.phase == "Running":
            self.running_by_agent[entry.agent] += sign
        if entry.parent is not None and entry.join_round is not None:
            self.rounds[(entry.parent, entry.join_round)][entry.phase] += sign
        for agent, template_hash, outcome in entry.ended_attempts:
            if outcome == "Succeeded" or outcome in wire.COUNTED_OUTCOMES:
                template = (entry.namespace, entry.fleet, template_hash)
                self.template_attempts[template] += sign
                if outcome == "Succeeded":
                    self.agent_tally[(agent, "Succeeded")] += sign
                else:
                    self.agent_tally[(agent, "Failed")] += sign
                    self.template_failures[template] += sign

    def candidates(
        self,
        namespace: str,
        fleet: str,
        capabilities: Sequence[str],
        room: int,
        now: float,
    ) -> list[str]:
        """Pop up to ``room`` claimable task ids, best first; callers push back what they skip."""
        picked: list[tuple[int, int, str]] = []
        for capability in capabilities:
            heap = self.heaps.get((namespace, fleet, capability))
            waiting: list[tuple[int, int, str]] = []
            taken = 0
            while heap and taken < room:
                item = heapq.heappop(heap)
                entry = self.entries.get(item[2])
                if (
                    entry is None
                    or entry.phase != "Queued"
                    or (-entry.priority, entry.seq) != item[:2]
                ):
                    continue  # stale heap item: the task moved on
                if entry.available_at > now:
                    waiting.append(item)  # backing off; keep its place
                    continue
                picked.append(item)
                taken += 1
            for item in waiting:
                heapq.heappush(heap, item) if heap is not None else None
        picked.sort()
        for item in picked[room:]:
            self.push_back(namespace, fleet, item)
        return [item[2] for item in picked[:room]]

    def push_back(self, namespace: str, fleet: str, item: tuple[int, int, str]) -> None:
        entry = self.entries.get(item[2])
        if entry is not None:
            heapq.heappush(self.heaps[(namespace, fleet, entry.capability)], item)


class NatsStore(TaskStore):
    leases_on_submit = True

    def __init__(
        self, servers: str | list[str], settings: StoreSettings, prefix: str = "agentarmy"
    ) -> None:
        super().__init__(settings)
        self.servers = servers
        self.prefix = prefix
        self._nc: Any = None
        self._tasks_kv: Any = None
        self._idem_kv: Any = None
        self._agents_kv: Any = None
        self._mirror = _Mirror()
        self.governance = NatsGovernance(lambda: self._nc, prefix)
        self._agents: dict[tuple[str, str], tuple[int, AgentInfo]] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._last_seq = 0
        self._agent_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._settling: set[str] = set()
        """Parents whose join this replica is settling (their siblings being cancelled)."""
        self._writing: dict[str, tuple[bytes, Task]] = {}
        """Task writes awaiting JetStream's ack: their echo may arrive before it."""

    # -- plumbing -------------------------------------------------------------------------

    async def open(self, now: float) -> None:
        self._nc = await nats.connect(
            self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
        js = self._nc.jetstream(timeout=10)
        self._tasks_kv = await self._bucket(js, f"{self.prefix}_tasks")
        self._idem_kv = await self._bucket(js, f"{self.prefix}_idem")
        self._agents_kv = await self._bucket(js, f"{self.prefix}_agents")
        tasks_ready, agents_ready = asyncio.Event(), asyncio.Event()
        self._watchers = [
            asyncio.create_task(self._watch(self._tasks_kv, self._on_task_entry, tasks_ready)),
            asyncio.create_task(self._watch(self._agents_kv, self._on_agent_entry, agents_ready)),
        ]
        await asyncio.wait_for(asyncio.gather(tasks_ready.wait(), agents_ready.wait()), timeout=120)
        running = [tid for tid, e in self._mirror.entries.items() if e.phase == "Running"]
        lease = self.settings.lease_seconds
        await asyncio.gather(
            *(
                self._mutate(tid, lambda t: lifecycle.restart_grace(t, now, lease))
                for tid in running
            )
        )
        await self._sweep_cascades(now)

    async def close(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()

    @staticmethod
    async def _bucket(js: Any, name: str) -> Any:
        try:
            return await js.key_value(name)
        except BucketNotFoundError:
            return await js.create_key_value(bucket=name, history=1, storage=StorageType.FILE)

    async def _watch(self, kv: Any, handle: Callable[[Any], None], ready: asyncio.Event) -> None:
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:
                ready.set()
                continue
            try:
                handle(entry)
            except Exception:  # a bad entry must not stop the mirror
                log.exception("cannot apply %s from %s", entry.key, kv._name)

    def _on_task_entry(self, entry: Any) -> None:
        if entry.operation is not None or not entry.value:
            return  # deletes and purges: tasks are never deleted by this router
        known = self._mirror.entries.get(entry.key)
        if known is not None and known.revision >= entry.revision:
            return  # the echo of our own write (or older news): no need to parse it
        writing = self._writing.get(entry.key)
        if writing is not None and writing[0] == entry.value:
            # Our own write, echoed before its ack: the same bytes (no parse), and the caller
            # that wrote it tells dispatch and waiters itself.
            self._mirror.apply(entry.key, _entry(entry.revision, entry.value, writing[1]))
            return
        task = Task.model_validate_json(entry.value)
        self._last_seq = max(self._last_seq, task.seq)
        if self._mirror.apply(task.id, _entry(entry.revision, entry.value, task)) and self.listener:
            self.listener(task)

    def _on_agent_entry(self, entry: Any) -> None:
        if entry.operation is not None or not entry.value:
            return
        info = AgentInfo.model_validate_json(entry.value)
        key = (info.namespace, info.name)
        known = self._agents.get(key)
        if known is None or known[0] < entry.revision:
            self._agents[key] = (entry.revision, info)

    def _next_seq(self) -> int:
        # Time-ordered across replicas (microseconds), strictly increasing within one.
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    async def _fetch(self, task_id: str) -> tuple[int, Task] | None:
        try:
            entry = await self._tasks_kv.get(task_id)
        except KeyNotFoundError:
            return None
        task = Task.model_validate_json(entry.value)
        self._mirror.apply(task_id, _entry(entry.revision, entry.value, task))
        return entry.revision, task

    async def _store(self, task: Task, last: int) -> int:
        raw = task.model_dump_json().encode()
        with self._announcing(task, raw):
            revision = await self._write_task(task.id, raw, last)
        self._took(task, revision, raw)
        return revision

    def _took(self, task: Task, revision: int, raw: bytes) -> None:
        """Mirror our own write, unless the watcher already did (its echo beat the ack)."""
        known = self._mirror.entries.get(task.id)
        if known is None or known.revision < revision:
            self._mirror.apply(task.id, _entry(revision, raw, task))

    async def _write_task(self, task_id: str, raw: bytes, last: int) -> int:
        """Compare-and-swap one task (``last=0``: create it) and return its new revision.

        Published straight to the bucket's subject with the expected-revision header, as
        the KeyValue wrapper does (ADR-8), without its layers: they cost a third of a write.
        """
        reply = await self._nc.request(
            f"$KV.{self.prefix}_tasks.{task_id}",
            raw,
            timeout=WRITE_TIMEOUT,
            headers={"Nats-Expected-Last-Subject-Sequence": str(last)},
        )
        ack = json.loads(reply.data)
        error = ack.get("error")
        if error is None:
            return int(ack["seq"])
        if error.get("err_code") in WRONG_LAST_SEQUENCE:
            raise KeyWrongLastSequenceError(error.get("description"))
        raise StoreError(f"JetStream refused a write of task {task_id}: {error}")

    @contextlib.contextmanager
    def _announcing(self, task: Task, raw: bytes) -> Iterator[None]:
        """Let the watcher recognise this write's echo while we wait for the ack."""
        self._writing[task.id] = (raw, task)
        try:
            yield
        finally:
            self._writing.pop(task.id, None)

    async def _mutate(
        self, task_id: str, change: Callable[[Task], Task | None]
    ) -> tuple[Task, Task | None] | None:
        """Apply ``change`` under compare-and-swap; (task it saw, new task or None), None if unknown."""
        entry = self._mirror.entries.get(task_id)
        current = (entry.revision, entry.task()) if entry else await self._fetch(task_id)
        for _ in range(CAS_RETRIES):
            if current is None:
                return None
            revision, task = current
            updated = change(task)
            if updated is None:
                return task, None
            try:
                await self._store(updated, revision)
            except KeyWrongLastSequenceError:
                current = await self._fetch(task_id)
                continue
            if updated.joinRound is not None and lifecycle.is_terminal(updated):
                await self._settle_parent(updated)
            return task, updated
        raise StoreError(
            f"task {task_id} kept changing under us; giving up after {CAS_RETRIES} tries"
        )

    # -- joins and cascades: level-based, so a replica that stopped half-way is caught up
    # -- by the next sweep (expire_due) -----------------------------------------------------

    def _round_phases(self, parent_id: str, join_round: int) -> dict[str, int]:
        """Phase -> count of the children of one join round of a parent (mirror)."""
        counts = self._mirror.rounds.get((parent_id, join_round))
        return {} if counts is None else {phase: n for phase, n in counts.items() if n > 0}

    def _join_phases(self, parent: Task) -> dict[str, int]:
        return {} if parent.join is None else self._round_phases(parent.id, parent.join.round)

    def _may_resume(self, parent_id: str) -> bool:
        """False when the mirror shows the parent not waiting, or its round's children not
        yet ending the join: the usual answer for all but the last child, read from the
        counters without parsing the parent (whose input may be large) or its children."""
        entry = self._mirror.entries.get(parent_id)
        if entry is None:
            return True  # not mirrored yet: let _settle read it
        if entry.waits_for is None:
            return False
        join_round, mode = entry.waits_for
        return lifecycle.join_ends(mode, self._round_phases(parent_id, join_round))

    async def _settle_parent(self, child: Task) -> None:
        assert child.parentTaskId is not None
        if self._may_resume(child.parentTaskId):
            await self._settle(child.parentTaskId, child.finishedAt or time.time())

    async def _settle(self, parent_id: str, now: float) -> None:
        """The join of one parent: compare-and-swap, so it resumes once whoever tries. For
        failFast the siblings are cancelled first, so the resumed parent sees them ended."""
        if parent_id in self._settling:
            return  # a cancelled sibling's end, while this replica settles the parent
        current = await self.get(parent_id)
        trial = current and lifecycle.settle_join(current, self._join_phases(current), now)
        if not trial or trial.join is None:
            return
        self._settling.add(parent_id)
        try:
            if trial.join.reason == "childFailed":
                await self._cancel_children(parent_id, now, trial.join.round)
            outcome = await self._mutate(
                parent_id, lambda p: lifecycle.settle_join(p, self._join_phases(p), now)
            )
        finally:
            self._settling.discard(parent_id)
        if outcome is not None and outcome[1] is not None:
            self._tell(outcome[1])

    async def _cancel_children(
        self, parent_id: str, now: float, join_round: int | None = None
    ) -> None:
        for child_id in list(self._mirror.children.get(parent_id, ())):
            entry = self._mirror.entries.get(child_id)
            if entry is None or lifecycle.is_terminal_phase(entry.phase):
                continue
            if join_round is not None and entry.join_round != join_round:
                continue
            outcome = await self._mutate(child_id, lambda t: lifecycle.cancel(t, now))
            if outcome is not None and outcome[1] is not None:
                self._tell(outcome[1])
            await self._cancel_children(child_id, now)

    def _tell(self, task: Task) -> None:
        if self.listener is not None:
            self.listener(task)

    async def _sweep_joins(self, now: float) -> None:
        """Parents whose join a stopped replica did not finish; cancelled parents' children."""
        for parent_id in list(self._mirror.waiting):
            if self._may_resume(parent_id):
                await self._settle(parent_id, now)

    async def _sweep_cascades(self, now: float) -> None:
        for parent_id in list(self._mirror.children):
            entry = self._mirror.entries.get(parent_id)
            if entry is not None and entry.phase == "Cancelled":
                await self._cancel_children(parent_id, now)

    async def _decide(
        self,
        task_id: str,
        decide: Callable[Concatenate[Task | None, P], tuple[Task | None, R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> tuple[Task | None, R]:
        """``_mutate`` for a lifecycle decision that also answers the caller (a lease status,
        a result ack): the task written (None: nothing written) and the answer for the task
        as last seen, or for no task (``decide(None, ...)``) when it does not exist."""
        answers: list[R] = []

        def change(task: Task) -> Task | None:
            updated, answer = decide(task, *args, **kwargs)
            answers.append(answer)
            return updated

        outcome = await self._mutate(task_id, change)
        if outcome is None:
            return decide(None, *args, **kwargs)
        return outcome[1], answers[-1]

    # -- tasks ----------------------------------------------------------------------------

    async def submit(self, requests: Sequence[wire.SubmitTask], now: float) -> list[Submitted]:
        return list(await asyncio.gather(*(self._submit_one(r, now) for r in requests)))

    async def submit_and_lease(
        self,
        requests: Sequence[wire.SubmitTask],
        now: float,
        agents: Sequence[tuple[AgentInfo, int]],
    ) -> tuple[list[Submitted], list[list[Task]]]:
        # A task planned for an agent is created already leased: one write instead of a
        # create and a compare-and-swap.
        queued = self._mirror.queued
        plan = plan_leases(
            requests,
            agents,
            self._mirror.running_by_agent,
            lambda r: queued[(r.namespace, r.fleet, r.capability)] > 0,
        )
        submitted = list(
            await asyncio.gather(
                *(
                    self._submit_one(r, now, None if i is None else agents[i][0])
                    for r, i in zip(requests, plan, strict=True)
                )
            )
        )
        return submitted, leases_by_agent(submitted, plan, len(agents))

    async def _submit_one(
        self,
        request: wire.SubmitTask,
        now: float,
        lease_to: AgentInfo | None = None,
        depth: int = 0,
        join_round: int | None = None,
        task_id: str | None = None,
    ) -> Submitted:
        task_id = task_id or lifecycle.new_task_id()
        if request.idempotencyKey is not None:
            key = hashlib.sha256(
                f"{request.namespace}\0{request.idempotencyKey}".encode()
            ).hexdigest()
            try:
                await self._idem_kv.create(key, task_id.encode())
            except KeyWrongLastSequenceError:
                task_id = (await self._idem_kv.get(key)).value.decode()
                existing = await self._fetch(task_id)
                if existing is not None:
                    return Submitted(existing[1], created=False)
                # The earlier submitter stopped between the two writes: finish its job.
        task = lifecycle.new_task(request, task_id, self._next_seq(), now, depth, join_round)
        if lease_to is not None:
            task = lifecycle.start_for(task, lease_to, now, self.settings.lease_seconds)
        raw = task.model_dump_json().encode()
        try:
            with self._announcing(task, raw):
                revision = await self._write_task(task.id, raw, last=0)
        except KeyWrongLastSequenceError:
            existing = await self._fetch(task.id)
            if existing is None:
                raise
            return Submitted(existing[1], created=False)
        self._took(task, revision, raw)
        return Submitted(task, created=True)

    async def get(self, task_id: str) -> Task | None:
        entry = self._mirror.entries.get(task_id)
        if entry is not None:
            return entry.task()
        fetched = await self._fetch(task_id)
        return fetched[1] if fetched else None

    async def list_tasks(self, query: TaskQuery) -> list[Task]:
        after = query.after_seq or 0
        entries = self._mirror.entries
        # A parent's children (a join resuming, a tree) from their index, not a full scan.
        scope = (
            entries.values()
            if query.parent is None
            else [entries[c] for c in self._mirror.children.get(query.parent, ()) if c in entries]
        )
        matches = [
            e
            for e in scope
            if e.seq > after
            and (query.namespace is None or e.namespace == query.namespace)
            and (query.fleet is None or e.fleet == query.fleet)
            and (query.phase is None or e.phase == query.phase)
            and (query.parent is None or e.parent == query.parent)
        ]
        chosen = heapq.nsmallest(query.limit, matches, key=lambda e: e.seq)
        return [Task.model_validate_json(e.raw) for e in chosen]

    async def update(
        self, task_id: str, change: Callable[[Task], Task | None]
    ) -> tuple[Task, bool] | None:
        outcome = await self._mutate(task_id, change)
        if outcome is None:
            return None
        seen, updated = outcome
        return (updated, True) if updated is not None else (seen, False)

    async def cancel(self, task_id: str, now: float) -> tuple[Task, bool] | None:
        outcome = await self.update(task_id, lambda task: lifecycle.cancel(task, now))
        if outcome is not None and outcome[1]:
            await self._cancel_children(task_id, now)
        return outcome

    async def spawn(
        self,
        parent_id: str,
        park: Callable[[Task], Task | None],
        children: Sequence[wire.SubmitTask],
        now: float,
    ) -> tuple[Task, list[Task] | None] | None:
        # Children first (their ids make a retried call find them), then the parent
        # parks by compare-and-swap; children that ended meanwhile are settled right after.
        current = await self.get(parent_id)
        if current is None:
            return None
        trial = park(current)
        if trial is None or trial.join is None:
            return current, None
        depth, join_round = trial.depth + 1, trial.join.round
        started = await asyncio.gather(
            *(
                self._submit_one(
                    r,
                    now,
                    None,
                    depth,
                    join_round,
                    lifecycle.child_task_id(parent_id, join_round, i),
                )
                for i, r in enumerate(children)
            )
        )
        outcome = await self._mutate(parent_id, park)
        if outcome is None or outcome[1] is None:  # the lease ended meanwhile: no one waits
            for item in started:
                await self._mutate(item.task.id, lambda t: lifecycle.cancel(t, now))
            return (current if outcome is None else outcome[0]), None
        await self._settle(parent_id, now)
        parent = await self.get(parent_id)
        return (parent or outcome[1]), [item.task for item in started]

    # -- agents ---------------------------------------------------------------------------

    async def register(self, agent: wire.RegisterAgent, now: float) -> AgentInfo:
        known = self._agents.get((agent.namespace, agent.name))
        info = AgentInfo(
            **agent.model_dump(),
            registeredAt=known[1].registeredAt if known else now,
            lastHeartbeat=now,
            ready=True,
        )
        await self._put_agent(info)
        return info

    async def _put_agent(self, info: AgentInfo) -> None:
        revision = await self._agents_kv.put(
            f"{info.namespace}.{info.name}", info.model_dump_json().encode()
        )
        self._agents[(info.namespace, info.name)] = (revision, info)

    async def get_agent(self, namespace: str, name: str) -> AgentInfo | None:
        known = self._agents.get((namespace, name))
        if known is not None:
            return known[1]
        try:
            entry = await self._agents_kv.get(f"{namespace}.{name}")
        except KeyNotFoundError:
            return None
        info = AgentInfo.model_validate_json(entry.value)
        self._agents[(namespace, name)] = (entry.revision, info)
        return info

    async def heartbeat(
        self, agent: AgentInfo, leases: Sequence[wire.LeaseRef], draining: bool, now: float
    ) -> list[wire.LeaseStatus]:
        current = await self.get_agent(agent.namespace, agent.name)
        holder = lifecycle.agent_id(agent.namespace, agent.name)
        if current is None:
            raise UnknownAgent(holder)
        await self._put_agent(
            current.model_copy(update={"lastHeartbeat": now, "ready": not draining})
        )
        return list(await asyncio.gather(*(self._extend_one(ref, holder, now) for ref in leases)))

    async def _extend_one(self, ref: wire.LeaseRef, holder: str, now: float) -> wire.LeaseStatus:
        lease = self.settings.lease_seconds
        _, status = await self._decide(ref.taskId, lifecycle.renew_lease, ref, holder, now, lease)
        return status

    async def claim(self, agent: AgentInfo, max_tasks: int, now: float) -> list[Task]:
        holder = lifecycle.agent_id(agent.namespace, agent.name)
        async with self._agent_locks[holder]:
            room = room_for(agent, max_tasks, self._mirror.running_by_agent)
            if room <= 0:
                return []
            ids = self._mirror.candidates(
                agent.namespace,
                agent.fleet,
                agent.capabilities,
                room,
                now,
            )
            claimed = await asyncio.gather(
                *(self._claim_one(tid, agent, holder, now) for tid in ids)
            )
        return [task for task in claimed if task is not None]

    async def _claim_one(
        self, task_id: str, agent: AgentInfo, holder: str, now: float
    ) -> Task | None:
        entry = self._mirror.entries.get(task_id)
        if entry is None:
            return None
        if entry.phase != "Queued":
            return None
        task = entry.task()
        started = lifecycle.start_attempt(
            task, holder, agent.templateHash, now, self.settings.lease_seconds
        )
        try:
            await self._store(started, entry.revision)
        except KeyWrongLastSequenceError:
            await self._fetch(task_id)  # another replica got there first; refresh and move on
            return None
        return started

    async def report(
        self, agent: AgentInfo, results: Sequence[wire.TaskResult], now: float
    ) -> list[Reported]:
        holder = lifecycle.agent_id(agent.namespace, agent.name)
        return list(await asyncio.gather(*(self._report_one(r, holder, now) for r in results)))

    async def _report_one(self, result: wire.TaskResult, holder: str, now: float) -> Reported:
        policy = self.settings.retry
        updated, ack = await self._decide(
            result.taskId, lifecycle.apply_result, result, holder, now, policy
        )
        return Reported(ack, updated)

    async def expire_due(self, now: float) -> list[Task]:
        await self._sweep_joins(now)
        due = [tid for tid, at in self._mirror.expiring.items() if at <= now]
        policy = self.settings.retry
        outcomes = await asyncio.gather(
            *(self._mutate(tid, lambda t: lifecycle.expire(t, now, policy)) for tid in due),
            return_exceptions=True,
        )
        changed = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.warning("lease expiry failed: %s", outcome)
            elif outcome is not None and outcome[1] is not None:
                changed.append(outcome[1])
        return changed

    # -- reading for dispatch, metrics and the operator -------------------------------------

    async def claimable(
        self, namespace: str, fleet: str, capabilities: Sequence[str], now: float, limit: int
    ) -> dict[str, int]:
        # Queued tasks still backing off count too: an over-count only costs a short claim.
        queued = self._mirror.queued
        return {c: min(limit, max(0, queued[(namespace, fleet, c)])) for c in capabilities}

    async def running_counts(self, namespace: str, fleet: str) -> dict[str, int]:
        prefix = f"{namespace}/"  # the namespace's agents: a superset of the fleet's
        running = self._mirror.running_by_agent
        return {a: n for a, n in running.items() if n > 0 and a.startswith(prefix)}

    async def queue_depths(self) -> QueueDepths:
        return {key: count for key, count in self._mirror.depths.items() if count > 0}

    async def stats(self, now: float) -> wire.Stats:
        mirror = self._mirror
        tally = mirror.agent_tally
        agents = []
        for _, info in self._agents.values():
            holder = lifecycle.agent_id(info.namespace, info.name)
            agents.append((info, tally[(holder, "Succeeded")], tally[(holder, "Failed")]))
        failures = mirror.template_failures
        return summary.build_stats(
            now,
            self.settings.liveness_seconds,
            phases=mirror.phase_counts,
            depths=mirror.depths,
            running=mirror.running_by_agent,
            agents=agents,
            templates={key: (n, failures[key]) for key, n in mirror.template_attempts.items()},
        )
