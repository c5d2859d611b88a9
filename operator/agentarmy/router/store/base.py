"""The task store interface. Backends: SQLite (one router replica) and NATS JetStream (many).

Every method that changes state returns only after the change is durable, so the
router can acknowledge a caller right after it returns. The state rules live in
:mod:`agentarmy.router.lifecycle`; a backend supplies storage and concurrency control.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo, Task
from agentarmy.router.lifecycle import RetryPolicy, agent_id
from agentarmy.router.store.governance import GovernanceState


class StoreError(Exception):
    """The store cannot do what was asked (not a caller mistake)."""


class UnknownAgent(LookupError):
    """The agent has not registered (or its registration was lost)."""


@dataclass(frozen=True)
class StoreSettings:
    lease_seconds: float = 30.0
    """How long a claim or heartbeat keeps a lease."""
    liveness_seconds: float = 60.0
    """An agent without a heartbeat for this long is not live."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Submitted:
    task: Task
    created: bool


@dataclass(frozen=True)
class Reported:
    ack: wire.ResultAck
    task: Task | None
    """The task after the change, or None when the report was stale."""


@dataclass(frozen=True)
class TaskQuery:
    namespace: str | None = None
    fleet: str | None = None
    phase: str | None = None
    parent: str | None = None
    after_seq: int | None = None
    limit: int = 100


QueueDepths = dict[tuple[str, str, int], int]
"""(namespace, fleet, priority) -> queued tasks."""


