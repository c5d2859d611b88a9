"""Task reconciler: submit each Task to the router once, and mirror how it goes.

Submitted exactly once. The router task's idempotency key is ``spec.idempotencyKey``
or else the Task's uid, so submitting again (after a crash between the submit and
the status write, or from a stale cache) returns the same router task. Once
``status.taskId`` is written the operator never submits again: after a restart
it reads that task by id. A router that no longer knows it (a reset store) is
reported as TaskLost, never resubmitted, so no work runs twice.

Mirrored coarsely. taskwatch.py learns of router changes with one list call per
fleet and second and queues the Task; status is written only when a mirrored field
changes (phase, attempt, agent, result, error, times) and, for changes that are not
the first or last word, at most every STATUS_INTERVAL per Task. A normal Task's
life is two or three status writes: Accepted with Queued (or Running), Running,
Complete; a Task that finishes within STATUS_INTERVAL skips Running.

A missing fleet. The Task stays Pending with Accepted=False, FleetNotFound, and
is submitted when the Fleet appears: a Fleet event queues the Tasks waiting for
it, and they look again every FLEET_RECHECK_SECONDS anyway (level-based).

Deletion cancels an unfinished router task, without a finalizer. A finalizer
costs every Task two more writes (add, remove), and while no operator runs it
blocks ``kubectl delete`` and namespace deletion. A sweep is enough here: the
router task is only worth cancelling, not required to be, and cancelling late
is harmless (the result is just discarded). So: the Task's deletion event and
a sweep every few seconds cancel router tasks no live Task owns, and the first
pass after an operator start cancels those of Tasks deleted while it was down
(see taskwatch.py for how they are recognised; one with a custom
``spec.idempotencyKey`` cannot be told from an API caller's task then, and runs
to its end).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from agentarmy.api import conditions as c
from agentarmy.api import wire
from agentarmy.api.common import Condition, describe_error, set_condition
from agentarmy.api.task import ERROR_LIMIT_CHARS, TERMINAL_PHASES, TaskSpec, TaskStatus
from agentarmy.operator.cache import Cache, TaskView
from agentarmy.operator.kube import Kube, involved
from agentarmy.operator.taskwatch import Owner, Snapshot, TaskWatch, trace_id_for
from agentarmy.operator.workqueue import Key, WorkQueue
from agentarmy.router.client import TRANSIENT, RouterClient, RouterError

log = logging.getLogger("agentarmy.operator.tasks")

STATUS_INTERVAL = 5.0
"""Least seconds between two status writes of one Task that are not urgent."""
FLEET_RECHECK_SECONDS = 60.0
REJECTED_RECHECK_SECONDS = 60.0
"""A refused submission is tried again this often: a Policy may have changed."""
RETRY_STATUSES = frozenset({408, 425, 429})
INVALID_STATUSES = frozenset({400, 413, 422})
"""The router says the task itself is wrong: a permanent failure (InvalidSpec)."""


class RouterUnavailable(Exception):
    """The router could not take the submission now; the work queue backs off."""


# -- status: pure functions -------------------------------------------------------------------


def rfc3339(unix: float | None) -> str:
    if unix is None:
        return ""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verdict:
    """The five conditions, each as (status, reason, message)."""

    accepted: tuple[str, str, str]
    complete: tuple[str, str, str]
    failed: tuple[str, str, str]
    reconciling: tuple[str, str, str]
    stalled: tuple[str, str, str]

    def apply(self, conditions: list[Condition], generation: int) -> list[Condition]:
        for type_, (status, reason, message) in (
            (c.ACCEPTED, self.accepted),
            (c.COMPLETE, self.complete),
            (c.FAILED, self.failed),
            (c.RECONCILING, self.reconciling),
            (c.STALLED, self.stalled),
        ):
            conditions = set_condition(conditions, type_, status, reason, message, generation)
        return conditions


def waiting_status(
    current: TaskStatus, generation: int, accepted: str, reason: str, message: str
) -> TaskStatus:
    """Not in the router yet: why (a missing fleet, a refusal, the router unreachable)."""
    verdict = Verdict(
        accepted=(accepted, reason, message),
        complete=("False", reason, "not submitted yet"),
        failed=("False", reason, "not submitted yet"),
        reconciling=("True", reason, message),
        stalled=("False", reason, "waits to be submitted"),
    )
    return current.model_copy(
        update={
            "phase": "Pending",
            "observedGeneration": generation,
            "conditions": verdict.apply(list(current.conditions), generation),
        }
    )


def invalid_status(current: TaskStatus, generation: int, message: str) -> TaskStatus:
    verdict = Verdict(
        accepted=("False", c.INVALID_SPEC, message),
        complete=("False", c.INVALID_SPEC, message),
        failed=("True", c.INVALID_SPEC, message),
        reconciling=("False", c.INVALID_SPEC, message),
        stalled=("True", c.INVALID_SPEC, message),
    )
    return current.model_copy(
        update={
            "phase": "Failed",
            "error": message[:ERROR_LIMIT_CHARS],
            "observedGeneration": generation,
            "conditions": verdict.apply(list(current.conditions), generation),
        }
    )


def _verdict(snap: Snapshot) -> Verdict:
    accepted = ("True", c.SUBMITTED, f"submitted to the router as task {snap.id}")
    if snap.lost:
        why = (
            f"the router no longer has task {snap.id} (was its store reset?); "
            "delete and re-apply the Task to run it again"
        )
        bad = ("True", c.TASK_LOST, why)
        return Verdict(accepted, ("False", c.TASK_LOST, why), bad, ("False", c.TASK_LOST, why), bad)
    phase = snap.phase
    where = f" on agent {snap.agent}" if snap.agent else ""
    if phase == "Succeeded":
        done = f"succeeded{where} after {snap.attempt} attempt(s)"
        return Verdict(
            accepted,
            ("True", phase, done),
            ("False", phase, done),
            ("False", phase, done),
            ("False", phase, done),
        )
    if phase in TERMINAL_PHASES:
        why = f"{phase.lower()} after {snap.attempt} attempt(s): {snap.error or 'no error given'}"
        why = why[:ERROR_LIMIT_CHARS]
        bad = ("True", phase, why)
        return Verdict(accepted, ("False", phase, why), bad, ("False", phase, why), bad)
    now = f"attempt {snap.attempt} running{where}" if phase == "Running" else phase.lower()
    return Verdict(
        accepted,
        ("False", phase, now),
        ("False", phase, now),
        ("True", phase, now),
        ("False", phase, now),
    )


def observed_status(current: TaskStatus, generation: int, snap: Snapshot) -> TaskStatus:
    """The status that mirrors the router's view of the task."""
    phase = "Failed" if snap.lost else snap.phase
    error = snap.error or (f"router task {snap.id} is lost" if snap.lost else "")
    return current.model_copy(
        update={
            "phase": phase,
            "taskId": snap.id,
            "attempts": snap.attempt,
            "agent": snap.agent,
            "result": snap.result,
            "resultTruncated": snap.result_truncated,
            "error": error[:ERROR_LIMIT_CHARS],
            "startTime": rfc3339(snap.started_at) or current.startTime,
            "completionTime": rfc3339(snap.finished_at) or current.completionTime,
            "observedGeneration": generation,
            "conditions": _verdict(snap).apply(list(current.conditions), generation),
        }
    )


