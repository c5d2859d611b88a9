"""Pure decisions of a canary rollout: which step a Fleet is at, how many Agents each
template gets, and the verdict on the new template's error rate.

The state lives in ``status.canary`` (so a restarted operator resumes at the same step);
the evidence is the router's count of finished tasks per template, minus what it had
counted when the canary began (a retried template starts from a clean slate). Task
shares follow Agent shares: the router dispatches across every Agent of the fleet.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from agentarmy.api.common import parse_duration
from agentarmy.api.fleet import Canary, CanaryStatus, FleetSpec
from agentarmy.operator.rollout import Member

JUDGING_PHASES = frozenset({"Progressing", "Paused", "WaitingForTasks", "Promoting"})
"""Phases in which a canary is still judging its template (not Promoted, not Aborted)."""
RETRY_ANNOTATION = "agentarmy.io/rollout-retry"
"""Set (to any new value) to retry an aborted canary of the same template."""


@dataclass(frozen=True)
class TemplateCounts:
    """The router's ended attempts and failures of one template, since it first ran."""

    tasks: int
    failures: int


@dataclass(frozen=True)
class Decision:
    status: CanaryStatus | None
    """What status.canary becomes (None: never ran a canary)."""
    targets: dict[str, int] | None
    """Agents wanted per template hash, others to zero; None: roll as a plain update."""
    recorded: bool = False
    """The step, phase or baseline moved: write status before acting on it."""
    requeue: float | None = None
    """Look again after this long (a step's pause running out)."""

    @property
    def aborted(self) -> bool:
        return self.status is not None and self.status.phase == "Aborted"


def split(replicas: int, weight: int) -> tuple[int, int]:
    """(new, stable) Agents at ``weight`` percent. Below 100% at least one Agent of each
    serves: one stable Agent so there is something to return to, one new so it is tried."""
    if replicas == 0:
        return 0, 0
    if weight >= 100:
        return replicas, 0
    if replicas == 1:
        return 1, 1  # a surge of one: the only way to try a template on a one-Agent fleet
    new = min(replicas - 1, max(1, math.ceil(replicas * weight / 100)))
    return new, replicas - new


def percent(failures: int, tasks: int) -> str:
    return f"{100 * failures / tasks:.1f}%" if tasks else ""


def _stable_of(previous: CanaryStatus | None, stable_hint: str, others: Sequence[Member]) -> str:
    """The template a new canary measures against and returns to: the one the last,
    unfinished canary would have returned to, else the last fully rolled-out one, else
    the one most of the other Agents run."""
    present = {m.template_hash for m in others}
    if (
        previous is not None
        and previous.phase != "Promoted"
        and previous.stableTemplateHash in present
    ):
        return previous.stableTemplateHash
    if stable_hint in present:
        return stable_hint
    counts = Counter(m.template_hash for m in others)
    return max(sorted(counts), key=lambda h: counts[h])


def _start(
    template_hash: str, stable: str, counts: TemplateCounts | None, retry: str, weight: int
) -> CanaryStatus:
    return CanaryStatus(
        phase="Progressing",
        templateHash=template_hash,
        stableTemplateHash=stable,
        step=0,
        weight=weight,
        baselineTasks=counts.tasks if counts else 0,
        baselineFailures=counts.failures if counts else 0,
        retry=retry,
        message="starting",
    )


def _measured(status: CanaryStatus, counts: TemplateCounts | None) -> CanaryStatus:
    """Tasks and failures since the baseline. The router may forget old tasks (NATS keeps
    a window); when its count falls below the baseline, the baseline moves down with it."""
    if counts is None:
        return status
    base_tasks = min(status.baselineTasks, counts.tasks)
    base_failures = min(status.baselineFailures, counts.failures)
    tasks = max(status.tasks, counts.tasks - base_tasks)
    failures = max(status.failures, counts.failures - base_failures)
    return status.model_copy(
        update={
            "baselineTasks": base_tasks,
            "baselineFailures": base_failures,
            "tasks": tasks,
            "failures": min(failures, tasks),
        }
    )


