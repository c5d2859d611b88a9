"""Pure decisions for a Fleet: which Agents to create and delete, and its status.

The rolling update follows the Deployment controller: grow the new template
up to ``replicas + maxSurge`` in total, and remove old Agents (unready ones
first) only while at least ``replicas - maxUnavailable`` stay available.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from agentarmy.api import conditions as c
from agentarmy.api.common import Condition, parse_int_or_percent, set_condition
from agentarmy.api.fleet import CanaryStatus, FleetSpec, FleetStatus
from agentarmy.api.wire import Halt
from agentarmy.operator.compliance import Compliance


@dataclass(frozen=True)
class Member:
    """What the planner needs to know of one Agent of the fleet."""

    name: str
    template_hash: str
    ready: bool
    available: bool
    created: str  # RFC 3339; sorts chronologically as text


@dataclass(frozen=True)
class Plan:
    create: tuple[str, ...]
    delete: tuple[str, ...]
    restore: tuple[str, ...] = ()
    """Agents to create on an older template (a canary rolling back), not spec.template."""


def rollout_bounds(spec: FleetSpec) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) resolved against replicas; never both zero."""
    rolling = spec.strategy.rollingUpdate
    surge = parse_int_or_percent(rolling.maxSurge, spec.replicas, round_up=True)
    unavailable = parse_int_or_percent(rolling.maxUnavailable, spec.replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def least_useful_first(members: Sequence[Member]) -> list[Member]:
    """Scale-down order: not ready before ready, then newest before oldest."""
    newest_first = sorted(members, key=lambda m: (m.created, m.name), reverse=True)
    return sorted(newest_first, key=lambda m: m.ready)


def agent_name(fleet: str, template_hash: str, ordinal: int) -> str:
    return f"{fleet}-{template_hash[:5]}-{ordinal}"


def _new_names(fleet: str, template_hash: str, count: int, taken: set[str]) -> tuple[str, ...]:
    """Lowest free ordinals: deterministic names make a repeated create a 409, never a twin."""
    names: list[str] = []
    ordinal = 0
    while len(names) < count:
        name = agent_name(fleet, template_hash, ordinal)
        if name not in taken:
            names.append(name)
        ordinal += 1
    return tuple(names)


def plan(
    fleet: str,
    spec: FleetSpec,
    template_hash: str,
    members: Sequence[Member],
    taken_names: set[str],
) -> Plan:
    replicas = spec.replicas
    new = [m for m in members if m.template_hash == template_hash]
    old = [m for m in members if m.template_hash != template_hash]

    if not old:
        if len(new) < replicas:
            return Plan(_new_names(fleet, template_hash, replicas - len(new), taken_names), ())
        excess = least_useful_first(new)[: len(new) - replicas]
        return Plan((), tuple(m.name for m in excess))

    surge, max_unavailable = rollout_bounds(spec)
    to_create = max(0, min(replicas - len(new), replicas + surge - len(members)))
    min_available = replicas - max_unavailable
    available = sum(m.available for m in members)
    new_unavailable = sum(not m.available for m in new)
    budget = len(members) - min_available - new_unavailable
    deletes: list[str] = []
    if budget > 0:
        ordered = least_useful_first(old)
        unready = [m for m in ordered if not m.available]
        deletes += [m.name for m in unready[:budget]]
        room = min(budget - len(deletes), available - min_available)
        ready_old = [m for m in ordered if m.available]
        deletes += [m.name for m in ready_old[: max(0, room)]]
    # Excess new agents (replicas lowered mid-rollout) go too, least useful first.
    if len(new) > replicas:
        deletes += [m.name for m in least_useful_first(new)[: len(new) - replicas]]
    return Plan(_new_names(fleet, template_hash, to_create, taken_names), tuple(deletes))


def plan_targets(
    fleet: str,
    spec: FleetSpec,
    template_hash: str,
    targets: dict[str, int],
    members: Sequence[Member],
    taken_names: set[str],
) -> Plan:
    """Move toward ``targets`` Agents per template (others to zero) within the rolling
    bounds: create up to replicas + maxSurge in total (more only if the targets add up to
    more), and delete only while replicas - maxUnavailable stay available. Templates are
    served in the order of ``targets``: a canary names the one it grows first."""
    surge, max_unavailable = rollout_bounds(spec)
    ceiling = max(spec.replicas + surge, sum(targets.values()))
    room = max(0, ceiling - len(members))
    create: list[str] = []
    restore: list[str] = []
    taken = set(taken_names)
    for hash_, wanted in targets.items():
        have = sum(m.template_hash == hash_ for m in members)
        count = min(room, max(0, wanted - have))
        if count == 0:
            continue
        names = _new_names(fleet, hash_, count, taken)
        taken.update(names)
        room -= count
        (create if hash_ == template_hash else restore).extend(names)

    surplus: list[Member] = []
    for hash_ in {m.template_hash for m in members}:
        mine = [m for m in members if m.template_hash == hash_]
        extra = len(mine) - targets.get(hash_, 0)
        surplus += least_useful_first(mine)[: max(0, extra)]
    surplus_names = {m.name for m in surplus}
    min_available = spec.replicas - max_unavailable
    available = sum(m.available for m in members)
    kept_unavailable = sum(not m.available for m in members if m.name not in surplus_names)
    budget = len(members) - min_available - kept_unavailable
    deletes = [m.name for m in surplus if not m.available][: max(0, budget)]
    room_available = min(budget - len(deletes), available - min_available)
    deletes += [m.name for m in surplus if m.available][: max(0, room_available)]
    return Plan(tuple(create), tuple(deletes), tuple(restore))


def within_policy(spec: FleetSpec, existing: int, replica_limit: int | None) -> FleetSpec:
    """The spec to plan with under an enforced replica limit: never grow past the limit,
    never shrink because of it (Agents that run keep running; see compliance.py)."""
    if replica_limit is None or spec.replicas <= replica_limit:
        return spec
    return spec.model_copy(update={"replicas": max(replica_limit, min(existing, spec.replicas))})


def without_new_agents(decision: Plan, replicas: int, members: Sequence[Member]) -> Plan:
    """A plan for a template a Policy forbids: create nothing; delete only what is in
    excess of replicas (a rollout that cannot create must not remove old Agents)."""
    excess = len(members) - replicas
    if excess <= 0:
        return Plan((), ())
    return Plan((), tuple(m.name for m in least_useful_first(members)[:excess]))


def is_available(ready_since: str, min_ready_seconds: int, now: datetime) -> bool:
    if not ready_since:
        return False
    if min_ready_seconds == 0:
        return True
    since = datetime.fromisoformat(ready_since.replace("Z", "+00:00"))
    return (now - since).total_seconds() >= min_ready_seconds


def halted_condition(
    conditions: list[Condition], halt: Halt | None, generation: int
) -> list[Condition]:
    """Halted=True while the router's sentinel halts the fleet; Halted=False (Resumed) once
    it no longer does. A fleet never halted carries no Halted condition."""
    if halt is not None:
        reason = c.HALTED_BY_RULE.get(halt.rule, c.SENTINEL_BOUND_BREACHED)
        return set_condition(conditions, c.HALTED, "True", reason, halt.message, generation)
    if any(existing.type == c.HALTED for existing in conditions):
        return set_condition(
            conditions, c.HALTED, "False", c.RESUMED, "dispatch runs; no bound breached", generation
        )
    return conditions


def canary_conditions(
    conditions: list[Condition],
    canary: CanaryStatus | None,
    template_hash: str,
    complete: bool,
    generation: int,
) -> list[Condition]:
    """A canary of the current template says where it is (Progressing) or that it was
    aborted (Progressing=False and Stalled=True: kstatus and Argo CD read it as failed)."""
    if canary is None or canary.templateHash != template_hash:
        return _not_stalled(conditions, generation)
    if canary.phase == "Aborted":
        for type_ in (c.PROGRESSING, c.STALLED):
            status = "False" if type_ == c.PROGRESSING else "True"
            conditions = set_condition(
                conditions, type_, status, c.ROLLOUT_ABORTED, canary.message, generation
            )
        return set_condition(
            conditions, c.RECONCILING, "False", c.ROLLOUT_ABORTED, canary.message, generation
        )
    if not complete and canary.phase != "Promoted":
        for type_ in (c.PROGRESSING, c.RECONCILING):
            conditions = set_condition(
                conditions, type_, "True", c.CANARY_STEP, canary.message, generation
            )
    return _not_stalled(conditions, generation)


def _not_stalled(conditions: list[Condition], generation: int) -> list[Condition]:
    if any(existing.type == c.STALLED for existing in conditions):
        return set_condition(
            conditions, c.STALLED, "False", c.RECONCILED, "the rollout is not stuck", generation
        )
    return conditions


def fleet_status(
    spec: FleetSpec,
    current: FleetStatus,
    generation: int,
    template_hash: str,
    selector: str,
    members: Sequence[Member],
    policy: Compliance | None = None,
    halt: Halt | None = None,
    canary: CanaryStatus | None = None,
) -> FleetStatus:
    replicas = spec.replicas
    ready = sum(m.ready for m in members)
    available = sum(m.available for m in members)
    updated = sum(m.template_hash == template_hash for m in members)
    _, max_unavailable = rollout_bounds(spec)
    complete = updated == replicas == len(members) and available == replicas
    conditions: list[Condition] = list(current.conditions)

    if available >= replicas - max_unavailable:
        conditions = set_condition(
            conditions,
            c.AVAILABLE,
            "True",
            c.MINIMUM_AGENTS_AVAILABLE,
            f"{available} of {replicas} agents available",
            generation,
        )
    else:
        conditions = set_condition(
            conditions,
            c.AVAILABLE,
            "False",
            c.MINIMUM_AGENTS_UNAVAILABLE,
            f"{available} of {replicas} agents available, need {replicas - max_unavailable}",
            generation,
        )
    if complete:
        conditions = set_condition(
            conditions,
            c.PROGRESSING,
            "True",
            c.ROLLOUT_COMPLETE,
            f"all {replicas} agents run the current template",
            generation,
        )
        conditions = set_condition(
            conditions, c.RECONCILING, "False", c.RECONCILED, "desired state reached", generation
        )
    else:
        reason = (
            c.ROLLING_UPDATE
            if updated < len(members)
            else (
                c.SCALING_UP
                if len(members) < replicas
                else c.SCALING_DOWN
                if len(members) > replicas
                else c.WAITING_FOR_AGENTS
            )
        )
        message = (
            f"{updated} updated, {ready} ready, {available} available of {replicas} "
            f"desired ({len(members)} exist)"
        )
        conditions = set_condition(conditions, c.PROGRESSING, "True", reason, message, generation)
        conditions = set_condition(conditions, c.RECONCILING, "True", reason, message, generation)
    conditions = canary_conditions(conditions, canary, template_hash, complete, generation)
    held = policy is not None and (
        policy.blocked or (policy.replica_limit is not None and replicas > policy.replica_limit)
    )
    if policy is not None:
        if held and not complete:
            why = "held by policy: " + "; ".join(f.text() for f in policy.verdict.denials)
            conditions = set_condition(
                conditions, c.PROGRESSING, "False", c.BLOCKED_BY_POLICY, why, generation
            )
        conditions = policy.condition(conditions, generation)
    conditions = halted_condition(conditions, halt, generation)
    aborted = (
        canary is not None and canary.phase == "Aborted" and canary.templateHash == template_hash
    )
    if halt is not None:
        phase = "Halted"
    elif aborted:
        phase = "Degraded"
    elif complete:
        phase = c.AVAILABLE
    elif available < replicas - max_unavailable and updated == len(members) == replicas:
        phase = "Degraded"
    else:
        phase = "Progressing"
    return FleetStatus(
        phase=phase,
        replicas=len(members),
        readyReplicas=ready,
        updatedReplicas=updated,
        availableReplicas=available,
        selector=selector,
        currentTemplateHash=template_hash,
        observedGeneration=generation,
        conditions=conditions,
        queueDepth=current.queueDepth,
        stableTemplateHash=template_hash if complete else current.stableTemplateHash,
        canary=canary,
    )
