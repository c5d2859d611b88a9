"""The router's use cases, independent of HTTP: authorize, call the store, then tell
dispatch, waiters, metrics and the decision log what changed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from agentarmy.api import rules, wire
from agentarmy.api.wire import AgentInfo, Task
from agentarmy.heap import freeze_startup_objects
from agentarmy.router import decisions, lifecycle
from agentarmy.router.auth import Principal
from agentarmy.router.dispatcher import Dispatcher
from agentarmy.router.errors import ApiError, bad_request, not_found, stale_lease
from agentarmy.router.figures import FiguresWatch
from agentarmy.router.governor import ApprovalDeadlines, Governor
from agentarmy.router.metrics import RouterMetrics
from agentarmy.router.scoring import BreakerTransition, Routing, RoutingSettings
from agentarmy.router.store.base import Submitted, TaskQuery, TaskStore, UnknownAgent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    reap_interval: float = 0.5
    """How often expired leases are collected and waiting agents re-checked (backoff ends)."""
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    """Routing by results (scores, circuit breakers) or plain least-loaded dispatch."""


class RouterService:
    def __init__(
        self,
        store: TaskStore,
        settings: ServiceSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or ServiceSettings()
        self.clock = clock
        self.metrics = RouterMetrics()
        self.governor = Governor(store.governance, clock, self._count_decision, self._on_resumed)
        self.approvals = ApprovalDeadlines()
        self.routing = Routing(self.settings.routing, self._on_breaker, self.governor.under_canary)
        self.dispatcher = Dispatcher(
            store, clock, self._on_claimed, self.governor.halted, self.routing
        )
        self._result_waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._reaper: asyncio.Task[None] | None = None
        self.figures = FiguresWatch(self._stats_now)
        """Long-polls of the operator's figures; ``touch`` it where they may move."""
        self._figures_loop: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[wire.Halt | None]] = set()
        self.ready = False
        store.listener = self._on_foreign_change

    async def start(self) -> None:
        await self.store.open(self.clock())
        await self.governor.start()
        await self._load_approval_deadlines()
        freeze_startup_objects()
        self._reaper = asyncio.create_task(self._reap_forever(), name="lease-reaper")
        self._figures_loop = asyncio.create_task(self.figures.run(), name="figures-watch")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for loop in (self._reaper, self._figures_loop):
            if loop is not None:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        await self.governor.stop()
        await self.store.close()

    # -- callers ----------------------------------------------------------------------------

    async def submit(
        self, principal: Principal, requests: Sequence[wire.SubmitTask]
    ) -> list[Submitted]:
        for index, request in enumerate(requests):
            try:
                principal.check_caller(request.namespace)
            except ApiError as error:
                error.message = (
                    f"tasks[{index}]: {error.message}" if len(requests) > 1 else error.message
                )
                raise
        await self.governor.admit(requests)
        submitted = await self.dispatcher.submit(requests, self.clock())
        self._count_submitted(submitted)
        return submitted

    def _count_submitted(self, submitted: Sequence[Submitted]) -> None:
        self.figures.touch()
        for item in submitted:
            if item.created:
                self.metrics.labelled(
                    self.metrics.submitted, item.task.namespace, item.task.fleet
                ).inc()

    async def get(self, principal: Principal, task_id: str) -> Task:
        task = await self.store.get(task_id)
        if task is None:
            raise not_found(f"task {task_id} does not exist")
        principal.check_caller(task.namespace)
        return task

    async def list_tasks(self, principal: Principal, query: TaskQuery) -> list[Task]:
        if principal.role == "client" and principal.namespace is not None:
            if query.namespace is None:
                query = TaskQuery(**{**query.__dict__, "namespace": principal.namespace})
            principal.check_caller(query.namespace or "")
        elif principal.role != "admin":  # agents and metrics readers: refused, with why
            principal.check_caller(query.namespace or "")
        return await self.store.list_tasks(query)

    async def cancel(self, principal: Principal, task_id: str) -> Task:
        await self.get(principal, task_id)
        outcome = await self.store.cancel(task_id, self.clock())
        if outcome is None:
            raise not_found(f"task {task_id} does not exist")
        task, changed = outcome
        if changed:
            self.figures.touch()
            decisions.decide("cancelled", task)
            self.metrics.attempt_ended(task)
            await self.governor.attempt_ended(task)
            self._wake_result_waiters(task)
        return task

    async def wait(self, principal: Principal, task_id: str, wait_seconds: float) -> Task:
        """The task once it has ended, or as it is when ``wait_seconds`` run out."""
        task = await self.get(principal, task_id)
        deadline = self.clock() + wait_seconds
        while not lifecycle.is_terminal(task):
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._result_waiters[task_id].append(future)
            # Re-check now that we listen (the result may have landed in between); poll
            # at most every 2 s in case another replica recorded it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, min(remaining, 2.0))
            waiters = self._result_waiters.get(task_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._result_waiters[task_id]
            task = await self.get(principal, task_id)
        return task

    def _wake_result_waiters(self, task: Task) -> None:
        if not lifecycle.is_terminal(task):
            return
        for future in self._result_waiters.pop(task.id, []):
            if not future.done():
                future.set_result(None)

    # -- agents -----------------------------------------------------------------------------

    async def register(self, principal: Principal, registration: wire.RegisterAgent) -> AgentInfo:
        principal.check_agent(registration.namespace, registration.name, registration.fleet)
        info = await self.store.register(registration, self.clock())
        self.figures.touch()
        log.info("agent %s/%s registered for fleet %s", info.namespace, info.name, info.fleet)
        self.dispatcher.notify(info.namespace, info.fleet)
        return info

    async def _agent(self, principal: Principal, namespace: str, name: str) -> AgentInfo:
        agent = await self.store.get_agent(namespace, name)
        if agent is None:
            raise not_found(f"agent {namespace}/{name} is not registered; register it first")
        principal.check_agent(namespace, name, agent.fleet)
        return agent

    async def claim(
        self, principal: Principal, namespace: str, name: str, request: wire.ClaimRequest
    ) -> wire.ClaimResponse:
        agent = await self._agent(principal, namespace, name)
        acks = await self._report(agent, request.results) if request.results else []
        if not agent.ready:
            raise ApiError(409, "AgentDraining", f"agent {namespace}/{name} said it is draining")
        tasks = await self.dispatcher.claim(agent, request.max, request.waitSeconds)
        tools = self.governor.tool_rules(namespace, agent.fleet)
        leases = [lifecycle.to_lease(t) for t in tasks]
        for lease, task in zip(leases, tasks, strict=True):
            if tools is not None:
                lease.tools = tools
            if task.join is not None and task.join.resumedAt is not None:
                lease.children = lifecycle.child_outcomes(await self._round(task))
        return wire.ClaimResponse(tasks=leases, results=acks)

    def _on_claimed(self, agent: AgentInfo, tasks: list[Task]) -> None:
        self.figures.touch()
        now = self.clock()
        for task in tasks:
            self.metrics.assigned(task, now)
            decisions.decide("assigned", task, templateHash=agent.templateHash)

    async def heartbeat(
        self, principal: Principal, namespace: str, name: str, request: wire.HeartbeatRequest
    ) -> wire.HeartbeatResponse:
        agent = await self._agent(principal, namespace, name)
        if request.draining:
            self.dispatcher.end_waits(namespace, name)
        try:
            statuses = await self.store.heartbeat(
                agent, request.leases, request.draining, self.clock()
            )
        except UnknownAgent as error:
            raise not_found(f"agent {error} is not registered; register it first") from error
        for status in statuses:
            if status.status == "stale":
                self.metrics.stale_reports.labels(namespace, agent.fleet).inc()
        return wire.HeartbeatResponse(leases=statuses)

    async def report(
        self, principal: Principal, namespace: str, name: str, results: Sequence[wire.TaskResult]
    ) -> list[wire.ResultAck]:
        agent = await self._agent(principal, namespace, name)
        return await self._report(agent, results)

    async def _report(
        self, agent: AgentInfo, results: Sequence[wire.TaskResult]
    ) -> list[wire.ResultAck]:
        reported = await self.store.report(agent, results, self.clock())
        for result, item in zip(results, reported, strict=True):
            if result.refusedBy is not None and item.task is not None:
                self._count_decision(agent.namespace, agent.fleet, "tool-refused")
                decisions.decide(
                    "tool-refused",
                    item.task,
                    tool=result.refusedBy.tool,
                    policy=result.refusedBy.policy,
                    rule=result.refusedBy.rule,
                )
        requeued = False
        for item in reported:
            if item.task is None:
                self.metrics.stale_reports.labels(agent.namespace, agent.fleet).inc()
                log.info(
                    "stale report from %s/%s: %s", agent.namespace, agent.name, item.ack.message
                )
                continue
            await self._attempt_ended(item.task)
            requeued = requeued or item.task.phase == "Queued"
        if requeued:
            self.dispatcher.notify(agent.namespace, agent.fleet)
        return [item.ack for item in reported]

    async def report_one(
        self, principal: Principal, namespace: str, name: str, result: wire.TaskResult
    ) -> wire.ResultAck:
        """One result for the single-task endpoints: a stale fencing token is a 409."""
        (ack,) = await self.report(principal, namespace, name, [result])
        if ack.status == "stale":
            raise stale_lease(ack.message)
        return ack

    async def extend_one(
        self, principal: Principal, namespace: str, name: str, ref: wire.LeaseRef
    ) -> wire.LeaseStatus:
        response = await self.heartbeat(
            principal, namespace, name, wire.HeartbeatRequest(leases=[ref])
        )
        (status,) = response.leases
        if status.status != "extended":
            raise stale_lease(status.message)
        return status

    async def hand_off(
        self,
        principal: Principal,
        namespace: str,
        name: str,
        parent_id: str,
        request: wire.SubtaskRequest,
    ) -> Submitted:
        """A subtask for another fleet, submitted by the agent holding the parent's lease."""
        agent = await self._agent(principal, namespace, name)
        parent = await self.store.get(parent_id)
        if parent is None:
            raise not_found(f"task {parent_id} does not exist")
        ref = wire.LeaseRef(taskId=parent_id, attempt=request.attempt)
        problem = lifecycle.fence_problem(parent, ref, lifecycle.agent_id(namespace, name))
        if problem is not None:
            raise stale_lease(problem)
        if request.task.namespace != agent.namespace:
            raise bad_request("a hand-off stays in the agent's namespace", "task.namespace")
        child = request.task.model_copy(
            update={"parentTaskId": parent_id, "traceId": parent.traceId}  # the root's trace
        )
        (submitted,) = await self.dispatcher.submit([child], self.clock())
        self._count_submitted([submitted])
        decisions.decide("handed-off", submitted.task, parent=parent_id)
        return submitted

    # -- fan-out and join -------------------------------------------------------------------

    async def spawn_children(
        self,
        principal: Principal,
        namespace: str,
        name: str,
        parent_id: str,
        request: wire.ChildrenRequest,
    ) -> wire.ChildrenResponse:
        """The agent holding the parent's lease starts children and parks the parent until
        they end (the join); the lease ends now, so the parent holds no agent meanwhile."""
        agent = await self._leaseholder(principal, namespace, name, parent_id, request.attempt)
        holder = lifecycle.agent_id(namespace, name)
        parent = await self.store.get(parent_id)
        assert parent is not None  # _leaseholder found it
        self.governor.refuse_spawn(namespace, agent.fleet, parent, len(request.tasks))
        for index, child in enumerate(request.tasks):
            if child.namespace != namespace:
                raise bad_request(
                    "children stay in the agent's namespace", f"tasks[{index}].namespace"
                )
        await self.governor.admit(request.tasks)
        ref = wire.LeaseRef(taskId=parent_id, attempt=request.attempt)
        children = [
            lifecycle.child_request(c, parent, request.attempt, i)
            for i, c in enumerate(request.tasks)
        ]
        now = self.clock()

        def park(task: Task) -> Task | None:
            if lifecycle.fence_problem(task, ref, holder) is not None:
                return None
            return lifecycle.park_for_children(
                task, request.join, len(children), request.checkpoint, now
            )

        outcome = await self.store.spawn(parent_id, park, children, now)
        if outcome is None or outcome[1] is None:
            raise stale_lease(f"task {parent_id} is no longer leased to {holder}")
        parked, started = outcome[0], outcome[1]
        self._count_submitted([Submitted(c, True) for c in started])
        decisions.decide("waiting-for-children", parked, children=len(started), join=request.join)
        for fleet in sorted({(c.namespace, c.fleet) for c in started}):
            self.dispatcher.notify(*fleet)
        if parked.phase == "Queued":  # every child had ended already (a retried call)
            self.dispatcher.notify(parked.namespace, parked.fleet)
        return wire.ChildrenResponse(parent=parked, children=started)

    async def _round(self, parent: Task) -> list[Task]:
        """The children of the parent's last join round, in start order."""
        assert parent.join is not None
        found: list[Task] = []
        after = 0
        while True:
            page = await self.store.list_tasks(
                TaskQuery(parent=parent.id, after_seq=after, limit=1000)
            )
            found += [c for c in page if c.joinRound == parent.join.round]
            if len(page) < 1000:
                return found
            after = page[-1].seq

    async def tree(self, principal: Principal, task_id: str, limit: int) -> wire.TaskTree:
        """The task and its descendants, depth first, at most ``limit`` tasks."""
        root = await self.get(principal, task_id)
        tasks: list[Task] = []
        stack = [root]
        while stack and len(tasks) < limit:
            task = stack.pop()
            tasks.append(task)
            children: list[Task] = []
            after = 0
            while True:
                page = await self.store.list_tasks(
                    TaskQuery(parent=task.id, after_seq=after, limit=1000)
                )
                children += page
                if len(page) < 1000:
                    break
                after = page[-1].seq
            stack.extend(reversed(children))
        return wire.TaskTree(tasks=tasks, truncated=bool(stack))

    async def reserve_tokens(
        self,
        principal: Principal,
        namespace: str,
        name: str,
        task_id: str,
        request: rules.TokenReservation,
    ) -> rules.TokenGrant:
        """Before a model call: count its tokens against the fleet's budgets (429 if spent)."""
        agent = await self._leaseholder(principal, namespace, name, task_id, request.attempt)
        reservation = await self.governor.reserve(namespace, agent.fleet, request.tokens)
        return rules.TokenGrant(tokens=request.tokens, budgeted=bool(reservation.counters))

    async def settle_tokens(
        self,
        principal: Principal,
        namespace: str,
        name: str,
        task_id: str,
        request: rules.TokenSettlement,
    ) -> rules.TokenGrant:
        agent = await self._leaseholder(principal, namespace, name, task_id, request.attempt)
        await self.governor.settle(namespace, agent.fleet, request.reserved, request.used)
        rules_in_force = self.governor.rules.get((namespace, agent.fleet))
        budgeted = rules_in_force is not None and bool(rules_in_force.tokenBudgets)
        return rules.TokenGrant(tokens=request.used, budgeted=budgeted)

    async def _leaseholder(
        self, principal: Principal, namespace: str, name: str, task_id: str, attempt: int
    ) -> AgentInfo:
        """The agent, if it holds the task's current lease (else 404 / 409)."""
        agent = await self._agent(principal, namespace, name)
        task = await self.store.get(task_id)
        if task is None:
            raise not_found(f"task {task_id} does not exist")
        ref = wire.LeaseRef(taskId=task_id, attempt=attempt)
        problem = lifecycle.fence_problem(task, ref, lifecycle.agent_id(namespace, name))
        if problem is not None:
            raise stale_lease(problem)
        return agent

    # -- approvals --------------------------------------------------------------------------

    async def request_approval(
        self,
        principal: Principal,
        namespace: str,
        name: str,
        task_id: str,
        request: wire.ApprovalRequest,
    ) -> wire.Task:
        """The agent holding the lease parks the task on a call that needs a person."""
        agent = await self._leaseholder(principal, namespace, name, task_id, request.attempt)
        holder = lifecycle.agent_id(namespace, name)
        policies = self.governor.approvers(namespace, agent.fleet, request.tool)
        if not policies:
            raise bad_request(
                f"tool {request.tool} needs no approval in fleet {namespace}/{agent.fleet}", "tool"
            )
        timeout, on_rejection = self.governor.approval_terms(namespace, agent.fleet)
        now = self.clock()

        ref = wire.LeaseRef(taskId=task_id, attempt=request.attempt)

        def park(task: Task) -> Task | None:
            if lifecycle.fence_problem(task, ref, holder) is not None:
                return None
            return lifecycle.park_for_approval(
                task, request, holder, policies, timeout, on_rejection, now
            )

        outcome = await self.store.update(task_id, park)
        if outcome is None or not outcome[1]:
            raise stale_lease(f"task {task_id} is no longer leased to {holder}")
        task = outcome[0]
        self.figures.touch()
        self.approvals.watch(task)
        self._count_decision(namespace, agent.fleet, "approval-asked")
        decisions.decide(
            "approval-asked",
            task,
            tool=request.tool,
            policies=policies,
            deadlineAt=task.deadlineAt,
            approvalId=task.approval.id if task.approval else "",
        )
        return task

    async def save_checkpoint(
        self,
        principal: Principal,
        namespace: str,
        name: str,
        task_id: str,
        request: wire.CheckpointRequest,
    ) -> wire.Task:
        await self._leaseholder(principal, namespace, name, task_id, request.attempt)
        holder = lifecycle.agent_id(namespace, name)

        ref = wire.LeaseRef(taskId=task_id, attempt=request.attempt)

        def save(task: Task) -> Task | None:
            if lifecycle.fence_problem(task, ref, holder) is not None:
                return None
            return lifecycle.save_checkpoint(task, request.checkpoint)

        outcome = await self.store.update(task_id, save)
        if outcome is None or not outcome[1]:
            raise stale_lease(f"task {task_id} is no longer leased to {holder}")
        return outcome[0]

    async def pending_approvals(
        self, principal: Principal, namespace: str | None
    ) -> wire.ApprovalList:
        """What waits for a person: admins see every namespace, clients their own."""
        if principal.role == "client" and principal.namespace is not None:
            namespace = namespace or principal.namespace
        if principal.role != "admin" or namespace is not None:
            principal.check_caller(namespace or "")
        pending: list[wire.PendingApproval] = []
        after = 0
        while True:
            page = await self.store.list_tasks(
                TaskQuery(
                    namespace=namespace, phase="AwaitingApproval", after_seq=after, limit=1000
                )
            )
            pending += [
                wire.PendingApproval(
                    taskId=t.id,
                    namespace=t.namespace,
                    fleet=t.fleet,
                    capability=t.capability,
                    traceId=t.traceId,
                    approval=t.approval,
                )
                for t in page
                if t.approval is not None
            ]
            if len(page) < 1000:
                return wire.ApprovalList(approvals=pending)
            after = page[-1].seq

    async def decide(
        self, principal: Principal, task_id: str, approve: bool, reason: str
    ) -> wire.Task:
        """A person approves or rejects; recorded with who, when and why. Agents never may."""
        task = await self.get(principal, task_id)  # refuses agent tokens and other namespaces
        if not approve and not reason.strip():
            raise bad_request(
                "a rejection needs a reason (the model and the record see it)", "reason"
            )
        who = f"{principal.role}:{principal.name}"
        decision: wire.ApprovalDecision = "Approved" if approve else "Rejected"
        return await self._decide(task, decision, who, reason)

    async def _decide(
        self, task: Task, decision: wire.ApprovalDecision, who: str, reason: str
    ) -> Task:
        now = self.clock()
        outcome = await self.store.update(
            task.id, lambda t: lifecycle.decide_approval(t, decision, who, reason, now)
        )
        if outcome is None:
            raise not_found(f"task {task.id} does not exist")
        decided, changed = outcome
        if not changed:
            already = decided.approval.decision if decided.approval else None
            raise ApiError(
                409,
                "NotAwaitingApproval",
                f"task {task.id} is {decided.phase}"
                + (f"; its approval was already {already.lower()}" if already else ""),
            )
        self.figures.touch()
        self.approvals.forget(decided.id)
        event = {"Approved": "approval-granted", "Rejected": "approval-rejected"}.get(
            decision, "approval-timed-out"
        )
        self._count_decision(decided.namespace, decided.fleet, event)
        decisions.decide(event, decided, decidedBy=who, reason=reason, phase=decided.phase)
        if decided.phase == "Queued":
            self.dispatcher.notify(decided.namespace, decided.fleet)
        else:
            self._wake_result_waiters(decided)
        return decided

    async def time_out_approvals(self) -> None:
        for task_id in self.approvals.due(self.clock()):
            task = await self.store.get(task_id)
            if task is None or task.phase != "AwaitingApproval":
                self.approvals.forget(task_id)
                continue
            with contextlib.suppress(ApiError):  # another replica decided first
                await self._decide(task, "TimedOut", "timeout", "no decision before the deadline")

    # -- operator ---------------------------------------------------------------------------

    async def stats(self, principal: Principal) -> wire.Stats:
        principal.check_admin()
        return self._with_halts(await self.store.stats(self.clock()))

    async def watch_stats(
        self, principal: Principal, since: str, wait_seconds: float
    ) -> wire.StatsWatch:
        principal.check_admin()
        return await self.figures.watch(since, wait_seconds)

    async def _stats_now(self) -> wire.Stats:
        return self._with_halts(await self.store.stats(self.clock()))

    def _with_halts(self, stats: wire.Stats) -> wire.Stats:
        for fleet in stats.fleets:
            fleet.halt = self.governor.halts.get((fleet.namespace, fleet.fleet))
            self.routing.annotate(fleet, stats.generatedAt)
        return stats

    async def replace_rules(
        self, principal: Principal, everything: rules.AllRules
    ) -> rules.AllRules:
        principal.check_admin()
        await self.governor.replace_rules(
            {group.namespace: group.fleets for group in everything.namespaces}, None
        )
        return self.rules_in_force(principal, None)

    async def replace_namespace_rules(
        self, principal: Principal, namespace: str, body: rules.NamespaceRules
    ) -> rules.RulesInForce:
        principal.check_admin()
        await self.governor.replace_rules({namespace: body.fleets}, [namespace])
        found = self.governor.rules_in(namespace).get(namespace, [])
        return rules.RulesInForce(namespace=namespace, fleets=found)

    def rules_in_force(self, principal: Principal, namespace: str | None) -> rules.AllRules:
        principal.check_admin()
        return rules.AllRules(
            namespaces=[
                rules.RulesInForce(namespace=ns, fleets=group)
                for ns, group in self.governor.rules_in(namespace).items()
            ]
        )

    def halts(self, principal: Principal) -> wire.HaltList:
        principal.check_admin()
        return wire.HaltList(halts=sorted(self.governor.halts.values(), key=lambda h: h.haltedAt))

    async def resume(
        self, principal: Principal, namespace: str, fleet: str, request: rules.ResumeRequest
    ) -> rules.Resumed:
        """A person resumes a halted fleet (admins, or clients of its namespace)."""
        principal.check_caller(namespace)
        who = f"{principal.role}:{principal.name}"
        return await self.governor.resume(namespace, fleet, who, request.reason)

    async def render_metrics(self) -> bytes:
        depths = await self.store.queue_depths()
        stats = self._with_halts(await self.store.stats(self.clock()))
        return self.metrics.render(depths, stats)

    def _count_decision(self, namespace: str, fleet: str, decision: str) -> None:
        self.figures.touch()  # a halt among them
        self.metrics.labelled(self.metrics.governance, namespace, fleet, decision).inc()

    def _on_resumed(self, namespace: str, fleet: str) -> None:
        self.figures.touch()
        self.dispatcher.notify(namespace, fleet)

    # -- background -------------------------------------------------------------------------

    def _on_breaker(self, change: BreakerTransition) -> None:
        self.metrics.labelled(
            self.metrics.breaker_transitions, change.namespace, change.fleet, change.after
        ).inc()
        fields = asdict(change)
        for where in ("namespace", "fleet", "agent"):
            del fields[where]
        decisions.about_agent(
            f"breaker-{change.after}", change.namespace, change.fleet, change.agent, **fields
        )

    async def _attempt_ended(self, task: Task) -> None:
        self.routing.record(task, self.clock())
        self.figures.touch()
        self.metrics.attempt_ended(task)
        decisions.attempt_ended(task)
        # The sentinel first: whoever learns of this result also sees the halt it caused.
        await self.governor.attempt_ended(task)
        self._wake_result_waiters(task)

    def _on_foreign_change(self, task: Task) -> None:
        self.routing.record(task, self.clock())  # another replica's result teaches us too
        self.figures.touch()  # another replica's submit or result: wake this one's watchers
        self.approvals.watch(task)
        if task.phase == "Queued":
            self.dispatcher.notify(task.namespace, task.fleet)
        self._wake_result_waiters(task)
        if self.governor.watches(task):  # another replica's result counts here too
            future = asyncio.ensure_future(self.governor.attempt_ended(task, foreign=True))
            self._background.add(future)
            future.add_done_callback(self._background.discard)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            try:
                await self.reap()
            except Exception:
                log.exception("lease reaper failed; trying again next tick")

    async def _load_approval_deadlines(self) -> None:
        after = 0
        while True:
            page = await self.store.list_tasks(
                TaskQuery(phase="AwaitingApproval", after_seq=after, limit=1000)
            )
            for task in page:
                self.approvals.watch(task)
            if len(page) < 1000:
                return
            after = page[-1].seq

    async def reap(self) -> None:
        await self.time_out_approvals()
        for task in await self.store.expire_due(self.clock()):
            await self._attempt_ended(task)
            if task.phase == "Queued":
                self.dispatcher.notify(task.namespace, task.fleet)
        for namespace, fleet in self.dispatcher.waiting_fleets():
            self.dispatcher.notify(namespace, fleet)  # retries whose backoff just ended
