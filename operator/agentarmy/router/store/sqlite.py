"""SQLite store: WAL mode, one writer with group commit, reads beside it.

Durability promise: WAL + ``synchronous=NORMAL``. A caller is answered only after
COMMIT, so no acknowledged task is lost when the router (or the whole process tree)
is killed; only an OS crash or power loss may drop the last transactions.
``synchronous=FULL`` (``sqlite:///path?synchronous=full``) closes that gap at some
throughput cost.

Group commit: operations queue up while the previous batch is being written; the
writer runs each queued operation in its own SAVEPOINT inside one transaction and
resolves every caller's future after that transaction's COMMIT.

Where the writes run: with ``synchronous=NORMAL`` a COMMIT in WAL mode is a write into
the WAL file, never an fsync (checkpoints run on their own connection and thread), so the
writer runs each batch on the event loop itself, between two loop iterations: everything
queued during one iteration shares one transaction, and no caller pays two thread
hand-offs (and the GIL contention that comes with them) per write. Point reads (a task,
an agent, running counts) use the same connection on the loop - no transaction is ever
open between batches, so they see exactly what has been committed. With
``synchronous=FULL`` each COMMIT fsyncs, so batches run on a writer thread instead and
reads go to a reader thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo, Task
from agentarmy.router import lifecycle
from agentarmy.router.store import summary
from agentarmy.router.store.base import (
    QueueDepths,
    Reported,
    StoreSettings,
    Submitted,
    TaskQuery,
    TaskStore,
    UnknownAgent,
    leases_by_agent,
    plan_leases,
    room_for,
)
from agentarmy.router.store.sqlite_governance import SqliteGovernance

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
Operation = Callable[[sqlite3.Connection], Any]

MAX_BATCH_OPERATIONS = 2000

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    fleet TEXT NOT NULL,
    capability TEXT NOT NULL,
    priority INTEGER NOT NULL,
    phase TEXT NOT NULL,
    available_at REAL NOT NULL,
    expires_at REAL,
    agent TEXT NOT NULL DEFAULT '',
    parent TEXT,
    idem_key TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_queue
    ON tasks(namespace, fleet, capability, priority DESC, seq) WHERE phase = 'Queued';
CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks(expires_at) WHERE phase = 'Running';
-- Leases per agent are counted in memory (see _RunningLeases); an index on them only cost
-- two page writes per task. Databases made before that lose it here.
DROP INDEX IF EXISTS tasks_agent;
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idem
    ON tasks(namespace, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_fleet ON tasks(namespace, fleet, seq);
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks(parent) WHERE parent IS NOT NULL;
CREATE TABLE IF NOT EXISTS agents (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS templates (
    namespace TEXT NOT NULL,
    fleet TEXT NOT NULL,
    template_hash TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, fleet, template_hash)
);
"""


JOIN_SCHEMA = """
CREATE INDEX IF NOT EXISTS tasks_join
    ON tasks(parent, join_round, phase) WHERE join_round IS NOT NULL;
"""
"""Children a parent waits for, by round and phase: the join asks "any still running?"."""

UNFINISHED_PHASES = ("Pending", "Queued", "Running", "AwaitingApproval", "WaitingForChildren")