class TaskStore(abc.ABC):
    """Durable tasks and agents. One instance per router process."""

    leases_on_submit = False
    """Whether ``submit_and_lease`` can lease in the write that stores the tasks."""
    governance: GovernanceState
    """Runtime-rule state on the same database (opened by the Governor after ``open``)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.listener: Callable[[Task], None] | None = None
        """Told about tasks changed other than by the call that returns them, to wake dispatch
        and waiters: another router replica's writes (NATS), and what a change did beside its
        task (a parent resumed by its last child's end, children cancelled with a parent)."""

    @abc.abstractmethod
    async def open(self, now: float) -> None:
        """Connect/create; running leases get a fresh lease period (see lifecycle.restart_grace)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def submit(self, requests: Sequence[wire.SubmitTask], now: float) -> list[Submitted]:
        """Store new tasks; a request whose idempotency key is known returns the earlier task."""

    async def submit_and_lease(
        self,
        requests: Sequence[wire.SubmitTask],
        now: float,
        agents: Sequence[tuple[AgentInfo, int]],
    ) -> tuple[list[Submitted], list[list[Task]]]:
        """Store new tasks of one fleet and, where the backend can do it in the same durable
        write (``leases_on_submit``), lease them at once to these waiting agents of that fleet,
        each (agent, max), in the order given (the dispatcher's choice), until the new tasks
        are gone. Returns what ``submit`` returns and the leases per agent. This default
        leases nothing: the dispatcher then serves the agents as usual."""
        return await self.submit(requests, now), [[] for _ in agents]

    @abc.abstractmethod
    async def get(self, task_id: str) -> Task | None: ...

    @abc.abstractmethod
    async def list_tasks(self, query: TaskQuery) -> list[Task]:
        """Tasks in submission order (seq), after ``query.after_seq``."""

    @abc.abstractmethod
    async def update(
        self, task_id: str, change: Callable[[Task], Task | None]
    ) -> tuple[Task, bool] | None:
        """Apply one lifecycle change (None: no change) under the backend's concurrency
        control: (the task after, whether it changed), or None if the task is unknown."""

    @abc.abstractmethod
    async def cancel(self, task_id: str, now: float) -> tuple[Task, bool] | None:
        """(task, changed), or None if unknown. Ended tasks are returned unchanged. The
        task's unfinished descendants are cancelled with it (told to the listener)."""

    @abc.abstractmethod
    async def spawn(
        self,
        parent_id: str,
        park: Callable[[Task], Task | None],
        children: Sequence[wire.SubmitTask],
        now: float,
    ) -> tuple[Task, list[Task] | None] | None:
        """Park the parent with ``park`` (see lifecycle.park_for_children; None refuses: its
        lease is stale) and store its children (lifecycle.child_request: their idempotency
        keys make a retried call find them) at its join round and depth + 1, so that the
        children exist only for a parent that waits for them. Whenever the round's last child
        ends (or the first one fails, for failFast) the parent is queued again, exactly once
        (lifecycle.settle_join), and told to the listener. Returns (parked parent, children),
        (parent as it is, None) when ``park`` refused, or None for an unknown parent."""

    @abc.abstractmethod
    async def register(self, agent: wire.RegisterAgent, now: float) -> AgentInfo: ...

    @abc.abstractmethod
    async def get_agent(self, namespace: str, name: str) -> AgentInfo | None: ...

    @abc.abstractmethod
    async def heartbeat(
        self, agent: AgentInfo, leases: Sequence[wire.LeaseRef], draining: bool, now: float
    ) -> list[wire.LeaseStatus]:
        """Record liveness and extend the leases whose fencing token still holds."""

    @abc.abstractmethod
    async def claim(self, agent: AgentInfo, max_tasks: int, now: float) -> list[Task]:
        """Lease up to ``max_tasks`` queued tasks of the agent's fleet and capabilities,
        highest priority first, FIFO within a priority, never exceeding its concurrency."""

    @abc.abstractmethod
    async def report(
        self, agent: AgentInfo, results: Sequence[wire.TaskResult], now: float
    ) -> list[Reported]:
        """Record attempt outcomes whose fencing token holds; stale ones are acked as such."""

    @abc.abstractmethod
    async def expire_due(self, now: float) -> list[Task]:
        """End attempts whose lease or timeout ran out; the changed tasks."""

    @abc.abstractmethod
    async def claimable(
        self, namespace: str, fleet: str, capabilities: Sequence[str], now: float, limit: int
    ) -> dict[str, int]:
        """Capability -> queued tasks of the fleet that could be leased now, counting at most
        ``limit`` each. May count too many (a claim then finds fewer), never too few: dispatch
        skips the claims this says cannot succeed."""

    @abc.abstractmethod
    async def running_counts(self, namespace: str, fleet: str) -> dict[str, int]:
        """Agent id -> tasks it is running, for least-loaded dispatch: at least every agent
        of the fleet that runs something (others may be included; callers look up theirs)."""

    @abc.abstractmethod
    async def queue_depths(self) -> QueueDepths: ...

    @abc.abstractmethod
    async def stats(self, now: float) -> wire.Stats: ...


def room_for(agent: AgentInfo, max_tasks: int, running: Mapping[str, int]) -> int:
    """How many more tasks the agent may take now: at most ``max_tasks``, and never past its
    concurrency given its running leases (``running``: holder -> count)."""
    holder = agent_id(agent.namespace, agent.name)
    return max(0, min(max_tasks, agent.concurrency - running.get(holder, 0)))


def plan_leases(
    requests: Sequence[wire.SubmitTask],
    agents: Sequence[tuple[AgentInfo, int]],
    running: Mapping[str, int],
    queued: Callable[[wire.SubmitTask], bool],
) -> list[int | None]:
    """For ``submit_and_lease``: per request, the agent (its index) the new task is stored
    leased to, or None to store it queued.

    Agents are taken in the order given (least loaded first), each up to its room. A task
    is leased only while nothing of its fleet and capability is queued (``queued`` asks the
    store, and tasks this batch queues count too), so older or higher-priority work always
    goes first, through the usual claim.
    """
    slots = [
        i
        for i, (agent, max_tasks) in enumerate(agents)
        for _ in range(room_for(agent, max_tasks, running))
    ]
    plan: list[int | None] = []
    queued_here: set[tuple[str, str, str]] = set()
    for request in requests:
        key = (request.namespace, request.fleet, request.capability)
        takes = (
            bool(slots)
            and key not in queued_here
            and request.capability in agents[slots[0]][0].capabilities
            and not queued(request)  # last: it may be a query
        )
        index = slots.pop(0) if takes else None
        if index is None:
            queued_here.add(key)
        plan.append(index)
    return plan


def leases_by_agent(
    submitted: Sequence[Submitted], plan: Sequence[int | None], agents: int
) -> list[list[Task]]:
    """The tasks each agent got from ``plan`` (repeats of an idempotency key got nothing)."""
    leases: list[list[Task]] = [[] for _ in range(agents)]
    for item, index in zip(submitted, plan, strict=True):
        if index is not None and item.created:
            leases[index].append(item.task)
    return leases


def error_rate(attempts: int, failures: int) -> float:
    return round(failures / attempts, 4) if attempts else 0.0