def _seconds_since(stamp: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def _rfc3339(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _aborted(status: CanaryStatus, canary: Canary, fleet: str) -> CanaryStatus:
    rate = percent(status.failures, status.tasks)
    message = (
        f"template {status.templateHash[:5]} failed {status.failures} of {status.tasks} "
        f"tasks ({rate}), above maxErrorRate {canary.maxErrorRate:.0%} (minTasks "
        f"{canary.minTasks}); rolled back to template {status.stableTemplateHash[:5]} at step "
        f"{status.step + 1} ({status.weight}%). Fix the template, or retry: "
        f"armyctl rollout retry fleet/{fleet}"
    )
    return status.model_copy(update={"phase": "Aborted", "errorRate": rate, "message": message})


def _reached(
    members: Sequence[Member], template_hash: str, stable: str, new: int, old: int
) -> bool:
    """This step's Agents exist, the new ones available, and nothing else is left."""
    on_new = [m for m in members if m.template_hash == template_hash]
    on_stable = [m for m in members if m.template_hash == stable]
    return (
        len(on_new) == new
        and all(m.available for m in on_new)
        and len(on_stable) == old
        and len(on_new) + len(on_stable) == len(members)
    )


def decide(
    fleet: str,
    spec: FleetSpec,
    template_hash: str,
    stable_hint: str,
    previous: CanaryStatus | None,
    members: Sequence[Member],
    counts: TemplateCounts | None,
    retry: str,
    now: datetime,
) -> Decision:
    canary = spec.strategy.canary
    assert canary is not None  # the CRD requires it for type Canary
    others = [m for m in members if m.template_hash != template_hash]
    status = previous if previous and previous.templateHash == template_hash else None
    recorded = False
    if status is None:
        if not others:
            return Decision(previous, None)  # nothing to roll from: create like any update
        stable = _stable_of(previous, stable_hint, others)
        status = _start(template_hash, stable, counts, retry, canary.steps[0].weight)
        recorded = True
    elif status.phase == "Promoted":
        return Decision(status, None)
    elif status.phase == "Aborted":
        if not retry or retry == status.retry:
            targets = {status.stableTemplateHash: spec.replicas, template_hash: 0}
            return Decision(status, targets)
        status = _start(
            template_hash, status.stableTemplateHash, counts, retry, canary.steps[0].weight
        )
        recorded = True

    status = _measured(status, counts)
    if status.tasks >= canary.minTasks:
        status = status.model_copy(update={"errorRate": percent(status.failures, status.tasks)})
        if status.failures / status.tasks > canary.maxErrorRate:
            status = _aborted(status, canary, fleet)
            return Decision(status, {status.stableTemplateHash: spec.replicas}, recorded=True)

    stable = status.stableTemplateHash
    steps = canary.steps
    while True:
        weight = steps[status.step].weight if status.step < len(steps) else 100
        new, old = split(spec.replicas, weight)
        targets = {template_hash: new, stable: old}
        status = status.model_copy(update={"weight": weight})
        if status.step >= len(steps):
            if _reached(members, template_hash, stable, new, 0):
                promoted = status.model_copy(
                    update={
                        "phase": "Promoted",
                        "message": f"promoted to 100% after {status.tasks} tasks, "
                        f"{status.failures} failed",
                    }
                )
                return Decision(promoted, None, recorded=True)
            promoting = status.model_copy(
                update={"phase": "Promoting", "message": "every step passed: rolling to 100%"}
            )
            return Decision(promoting, targets, recorded)
        label = f"step {status.step + 1}/{len(steps)} at {weight}%"
        if not _reached(members, template_hash, stable, new, old):
            moving = status.model_copy(
                update={
                    "phase": "Progressing",
                    "stepStartedAt": "",
                    "message": f"{label}: moving to {new} new and {old} old agent(s)",
                }
            )
            return Decision(moving, targets, recorded)
        started = status.stepStartedAt or _rfc3339(now)
        left = parse_duration(steps[status.step].pause) - _seconds_since(started, now)
        tally = f"{status.tasks} task(s) finished, {status.failures} failed"
        if left > 0:
            paused = status.model_copy(
                update={
                    "phase": "Paused",
                    "stepStartedAt": started,
                    "message": f"{label}: watching, {math.ceil(left)}s of the pause left; {tally}",
                }
            )
            return Decision(paused, targets, recorded, requeue=left)
        if status.tasks < canary.minTasks:
            more = canary.minTasks - status.tasks
            waiting = status.model_copy(
                update={
                    "phase": "WaitingForTasks",
                    "stepStartedAt": started,
                    "message": f"{label}: waiting for {more} more task(s) before judging "
                    f"the error rate; {tally}",
                }
            )
            return Decision(waiting, targets, recorded)
        status = status.model_copy(update={"step": status.step + 1, "stepStartedAt": ""})
        recorded = True


__all__ = ["JUDGING_PHASES", "RETRY_ANNOTATION", "Decision", "TemplateCounts", "decide", "split"]