EVENT_CONDITIONS = (c.ACCEPTED, c.COMPLETE, c.FAILED)


def task_events(old: list[Condition], new: list[Condition]) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events a status change is worth: a Task accepted or
    refused, succeeded, or failed; once per change of the condition's status or reason."""
    before = {x.type: (x.status, x.reason) for x in old}
    events: list[tuple[str, str, str]] = []
    for condition in new:
        if condition.type not in EVENT_CONDITIONS:
            continue
        if before.get(condition.type) == (condition.status, condition.reason):
            continue
        if any(reason == condition.reason for _, reason, _ in events):
            continue  # one cause, one Event (an invalid spec is not accepted and failed)
        if condition.type == c.ACCEPTED and condition.status != "Unknown":
            kind = "Normal" if condition.status == "True" else "Warning"
            events.append((kind, condition.reason, condition.message))
        elif condition.type == c.COMPLETE and condition.status == "True":
            events.append(("Normal", condition.reason, condition.message))
        elif condition.type == c.FAILED and condition.status == "True":
            events.append(("Warning", condition.reason, condition.message))
    return events


def current_status(view: TaskView) -> TaskStatus:
    """The stored status; one we cannot read (edited by hand) counts as none."""
    try:
        return TaskStatus.model_validate(view.status or {})
    except ValidationError:
        log.warning(
            "ignoring an unreadable status", extra={"task": f"{view.namespace}/{view.name}"}
        )
        return TaskStatus(taskId=str(view.status.get("taskId") or ""))


