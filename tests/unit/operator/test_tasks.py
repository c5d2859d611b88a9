"""The Task reconciler and its router watch against an in-memory router and cache."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import pytest

from agentarmy.api import wire
from agentarmy.api.common import Condition
from agentarmy.api.task import RESULT_LIMIT_BYTES, TaskStatus
from agentarmy.operator import tasks as tasks_module
from agentarmy.operator import taskwatch
from agentarmy.operator.cache import Cache, FleetView, TaskView
from agentarmy.operator.tasks import (
    TaskEvents,
    TaskReconciler,
    observed_status,
    task_events,
    waiting_status,
)
from agentarmy.operator.taskwatch import Snapshot, TaskWatch, submitted_by_operator
from agentarmy.operator.workqueue import WorkQueue
from agentarmy.router.client import RouterError

NS = "ns"


class FakeRouter:
    """The router API the operator uses, in memory (idempotency keys per namespace)."""

    def __init__(self) -> None:
        self.tasks: dict[str, wire.Task] = {}
        self.submits = 0
        self.cancelled: list[str] = []
        self.lists = 0
        self.gets = 0
        self.seq = 0

    def add(self, request: wire.SubmitTask, **changes: Any) -> wire.Task:
        self.seq += 1
        task = wire.Task(
            id=f"t-{self.seq}",
            namespace=request.namespace,
            fleet=request.fleet,
            capability=request.capability,
            input=request.input,
            priority=request.priority,
            timeout=request.timeout,
            maxAttempts=request.maxAttempts,
            idempotencyKey=request.idempotencyKey,
            traceId=request.traceId or uuid.uuid4().hex,
            phase="Queued",
            seq=self.seq,
            createdAt=time.time() - 60,
            availableAt=0,
        ).model_copy(update=changes)
        self.tasks[task.id] = task
        return task

    def set(self, task_id: str, **changes: Any) -> None:
        self.tasks[task_id] = self.tasks[task_id].model_copy(update=changes)

    async def submit(self, request: wire.SubmitTask) -> wire.SubmitResponse:
        self.submits += 1
        for task in self.tasks.values():
            if (task.namespace, task.idempotencyKey) == (request.namespace, request.idempotencyKey):
                return wire.SubmitResponse(task=task, created=False)
        return wire.SubmitResponse(task=self.add(request), created=True)

    async def get(self, task_id: str) -> wire.Task:
        self.gets += 1
        if task_id not in self.tasks:
            raise RouterError(404, "NotFound", f"task {task_id} does not exist")
        return self.tasks[task_id]

    async def list(self, **filters: Any) -> wire.TaskList:
        self.lists += 1
        after, limit = int(filters.get("after", 0)), int(filters.get("limit", 100))
        found = [
            t
            for t in sorted(self.tasks.values(), key=lambda t: t.seq)
            if t.seq > after
            and all(
                getattr(t, k) == filters[k] for k in ("namespace", "fleet", "phase") if k in filters
            )
        ][:limit]
        return wire.TaskList(tasks=found, next=str(found[-1].seq) if len(found) == limit else None)

    async def cancel(self, task_id: str) -> wire.Task:
        if task_id not in self.tasks:
            raise RouterError(404, "NotFound", "gone")
        self.cancelled.append(task_id)
        if self.tasks[task_id].phase in ("Queued", "Running"):
            self.set(task_id, phase="Cancelled", finishedAt=time.time())
        return self.tasks[task_id]


class FakeKube:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], rv: str
    ) -> None:
        assert kind == "Task"
        self.patches.append((name, status))
        view = self.cache.task(namespace, name)
        assert view is not None
        # What the watch would deliver: the cache now holds the written status.
        put_task(self.cache, view.name, view.uid, dict(view.spec), status)

    async def event(self, involved: dict[str, str], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def spec(fleet: str = "crew", **extra: Any) -> dict[str, Any]:
    return {"fleet": fleet, "capability": "echo", "input": {"text": "hi"}, **extra}


def put_task(
    cache: Cache,
    name: str,
    uid: str,
    body: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
) -> TaskView:
    meta = {"namespace": NS, "name": name, "uid": uid, "resourceVersion": "1", "generation": 1}
    view = TaskView.of(meta, body or spec(), status or {})
    cache.tasks[(NS, name)] = [view]
    return view


def put_fleet(cache: Cache, name: str = "crew") -> None:
    meta = {"namespace": NS, "name": name, "uid": "f", "generation": 1}
    cache.fleets[(NS, name)] = [FleetView.of(meta, {}, {})]


def new_cache() -> Cache:
    cache = Cache()
    cache.bind(agents={}, agents_by_fleet={}, fleets={}, pods={}, policies={}, tasks={})
    return cache


class World:
    def __init__(self, router: FakeRouter | None = None) -> None:
        self.cache = new_cache()
        self.router = router or FakeRouter()
        self.kube = FakeKube(self.cache)
        self.queue = WorkQueue("task")
        self.watch = TaskWatch(self.cache, self.router, self.queue)  # type: ignore[arg-type]
        self.events = TaskEvents(self.queue, self.watch)
        self.reconciler = TaskReconciler(
            self.cache,
            self.kube,  # type: ignore[arg-type]
            self.router,  # type: ignore[arg-type]
            self.watch,
            self.events,
        )

    async def reconcile(self, name: str = "job") -> float | None:
        return await self.reconciler.reconcile((NS, name))

    def status(self, name: str = "job") -> TaskStatus:
        view = self.cache.task(NS, name)
        assert view is not None
        return TaskStatus.model_validate(view.status)


def conditions(status: TaskStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


UID = "0f8fad5b-d9cb-469f-a165-70867728950e"


# -- pure status ------------------------------------------------------------------------------


def snap(phase: str, **fields: Any) -> Snapshot:
    return Snapshot(id="t-1", seq=1, namespace=NS, fleet="crew", phase=phase, **fields)


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (
            "Queued",
            {
                "Accepted": ("True", "Submitted"),
                "Complete": ("False", "Queued"),
                "Failed": ("False", "Queued"),
                "Reconciling": ("True", "Queued"),
                "Stalled": ("False", "Queued"),
            },
        ),
        (
            "Succeeded",
            {
                "Accepted": ("True", "Submitted"),
                "Complete": ("True", "Succeeded"),
                "Failed": ("False", "Succeeded"),
                "Reconciling": ("False", "Succeeded"),
                "Stalled": ("False", "Succeeded"),
            },
        ),
        (
            "DeadLettered",
            {
                "Accepted": ("True", "Submitted"),
                "Complete": ("False", "DeadLettered"),
                "Failed": ("True", "DeadLettered"),
                "Reconciling": ("False", "DeadLettered"),
                "Stalled": ("True", "DeadLettered"),
            },
        ),
    ],
)
def test_conditions_follow_the_router_phase(
    phase: str, expected: dict[str, tuple[str, str]]
) -> None:
    status = observed_status(TaskStatus(), 3, snap(phase, attempt=2, agent="ns/a"))
    assert conditions(status) == expected
    assert (status.phase, status.attempts, status.agent, status.taskId) == (
        phase,
        2,
        "ns/a",
        "t-1",
    )
    assert status.observedGeneration == 3
    assert all(c.observedGeneration == 3 for c in status.conditions)


def test_times_and_a_lost_task() -> None:
    done = observed_status(TaskStatus(), 1, snap("Succeeded", started_at=0.0, finished_at=90.0))
    assert (done.startTime, done.completionTime) == ("1970-01-01T00:00:00Z", "1970-01-01T00:01:30Z")
    lost = observed_status(done, 1, snap("Running", lost=True))
    assert lost.phase == "Failed"
    assert conditions(lost)["Failed"] == ("True", "TaskLost")
    assert "t-1" in lost.error


def test_large_results_are_not_copied_and_errors_are_capped() -> None:
    task = wire.Task.model_validate(
        {
            "id": "t-9",
            "namespace": NS,
            "fleet": "crew",
            "capability": "echo",
            "priority": 50,
            "timeout": "5m",
            "maxAttempts": 3,
            "traceId": "0" * 32,
            "phase": "Succeeded",
            "seq": 9,
            "createdAt": 0,
            "availableAt": 0,
            "result": {"text": "x" * RESULT_LIMIT_BYTES},
        }
    )
    big = Snapshot.of(task)
    assert (big.result, big.result_truncated) == (None, True)
    small = Snapshot.of(task.model_copy(update={"result": {"text": "ok"}}))
    assert (small.result, small.result_truncated) == ({"text": "ok"}, False)
    failed = observed_status(TaskStatus(), 1, snap("Failed", error="e" * 10_000))
    assert len(failed.error) == 1024


def test_the_transition_time_moves_only_when_a_condition_flips() -> None:
    queued = observed_status(TaskStatus(), 1, snap("Queued"))
    old = {c.type: c for c in queued.conditions}
    stamped = queued.model_copy(
        update={
            "conditions": [
                c.model_copy(update={"lastTransitionTime": "2000-01-01T00:00:00Z"})
                for c in queued.conditions
            ]
        }
    )
    running = observed_status(stamped, 1, snap("Running", attempt=1))
    new = {c.type: c for c in running.conditions}
    assert new["Accepted"].lastTransitionTime == "2000-01-01T00:00:00Z"
    assert new["Complete"].lastTransitionTime == "2000-01-01T00:00:00Z"
    assert old["Accepted"].status == new["Accepted"].status


def events_between(old: TaskStatus, new: TaskStatus) -> list[tuple[str, str]]:
    return [(t, r) for t, r, _ in task_events(old.conditions, new.conditions)]


def test_events_say_accepted_completed_or_failed_once() -> None:
    missing = waiting_status(TaskStatus(), 1, "False", "FleetNotFound", "no fleet")
    queued = observed_status(missing, 1, snap("Queued"))
    running = observed_status(queued, 1, snap("Running", attempt=1))
    done = observed_status(running, 1, snap("Succeeded", attempt=1))
    failed = observed_status(running, 1, snap("Failed", attempt=3, error="boom"))
    assert events_between(TaskStatus(), missing) == [("Warning", "FleetNotFound")]
    assert events_between(missing, missing) == []
    assert events_between(missing, queued) == [("Normal", "Submitted")]
    assert events_between(queued, running) == []
    assert events_between(running, done) == [("Normal", "Succeeded")]
    assert events_between(running, failed) == [("Warning", "Failed")]


def test_conditions_are_valid_condition_objects() -> None:
    status = waiting_status(TaskStatus(), 1, "Unknown", "RouterUnavailable", "down")
    assert all(isinstance(c, Condition) for c in status.conditions)
    assert status.phase == "Pending"


# -- reconciler -------------------------------------------------------------------------------


async def test_a_task_for_a_missing_fleet_waits_then_is_submitted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # log calls run (their extra fields must be legal)
    world = World()
    put_task(world.cache, "job", UID)
    assert await world.reconcile() == tasks_module.FLEET_RECHECK_SECONDS
    status = world.status()
    assert conditions(status)["Accepted"] == ("False", "FleetNotFound")
    assert "fleet crew does not exist in namespace ns" in status.conditions[0].message
    assert world.router.submits == 0
    assert [r for _, r, _ in world.kube.events] == ["FleetNotFound"]
    assert await world.reconcile() == tasks_module.FLEET_RECHECK_SECONDS
    assert len(world.kube.patches) == 1, "an unchanged verdict is not written again"

    put_fleet(world.cache)
    world.events.fleet_changed(NS, "crew")
    assert len(world.queue) == 1, "the Fleet's appearance queues the waiting Task"
    assert await world.reconcile() is None
    (task,) = world.router.tasks.values()
    assert task.idempotencyKey == UID
    assert task.traceId == UID.replace("-", "")
    assert submitted_by_operator(task) == UID
    status = world.status()
    assert (status.phase, status.taskId) == ("Queued", task.id)
    assert conditions(status)["Accepted"] == ("True", "Submitted")
    assert [r for _, r, _ in world.kube.events] == ["FleetNotFound", "Submitted"]
    assert any(r.getMessage() == "submitted task" for r in caplog.records)


async def test_a_stale_cache_or_a_restart_never_submits_twice() -> None:
    world = World()
    put_fleet(world.cache)
    put_task(world.cache, "job", UID)
    await world.reconcile()
    # The watch has not shown the written status yet: the cache has no taskId.
    put_task(world.cache, "job", UID)
    await world.reconcile()
    assert world.router.submits == 1

    # A new operator process: same cache contents, empty memory.
    restarted = World(world.router)
    restarted.cache = world.cache
    restarted.kube = FakeKube(world.cache)
    restarted.watch = TaskWatch(world.cache, world.router, restarted.queue)  # type: ignore[arg-type]
    restarted.reconciler = TaskReconciler(
        world.cache,
        restarted.kube,  # type: ignore[arg-type]
        world.router,  # type: ignore[arg-type]
        restarted.watch,
        restarted.events,
    )
    (task,) = world.router.tasks.values()
    world.router.set(task.id, phase="Running", attempt=1, agent="ns/a")
    await restarted.reconcile()
    assert world.router.submits == 1
    assert world.router.gets == 1
    assert restarted.status().phase == "Running"


async def test_a_given_idempotency_key_is_used() -> None:
    world = World()
    put_fleet(world.cache)
    put_task(world.cache, "job", UID, spec(idempotencyKey="order-17"))
    await world.reconcile()
    (task,) = world.router.tasks.values()
    assert task.idempotencyKey == "order-17"
    assert submitted_by_operator(task) is None


async def test_status_is_written_three_times_for_a_normal_life() -> None:
    world = World()
    put_fleet(world.cache)
    put_task(world.cache, "job", UID)
    await world.reconcile()
    (task,) = world.router.tasks.values()

    world.router.set(task.id, phase="Running", attempt=1, agent="ns/a")
    assert await world.watch.poll_once() == 1
    wait = await world.reconcile()
    assert wait is not None and 0 < wait <= tasks_module.STATUS_INTERVAL, "Running waits"
    assert len(world.kube.patches) == 1

    world.reconciler._last_write.clear()  # the interval has passed
    assert await world.reconcile() is None
    assert world.status().phase == "Running"
    assert await world.watch.poll_once() == 0, "nothing changed: nothing queued"

    world.router.set(task.id, phase="Succeeded", result={"text": "hi"}, finishedAt=time.time())
    assert await world.watch.poll_once() == 1
    assert await world.reconcile() is None, "the end is written at once"
    status = world.status()
    assert (status.phase, status.result) == ("Succeeded", {"text": "hi"})
    assert len(world.kube.patches) == 3
    assert len(world.watch) == 0, "a finished Task is no longer watched"
    assert await world.reconcile() is None
    assert len(world.kube.patches) == 3


@pytest.mark.parametrize(
    ("code", "requeue", "reason", "phase"),
    [
        (403, tasks_module.REJECTED_RECHECK_SECONDS, "Rejected", "Pending"),
        (400, None, "InvalidSpec", "Failed"),
    ],
)
async def test_a_router_refusal_is_reported(
    code: int, requeue: float | None, reason: str, phase: str
) -> None:
    class Refusing(FakeRouter):
        async def submit(self, request: wire.SubmitTask) -> wire.SubmitResponse:
            raise RouterError(code, "No", "policy p forbids it")

    world = World(Refusing())
    put_fleet(world.cache)
    put_task(world.cache, "job", UID)
    assert await world.reconcile() == requeue
    status = world.status()
    assert conditions(status)["Accepted"] == ("False", reason)
    assert status.phase == phase
    assert "policy p forbids it" in status.conditions[0].message


async def test_an_unreachable_router_is_said_once_and_retried() -> None:
    class Down(FakeRouter):
        async def submit(self, request: wire.SubmitTask) -> wire.SubmitResponse:
            raise ConnectionRefusedError("refused")

    world = World(Down())
    put_fleet(world.cache)
    put_task(world.cache, "job", UID)
    for _ in range(2):
        with pytest.raises(tasks_module.RouterUnavailable):
            await world.reconcile()
    assert conditions(world.status())["Accepted"] == ("Unknown", "RouterUnavailable")
    assert len(world.kube.patches) == 1


async def test_bad_input_in_the_cache_never_crashes() -> None:
    world = World()
    put_task(world.cache, "job", UID, {"fleet": "Not A Label", "capability": "echo"})
    assert await world.reconcile() is None
    status = world.status()
    assert status.phase == "Failed"
    assert conditions(status)["Accepted"] == ("False", "InvalidSpec")
    assert [r for _, r, _ in world.kube.events] == ["InvalidSpec"]
    put_task(world.cache, "odd", UID, spec(), {"phase": "Nonsense", "attempts": -1})
    put_fleet(world.cache)
    await world.reconcile("odd")
    assert world.status("odd").phase == "Queued"


async def test_without_a_router_the_task_says_so() -> None:
    world = World()
    world.reconciler.client = None
    put_task(world.cache, "job", UID)
    await world.reconcile()
    assert conditions(world.status())["Accepted"] == ("False", "RouterNotConfigured")


# -- watch ------------------------------------------------------------------------------------


async def test_one_pass_lists_a_fleet_and_jumps_over_other_work() -> None:
    world = World()
    put_fleet(world.cache)
    noise = wire.SubmitTask(namespace=NS, fleet="crew", capability="echo")
    put_task(world.cache, "a", str(uuid.uuid4()))
    await world.reconcile("a")
    for _ in range(3 * taskwatch.PAGE_SIZE):
        world.router.add(noise)  # an API caller floods the fleet
    put_task(world.cache, "b", str(uuid.uuid4()))
    await world.reconcile("b")
    world.router.lists = 0
    for task in list(world.router.tasks.values()):
        if task.idempotencyKey:
            world.router.set(task.id, phase="Running", attempt=1)
    assert await world.watch.poll_once() == 2
    assert world.router.lists == 2, "the cursor jumps to the next open Task"
    assert world.router.gets == 0


async def test_a_task_the_router_forgot_is_lost() -> None:
    world = World()
    put_fleet(world.cache)
    put_task(world.cache, "job", UID)
    await world.reconcile()
    world.router.tasks.clear()
    assert await world.watch.poll_once() == 1
    await world.reconcile()
    status = world.status()
    assert status.phase == "Failed"
    assert conditions(status)["Failed"] == ("True", "TaskLost")
    assert world.router.submits == 1


async def test_deleting_a_task_cancels_its_router_task() -> None:
    world = World()
    put_fleet(world.cache)
    put_task(world.cache, "job", UID)
    await world.reconcile()
    (task,) = world.router.tasks.values()
    del world.cache.tasks[(NS, "job")]
    await world.reconcile()
    assert world.router.cancelled == [task.id]
    assert world.router.tasks[task.id].phase == "Cancelled"
    assert len(world.watch) == 0


async def test_a_shared_router_task_is_cancelled_only_with_its_last_task() -> None:
    world = World()
    put_fleet(world.cache)
    put_task(world.cache, "one", str(uuid.uuid4()), spec(idempotencyKey="shared"))
    put_task(world.cache, "two", str(uuid.uuid4()), spec(idempotencyKey="shared"))
    await world.reconcile("one")
    await world.reconcile("two")
    assert len(world.router.tasks) == 1
    del world.cache.tasks[(NS, "one")]
    await world.reconcile("one")
    assert world.router.cancelled == []
    del world.cache.tasks[(NS, "two")]
    assert await world.watch.sweep() == 1


async def test_after_a_restart_a_shared_router_task_keeps_both_owners() -> None:
    world = World()
    shared = world.router.add(
        wire.SubmitTask(namespace=NS, fleet="crew", capability="echo", idempotencyKey="shared")
    )
    for name in ("one", "two"):
        status = {"taskId": shared.id, "phase": "Queued"}
        put_task(world.cache, name, str(uuid.uuid4()), spec(idempotencyKey="shared"), status)
        await world.reconcile(name)
    assert world.router.gets == 1
    del world.cache.tasks[(NS, "one")]
    await world.reconcile("one")
    assert await world.watch.sweep() == 0
    assert world.router.cancelled == []


async def test_a_deletion_before_the_operator_looked_still_cancels() -> None:
    world = World()
    request = wire.SubmitTask(namespace=NS, fleet="crew", capability="echo", idempotencyKey="mine")
    task = world.router.add(request)
    world.events.deleted((NS, "job"), UID, task.id, "Queued")
    await world.reconcile()
    assert world.router.cancelled == [task.id]
    world.events.deleted((NS, "done"), UID, "t-404", "Succeeded")
    await world.reconcile("done")
    assert world.router.cancelled == [task.id], "finished tasks are not cancelled"


async def test_tasks_deleted_while_no_operator_ran_are_cancelled_at_start() -> None:
    world = World()
    live, gone = str(uuid.uuid4()), str(uuid.uuid4())
    put_task(world.cache, "live", live, spec(), {"taskId": "t-1", "phase": "Queued"})

    def ours(uid: str) -> wire.SubmitTask:
        return wire.SubmitTask(
            namespace=NS,
            fleet="crew",
            capability="echo",
            idempotencyKey=uid,
            traceId=uid.replace("-", ""),
        )

    world.router.add(ours(live))
    orphan = world.router.add(ours(gone))
    world.router.add(ours(str(uuid.uuid4())), phase="Succeeded")
    # An API caller's task with a uid-like key but its own trace id is not ours.
    world.router.add(
        wire.SubmitTask(
            namespace=NS, fleet="crew", capability="echo", idempotencyKey=str(uuid.uuid4())
        )
    )
    assert await world.watch.cancel_orphans() == 1
    assert world.router.cancelled == [orphan.id]


async def test_the_loop_keeps_polling_when_the_orphan_check_fails() -> None:
    class NoPhaseFilter(FakeRouter):
        async def list(self, **filters: Any) -> wire.TaskList:
            if "phase" in filters:
                raise RouterError(503, "Unavailable", "try later")
            return await super().list(**filters)

    world = World(NoPhaseFilter())
    world.watch.poll_seconds = 0.01
    put_fleet(world.cache)
    put_task(world.cache, "job", UID)
    await world.reconcile()
    (task,) = world.router.tasks.values()
    world.router.set(task.id, phase="Running", attempt=1)
    loop = asyncio.create_task(world.watch.run())
    try:
        assert await asyncio.wait_for(world.queue.get(), 5) == (NS, "job")
    finally:
        loop.cancel()
    assert world.watch.latest(task.id) == Snapshot.of(world.router.tasks[task.id])
    assert not world.watch.orphans_checked