def _migrate(conn: sqlite3.Connection) -> None:
    """Columns added after the first release (databases made before lack them)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "join_round" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN join_round INTEGER")
    conn.executescript(JOIN_SCHEMA)


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


class _GroupCommitWriter:
    """Runs write operations on one thread; all that queue up share one transaction."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        inline: bool,
        on_rollback: Callable[[sqlite3.Connection], None] = lambda conn: None,
    ) -> None:
        self._conn = conn
        self._on_rollback = on_rollback
        """Told (inside the transaction, after the rollback) so in-memory copies can resync."""
        self.inline = inline
        """Run batches on the event loop (no fsync per COMMIT) instead of a writer thread."""
        self._executor = (
            None
            if inline
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        )
        self._pending: list[tuple[Operation, asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sqlite-group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((operation, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[:MAX_BATCH_OPERATIONS]
                del self._pending[:MAX_BATCH_OPERATIONS]
                operations = [op for op, _ in batch]
                try:
                    if self._executor is None:
                        outcomes = self._apply(operations)
                    else:
                        outcomes = await loop.run_in_executor(
                            self._executor, self._apply, operations
                        )
                except Exception as error:  # COMMIT itself failed: nobody's change is durable
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)

    def _apply(self, operations: list[Operation]) -> list[Any]:
        conn = self._conn
        outcomes: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(operations) == 1:  # alone in its transaction: no savepoint needed
                try:
                    outcomes.append(operations[0](conn))
                except Exception as error:
                    conn.execute("ROLLBACK")
                    self._on_rollback(conn)
                    return [error]
                conn.execute("COMMIT")
                return outcomes
            for operation in operations:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append(operation(conn))
                except Exception as error:  # one bad operation must not sink the batch
                    conn.execute("ROLLBACK TO op")
                    self._on_rollback(conn)
                    outcomes.append(error)
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._on_rollback(conn)
            raise
        return outcomes


class _RunningLeases:
    """The running tasks, as last written, and how many each agent holds. The store is the
    database's only writer, so it keeps these beside the table: dispatch counts leases per
    agent on every round, and a result finds its task without reading and parsing it. After
    any rollback they are read back from the table."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.per_agent: Counter[str] = Counter()

    def load(self, conn: sqlite3.Connection) -> None:
        self.tasks.clear()
        self.per_agent.clear()
        for (body,) in conn.execute("SELECT body FROM tasks WHERE phase = 'Running'"):
            self.saw(Task.model_validate_json(body))

    def saw(self, task: Task) -> None:
        previous = self.tasks.pop(task.id, None)
        if previous is not None:
            self.per_agent[previous.agent] -= 1
        if task.phase == "Running":
            self.tasks[task.id] = task
            self.per_agent[task.agent] += 1

    def find(self, conn: sqlite3.Connection, task_id: str) -> Task | None:
        task = self.tasks.get(task_id)
        return task if task is not None else _load(conn, task_id)


class SqliteStore(TaskStore):
    leases_on_submit = True

    def __init__(
        self, path: str | Path, settings: StoreSettings, synchronous: str = "NORMAL"
    ) -> None:
        super().__init__(settings)
        self.path = str(path)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.synchronous = synchronous.upper()
        self._writer: _GroupCommitWriter | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite-reader"
        )
        self._checkpointer: asyncio.Task[None] | None = None
        self._next_seq = 0
        self._leases = _RunningLeases()
        self.governance = SqliteGovernance(self._write, self._read)
        self._side_changes: list[Task] = []
        """Tasks a write changed beside its own (joins, cascades), told after its COMMIT."""
        self._agents: dict[tuple[str, str], AgentInfo] = {}
        """Registrations as committed. This process is the database's only writer (one
        replica), so the copy cannot go stale; it spares a query on every agent call."""

    # -- plumbing -------------------------------------------------------------------------

    async def open(self, now: float) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        writer_conn = _connect(self.path, self.synchronous)
        writer_conn.executescript(SCHEMA)
        _migrate(writer_conn)
        # Checkpoints run beside the writer (see _checkpoint_forever), not inside a commit,
        # so no caller waits for the database file's fsync.
        writer_conn.execute("PRAGMA wal_autocheckpoint=0")
        self._next_seq = (writer_conn.execute("SELECT max(seq) FROM tasks").fetchone()[0] or 0) + 1
        self._leases.load(writer_conn)
        self._writer = _GroupCommitWriter(
            writer_conn, inline=self.synchronous == "NORMAL", on_rollback=self._rolled_back
        )
        self._writer.start()
        self._reader = _connect(self.path, self.synchronous)
        await self._write(lambda conn: self._grant_restart_grace(conn, now))
        if self.path != ":memory:":
            self._checkpointer = asyncio.create_task(
                self._checkpoint_forever(), name="sqlite-checkpoint"
            )

    async def _checkpoint_forever(self, interval: float = 1.0) -> None:
        checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        conn = _connect(self.path, self.synchronous)
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(interval)
                await loop.run_in_executor(
                    checkpoints, conn.execute, "PRAGMA wal_checkpoint(PASSIVE)"
                )
        finally:
            checkpoints.shutdown(wait=True)
            conn.close()

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        if self._writer is not None:
            await self._writer.stop()
            self._writer._conn.close()
        if self._reader is not None:
            self._reader.close()
        self._reader_executor.shutdown(wait=True)

    async def _write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        assert self._writer is not None, "store not opened"
        try:
            return await self._writer.call(operation)
        finally:
            self._tell_side_changes()

    def _tell_side_changes(self) -> None:
        changed, self._side_changes = self._side_changes, []
        if self.listener is not None:
            for task in changed:
                self.listener(task)

    def _rolled_back(self, conn: sqlite3.Connection) -> None:
        self._leases.load(conn)
        self._side_changes.clear()  # may drop a committed one's news: dispatch re-polls anyway

    async def _read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        assert self._reader is not None, "store not opened"
        reader = self._reader
        return await asyncio.get_running_loop().run_in_executor(
            self._reader_executor, lambda: operation(reader)
        )

    async def _peek(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """A small read: on the loop with the writer's connection when it runs there."""
        writer = self._writer
        assert writer is not None, "store not opened"
        if writer.inline:
            return operation(writer._conn)
        return await self._read(operation)

    def _save(self, conn: sqlite3.Connection, task: Task) -> None:
        """Write a changed task (every task write goes through here). A child's end settles
        its parent's join in the same transaction: the join happens exactly once, with it."""
        _update(conn, task)
        self._leases.saw(task)
        if task.joinRound is not None and lifecycle.is_terminal(task):
            self._settle_parent(conn, task)

    def _settle_parent(self, conn: sqlite3.Connection, child: Task) -> None:
        assert child.parentTaskId is not None
        # The usual case (not the last child) costs two index probes; the parent, whose
        # input may be large, is read only when it may resume.
        row = conn.execute("SELECT phase FROM tasks WHERE id = ?", (child.parentTaskId,)).fetchone()
        if row is None or row[0] != "WaitingForChildren":
            return
        if child.phase not in lifecycle.UNSUCCESSFUL_PHASES:  # failFast resumes on a failure
            unfinished = conn.execute(
                "SELECT 1 FROM tasks WHERE parent = ? AND join_round = ? AND phase IN"
                f" ({','.join('?' * len(UNFINISHED_PHASES))}) LIMIT 1",
                (child.parentTaskId, child.joinRound, *UNFINISHED_PHASES),
            ).fetchone()
            if unfinished is not None:
                return
        parent = _load(conn, child.parentTaskId)
        if parent is None or not lifecycle.waits_for(parent, child):
            return
        phases = dict(
            conn.execute(
                "SELECT phase, count(*) FROM tasks WHERE parent = ? AND join_round = ?"
                " GROUP BY phase",
                (parent.id, child.joinRound),
            ).fetchall()
        )
        now = child.finishedAt if child.finishedAt is not None else parent.availableAt
        resumed = lifecycle.settle_join(parent, phases, now)
        if resumed is None:
            return
        self._save(conn, resumed)
        self._side_changes.append(resumed)
        if resumed.join is not None and resumed.join.reason == "childFailed":
            self._cancel_children(conn, parent.id, now, resumed.join.round)  # the siblings

    def _cancel_children(
        self, conn: sqlite3.Connection, parent_id: str, now: float, join_round: int | None = None
    ) -> None:
        """Cancel the unfinished descendants of a parent (depth first); with ``join_round``,
        only the children of that round (and theirs)."""
        sql = (
            "SELECT id, body FROM tasks WHERE parent = ? AND phase IN"
            f" ({','.join('?' * len(UNFINISHED_PHASES))})"
        )
        params: list[object] = [parent_id, *UNFINISHED_PHASES]
        if join_round is not None:
            sql += " AND join_round = ?"
            params.append(join_round)
        for child_id, body in conn.execute(sql, params).fetchall():
            child = self._leases.tasks.get(child_id) or Task.model_validate_json(body)
            cancelled = lifecycle.cancel(child, now)
            if cancelled is None:
                continue
            self._save(conn, cancelled)
            self._side_changes.append(cancelled)
            self._cancel_children(conn, child_id, now)

    def _decide(
        self,
        conn: sqlite3.Connection,
        task_id: str,
        decide: Callable[Concatenate[Task | None, P], tuple[Task | None, R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> tuple[Task | None, R]:
        """Apply a lifecycle decision that also answers the caller (a lease status, a result
        ack) to a task (None: no such task) and write the task it returns, if any."""
        updated, answer = decide(self._leases.find(conn, task_id), *args, **kwargs)
        if updated is not None:
            self._save(conn, updated)
        return updated, answer

    def _grant_restart_grace(self, conn: sqlite3.Connection, now: float) -> None:
        rows = conn.execute("SELECT body FROM tasks WHERE phase = 'Running'").fetchall()
        for (body,) in rows:
            task = lifecycle.restart_grace(
                Task.model_validate_json(body), now, self.settings.lease_seconds
            )
            if task is not None:
                self._save(conn, task)

    # -- tasks ----------------------------------------------------------------------------

    async def submit(self, requests: Sequence[wire.SubmitTask], now: float) -> list[Submitted]:
        return await self._write(lambda conn: [self._submit_one(conn, r, now) for r in requests])

    def _submit_one(
        self,
        conn: sqlite3.Connection,
        request: wire.SubmitTask,
        now: float,
        lease_to: AgentInfo | None = None,
        depth: int = 0,
        join_round: int | None = None,
        task_id: str | None = None,
    ) -> Submitted:
        if request.idempotencyKey is not None:
            row = conn.execute(
                "SELECT body FROM tasks WHERE namespace = ? AND idem_key = ?",
                (request.namespace, request.idempotencyKey),
            ).fetchone()
            if row is not None:
                return Submitted(Task.model_validate_json(row[0]), created=False)
        task = lifecycle.new_task(
            request, task_id or lifecycle.new_task_id(), self._next_seq, now, depth, join_round
        )
        self._next_seq += 1
        if lease_to is not None:
            task = lifecycle.start_for(task, lease_to, now, self.settings.lease_seconds)
        conn.execute(
            "INSERT INTO tasks (id, seq, namespace, fleet, capability, priority, phase, available_at,"
            " expires_at, agent, parent, idem_key, join_round, body)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                task.id,
                task.seq,
                task.namespace,
                task.fleet,
                task.capability,
                task.priority,
                task.phase,
                task.availableAt,
                _expires_at(task),
                task.agent,
                task.parentTaskId,
                task.idempotencyKey,
                task.joinRound,
                task.model_dump_json(),
            ),
        )
        self._leases.saw(task)
        return Submitted(task, created=True)

    async def get(self, task_id: str) -> Task | None:
        row = await self._peek(
            lambda conn: conn.execute("SELECT body FROM tasks WHERE id = ?", (task_id,)).fetchone()
        )
        return Task.model_validate_json(row[0]) if row else None

    async def list_tasks(self, query: TaskQuery) -> list[Task]:
        clauses, params = ["seq > ?"], list[object]([query.after_seq or 0])
        for column, value in (
            ("namespace", query.namespace),
            ("fleet", query.fleet),
            ("phase", query.phase),
            ("parent", query.parent),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT body FROM tasks WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?"
        params.append(query.limit)
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [Task.model_validate_json(body) for (body,) in rows]

    async def update(
        self, task_id: str, change: Callable[[Task], Task | None]
    ) -> tuple[Task, bool] | None:
        def operation(conn: sqlite3.Connection) -> tuple[Task, bool] | None:
            task = _load(conn, task_id)
            if task is None:
                return None
            changed = change(task)
            if changed is None:
                return task, False
            self._save(conn, changed)
            return changed, True

        return await self._write(operation)

    async def cancel(self, task_id: str, now: float) -> tuple[Task, bool] | None:
        def operation(conn: sqlite3.Connection) -> tuple[Task, bool] | None:
            task = self._leases.find(conn, task_id)
            if task is None:
                return None
            cancelled = lifecycle.cancel(task, now)
            if cancelled is None:
                return task, False
            self._save(conn, cancelled)
            self._cancel_children(conn, task_id, now)
            return cancelled, True

        return await self._write(operation)

    async def spawn(
        self,
        parent_id: str,
        park: Callable[[Task], Task | None],
        children: Sequence[wire.SubmitTask],
        now: float,
    ) -> tuple[Task, list[Task] | None] | None:
        # One transaction: the parent waits and its children exist, or neither.
        def operation(conn: sqlite3.Connection) -> tuple[Task, list[Task] | None] | None:
            parent = self._leases.find(conn, parent_id)
            if parent is None:
                return None
            parked = park(parent)
            if parked is None or parked.join is None:
                return parent, None
            self._save(conn, parked)
            depth, join_round = parked.depth + 1, parked.join.round
            started = [
                self._submit_one(
                    conn,
                    r,
                    now,
                    None,
                    depth,
                    join_round,
                    lifecycle.child_task_id(parent_id, join_round, i),
                ).task
                for i, r in enumerate(children)
            ]
            return parked, started

        return await self._write(operation)

    # -- agents ---------------------------------------------------------------------------

    async def register(self, agent: wire.RegisterAgent, now: float) -> AgentInfo:
        def operation(conn: sqlite3.Connection) -> AgentInfo:
            previous = _load_agent(conn, agent.namespace, agent.name)
            info = AgentInfo(
                **agent.model_dump(),
                registeredAt=previous.registeredAt if previous else now,
                lastHeartbeat=now,
                ready=True,
            )
            conn.execute(
                "INSERT INTO agents (namespace, name, body) VALUES (?, ?, ?)"
                " ON CONFLICT (namespace, name) DO UPDATE SET body = excluded.body",
                (info.namespace, info.name, info.model_dump_json()),
            )
            return info

        info = await self._write(operation)
        self._agents[(info.namespace, info.name)] = info
        return info

    async def get_agent(self, namespace: str, name: str) -> AgentInfo | None:
        known = self._agents.get((namespace, name))
        if known is None:
            known = await self._peek(lambda conn: _load_agent(conn, namespace, name))
            if known is not None:
                self._agents[(namespace, name)] = known
        return known

    async def heartbeat(
        self, agent: AgentInfo, leases: Sequence[wire.LeaseRef], draining: bool, now: float
    ) -> list[wire.LeaseStatus]:
        holder = lifecycle.agent_id(agent.namespace, agent.name)
        lease = self.settings.lease_seconds

        def operation(conn: sqlite3.Connection) -> tuple[AgentInfo, list[wire.LeaseStatus]]:
            current = _load_agent(conn, agent.namespace, agent.name)
            if current is None:
                raise UnknownAgent(holder)
            touched = current.model_copy(update={"lastHeartbeat": now, "ready": not draining})
            conn.execute(
                "UPDATE agents SET body = ? WHERE namespace = ? AND name = ?",
                (touched.model_dump_json(), agent.namespace, agent.name),
            )
            statuses = [
                self._decide(conn, ref.taskId, lifecycle.renew_lease, ref, holder, now, lease)[1]
                for ref in leases
            ]
            return touched, statuses

        touched, statuses = await self._write(operation)
        self._agents[(touched.namespace, touched.name)] = touched
        return statuses

    async def claim(self, agent: AgentInfo, max_tasks: int, now: float) -> list[Task]:
        return await self._write(lambda conn: self._lease(conn, agent, max_tasks, now))

    async def submit_and_lease(
        self,
        requests: Sequence[wire.SubmitTask],
        now: float,
        agents: Sequence[tuple[AgentInfo, int]],
    ) -> tuple[list[Submitted], list[list[Task]]]:
        # A task planned for an agent is inserted already leased: one row write, no read back.
        def operation(conn: sqlite3.Connection) -> tuple[list[Submitted], list[list[Task]]]:
            plan = plan_leases(
                requests, agents, self._leases.per_agent, lambda r: self._any_queued(conn, r)
            )
            submitted = [
                self._submit_one(conn, r, now, None if i is None else agents[i][0])
                for r, i in zip(requests, plan, strict=True)
            ]
            return submitted, leases_by_agent(submitted, plan, len(agents))

        return await self._write(operation)

    @staticmethod
    def _any_queued(conn: sqlite3.Connection, request: wire.SubmitTask) -> bool:
        row = conn.execute(
            "SELECT 1 FROM tasks WHERE phase = 'Queued' AND namespace = ? AND fleet = ?"
            " AND capability = ? LIMIT 1",
            (request.namespace, request.fleet, request.capability),
        ).fetchone()
        return row is not None

    def _lease(
        self, conn: sqlite3.Connection, agent: AgentInfo, max_tasks: int, now: float
    ) -> list[Task]:
        holder = lifecycle.agent_id(agent.namespace, agent.name)
        room = room_for(agent, max_tasks, self._leases.per_agent)
        if room <= 0:
            return []
        candidates: list[tuple[int, int, str]] = []
        for capability in agent.capabilities:
            candidates += conn.execute(
                "SELECT priority, seq, body FROM tasks WHERE phase = 'Queued' AND namespace = ?"
                " AND fleet = ? AND capability = ? AND available_at <= ?"
                " ORDER BY priority DESC, seq LIMIT ?",
                (agent.namespace, agent.fleet, capability, now, room),
            ).fetchall()
        candidates.sort(key=lambda row: (-row[0], row[1]))
        claimed = []
        for _, _, body in candidates[:room]:
            task = lifecycle.start_attempt(
                Task.model_validate_json(body),
                holder,
                agent.templateHash,
                now,
                self.settings.lease_seconds,
            )
            self._save(conn, task)
            claimed.append(task)
        return claimed

    async def report(
        self, agent: AgentInfo, results: Sequence[wire.TaskResult], now: float
    ) -> list[Reported]:
        holder = lifecycle.agent_id(agent.namespace, agent.name)
        policy = self.settings.retry

        def operation(conn: sqlite3.Connection) -> list[Reported]:
            reported = []
            for result in results:
                updated, ack = self._decide(
                    conn, result.taskId, lifecycle.apply_result, result, holder, now, policy
                )
                if updated is not None:
                    _count_attempt(conn, updated)
                reported.append(Reported(ack, updated))
            return reported

        return await self._write(operation)

    async def expire_due(self, now: float) -> list[Task]:
        policy = self.settings.retry

        def operation(conn: sqlite3.Connection) -> list[Task]:
            rows = conn.execute(
                "SELECT body FROM tasks WHERE phase = 'Running' AND expires_at <= ?", (now,)
            ).fetchall()
            changed = []
            for (body,) in rows:
                task = lifecycle.expire(Task.model_validate_json(body), now, policy)
                if task is not None:
                    self._save(conn, task)
                    _count_attempt(conn, task)
                    changed.append(task)
            return changed

        return await self._write(operation)

    # -- reading for dispatch, metrics and the operator -------------------------------------

    async def claimable(
        self, namespace: str, fleet: str, capabilities: Sequence[str], now: float, limit: int
    ) -> dict[str, int]:
        def count(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                capability: conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE phase = 'Queued'"
                    " AND namespace = ? AND fleet = ? AND capability = ? AND available_at <= ?"
                    " LIMIT ?)",
                    (namespace, fleet, capability, now, limit),
                ).fetchone()[0]
                for capability in capabilities
            }

        return await self._peek(count)

    async def running_counts(self, namespace: str, fleet: str) -> dict[str, int]:
        # Every agent of the namespace with leases (a superset of the fleet's: callers look
        # up the agents they care about).
        # A snapshot: with synchronous=FULL the writer thread updates the counts meanwhile.
        prefix = f"{namespace}/"
        counts = list(self._leases.per_agent.items())
        return {a: n for a, n in counts if n > 0 and a.startswith(prefix)}

    async def queue_depths(self) -> QueueDepths:
        return await self._read(_rows_to_depths)

    async def stats(self, now: float) -> wire.Stats:
        return await self._read(lambda conn: self._stats(conn, now))

    def _stats(self, conn: sqlite3.Connection, now: float) -> wire.Stats:
        phases = conn.execute(
            "SELECT namespace, fleet, phase, count(*) FROM tasks GROUP BY namespace, fleet, phase"
        ).fetchall()
        depths = _rows_to_depths(conn)
        running = conn.execute(
            "SELECT agent, count(*) FROM tasks WHERE phase = 'Running' GROUP BY agent"
        ).fetchall()
        agents = conn.execute("SELECT body, succeeded, failed FROM agents").fetchall()
        templates = conn.execute(
            "SELECT namespace, fleet, template_hash, attempts, failures FROM templates"
        ).fetchall()
        return summary.build_stats(
            now,
            self.settings.liveness_seconds,
            phases={(ns, fleet, phase): count for ns, fleet, phase, count in phases},
            depths=depths,
            running=dict(running),
            agents=[(AgentInfo.model_validate_json(b), ok, bad) for b, ok, bad in agents],
            templates={(ns, fleet, h): (n, bad) for ns, fleet, h, n, bad in templates},
        )


def _rows_to_depths(conn: sqlite3.Connection) -> QueueDepths:
    rows = conn.execute(
        "SELECT namespace, fleet, priority, count(*) FROM tasks WHERE phase = 'Queued'"
        " GROUP BY namespace, fleet, priority"
    ).fetchall()
    return {(ns, fleet, priority): count for ns, fleet, priority, count in rows}


def _load(conn: sqlite3.Connection, task_id: str) -> Task | None:
    row = conn.execute("SELECT body FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return Task.model_validate_json(row[0]) if row else None


def _load_agent(conn: sqlite3.Connection, namespace: str, name: str) -> AgentInfo | None:
    row = conn.execute(
        "SELECT body FROM agents WHERE namespace = ? AND name = ?", (namespace, name)
    ).fetchone()
    return AgentInfo.model_validate_json(row[0]) if row else None


def _expires_at(task: Task) -> float | None:
    if task.phase != "Running":
        return None
    ends = [t for t in (task.leaseExpiresAt, task.deadlineAt) if t is not None]
    return min(ends) if ends else None


def _update(conn: sqlite3.Connection, task: Task) -> None:
    conn.execute(
        "UPDATE tasks SET phase = ?, available_at = ?, expires_at = ?, agent = ?, body = ?"
        " WHERE id = ?",
        (
            task.phase,
            task.availableAt,
            _expires_at(task),
            task.agent,
            task.model_dump_json(),
            task.id,
        ),
    )


def _count_attempt(conn: sqlite3.Connection, task: Task) -> None:
    """Tally the attempt that just ended into per-agent and per-template counters."""
    last = task.attempts[-1] if task.attempts else None
    if last is None or last.outcome not in ("Succeeded", *wire.COUNTED_OUTCOMES):
        return
    failed = int(last.outcome != "Succeeded")
    namespace, _, name = last.agent.partition("/")
    conn.execute(
        "UPDATE agents SET succeeded = succeeded + ?, failed = failed + ?"
        " WHERE namespace = ? AND name = ?",
        (1 - failed, failed, namespace, name),
    )
    conn.execute(
        "INSERT INTO templates (namespace, fleet, template_hash, attempts, failures)"
        " VALUES (?, ?, ?, 1, ?) ON CONFLICT (namespace, fleet, template_hash) DO UPDATE SET"
        " attempts = attempts + 1, failures = failures + excluded.failures",
        (task.namespace, task.fleet, last.templateHash, failed),
    )


def parse_options(query: str) -> dict[str, str]:
    """``synchronous=full&x=y`` -> dict (the query part of a sqlite:// store URL)."""
    pairs = (part.split("=", 1) for part in query.split("&") if "=" in part)
    return {key: value for key, value in pairs}