def submit_request(view: TaskView, spec: TaskSpec) -> wire.SubmitTask:
    fields = spec.model_dump(exclude_none=True)
    fields["idempotencyKey"] = spec.idempotencyKey or view.uid
    return wire.SubmitTask(namespace=view.namespace, traceId=trace_id_for(view.uid), **fields)


# -- what the kopf handlers tell --------------------------------------------------------------


class TaskEvents:
    """The kopf handlers' side: queue keys, and remember which Tasks wait for which Fleet."""

    def __init__(self, queue: WorkQueue, watch: TaskWatch | None = None) -> None:
        self.queue = queue
        self.watch = watch
        self._waiting: dict[Key, set[str]] = defaultdict(set)

    def changed(self, key: Key) -> None:
        self.queue.add(key)

    def deleted(self, key: Key, uid: str, task_id: str, phase: str) -> None:
        if self.watch is not None and task_id and phase not in TERMINAL_PHASES:
            self.watch.note_deleted((key, uid), task_id)
        self.queue.add(key)

    def wait_for_fleet(self, namespace: str, fleet: str, task: str) -> None:
        self._waiting[(namespace, fleet)].add(task)

    def fleet_changed(self, namespace: str, fleet: str) -> None:
        for task in self._waiting.pop((namespace, fleet), ()):
            self.queue.add((namespace, task))


# -- the reconciler ---------------------------------------------------------------------------


class TaskReconciler:
    def __init__(
        self,
        cache: Cache,
        kube: Kube,
        client: RouterClient | None,
        watch: TaskWatch,
        events: TaskEvents,
    ) -> None:
        self.cache = cache
        self.kube = kube
        self.client = client
        self.watch = watch
        self.events = events
        self._last_write: dict[Key, float] = {}

    async def reconcile(self, key: Key) -> float | None:
        namespace, name = key
        view = self.cache.task(namespace, name)
        if view is None or view.deleting:
            self._last_write.pop(key, None)
            await self.watch.release(key)
            return None
        current = current_status(view)
        owner: Owner = (key, view.uid)
        if current.phase in TERMINAL_PHASES and current.observedGeneration == view.generation:
            self.watch.settle(owner)  # finished for good: the spec is immutable
            return None
        try:
            spec = TaskSpec.model_validate(view.spec)
        except ValidationError as err:
            status = invalid_status(current, view.generation, describe_error(err))
            return await self._write(view, current, status)
        if self.client is None:
            status = waiting_status(
                current,
                view.generation,
                "False",
                c.ROUTER_NOT_CONFIGURED,
                "the operator has no router token (AGENTARMY_ROUTER_TOKEN_FILE); "
                "Tasks cannot be submitted",
            )
            return await self._write(view, current, status)
        task_id = view.task_id or self.watch.router_id(owner)
        if task_id:
            snap = self.watch.latest(task_id)
            if snap is None:
                snap = await self._read(task_id, owner)
            elif self.watch.router_id(owner) != task_id:
                self.watch.track(owner, snap)  # shares a router task (same idempotency key)
            return await self._write(view, current, observed_status(current, view.generation, snap))
        return await self._submit(view, spec, current, owner)

    async def _read(self, task_id: str, owner: Owner) -> Snapshot:
        """The router task of a Task submitted before (by an earlier operator run)."""
        assert self.client is not None
        try:
            snap = Snapshot.of(await self.client.get(task_id))
        except RouterError as err:
            if err.status != 404:
                raise
            (namespace, _), _ = owner
            snap = Snapshot(id=task_id, seq=0, namespace=namespace, fleet="", phase="", lost=True)
        self.watch.track(owner, snap)
        return snap

    async def _submit(
        self, view: TaskView, spec: TaskSpec, current: TaskStatus, owner: Owner
    ) -> float | None:
        assert self.client is not None
        fleet = self.cache.fleet(view.namespace, spec.fleet)
        if fleet is None or fleet.deleting:
            self.events.wait_for_fleet(view.namespace, spec.fleet, view.name)
            message = (
                f"fleet {spec.fleet} does not exist in namespace {view.namespace}; "
                "the task is submitted when it does"
            )
            status = waiting_status(current, view.generation, "False", c.FLEET_NOT_FOUND, message)
            wait = await self._write(view, current, status)
            return min(wait or FLEET_RECHECK_SECONDS, FLEET_RECHECK_SECONDS)
        try:
            request = submit_request(view, spec)
            submitted = await self.client.submit(request)
        except ValidationError as err:  # the router's rules are stricter than the CRD's
            status = invalid_status(current, view.generation, describe_error(err))
            return await self._write(view, current, status)
        except RouterError as err:
            return await self._refused(view, current, err)
        except TRANSIENT as err:
            return await self._unavailable(view, current, str(err) or type(err).__name__)
        snap = Snapshot.of(submitted.task)
        self.watch.track(owner, snap)
        log.info(
            "submitted task",
            extra={
                "namespace": view.namespace,
                "task": view.name,
                "taskId": snap.id,
                "newTask": submitted.created,
            },
        )
        return await self._write(view, current, observed_status(current, view.generation, snap))

    async def _refused(self, view: TaskView, current: TaskStatus, err: RouterError) -> float | None:
        if err.status >= 500 or err.status in RETRY_STATUSES:
            return await self._unavailable(view, current, err.message)
        message = f"the router refused the task: {err.message}"
        if err.status in INVALID_STATUSES:  # the spec is immutable: it never will take it
            return await self._write(
                view, current, invalid_status(current, view.generation, message)
            )
        status = waiting_status(current, view.generation, "False", c.REJECTED, message)
        wait = await self._write(view, current, status)
        return min(wait or REJECTED_RECHECK_SECONDS, REJECTED_RECHECK_SECONDS)

    async def _unavailable(self, view: TaskView, current: TaskStatus, why: str) -> float | None:
        """Say so once in status, then let the work queue back off exponentially."""
        message = f"cannot reach the router: {why}"
        status = waiting_status(current, view.generation, "Unknown", c.ROUTER_UNAVAILABLE, message)
        await self._write(view, current, status, urgent=True)
        raise RouterUnavailable(message)

    async def _write(
        self, view: TaskView, current: TaskStatus, status: TaskStatus, urgent: bool = False
    ) -> float | None:
        """Patch status when it carries news; non-urgent news waits for STATUS_INTERVAL.
        Returns when to look again (None: on the next change)."""
        key = (view.namespace, view.name)
        new = status.model_dump(mode="json", exclude_none=True)
        if new == current.model_dump(mode="json", exclude_none=True):
            return None
        urgent = urgent or _urgent(current, status)
        wait = self._last_write.get(key, 0.0) + STATUS_INTERVAL - time.monotonic()
        if not urgent and wait > 0:
            return wait  # batched: whatever else changes meanwhile goes in the same write
        await self.kube.patch_status("Task", view.namespace, view.name, new, view.resource_version)
        self._last_write[key] = time.monotonic()
        if status.phase in TERMINAL_PHASES:
            self.watch.settle((key, view.uid))
            self._last_write.pop(key, None)
        who = involved("Task", view.namespace, view.name, view.uid)
        for type_, reason, message in task_events(current.conditions, status.conditions):
            await self.kube.event(who, type_, reason, message)
        return None


def _urgent(current: TaskStatus, status: TaskStatus) -> bool:
    """The first status, a change of acceptance and the end are written at once."""
    if not current.conditions or status.phase in TERMINAL_PHASES:
        return True
    accepted = {x.type: (x.status, x.reason) for x in current.conditions}.get(c.ACCEPTED)
    now = {x.type: (x.status, x.reason) for x in status.conditions}.get(c.ACCEPTED)
    return accepted != now


__all__ = ["TaskEvents", "TaskReconciler", "observed_status", "task_events", "waiting_status"]
