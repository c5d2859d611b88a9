"""Routing by results: a score and a circuit breaker per agent, as pure logic (no I/O).

The dispatcher asks :meth:`Routing.admit` before it serves a claim and tells
:meth:`Routing.granted` what it leased; the service tells :meth:`Routing.record` how each
attempt ended. From those outcomes:

- **Score.** Per agent, a success rate and a latency (of successful attempts), each decayed
  exponentially in time (``half_life_seconds``) and pulled towards a prior of success, so an
  agent nobody has heard from for a while drifts back to a clean slate. Its *weight* is its
  success rate relative to its fleet's (the same workload: a task that fails everywhere
  penalizes no agent), raised to ``sharpness``, times a milder speed factor, and never below
  ``exploration``: however bad an agent was, it keeps that share of a healthy agent's
  traffic, so its recovery shows in its results and it earns its traffic back.
- **Preference.** Among waiting agents the dispatcher still serves the least loaded first,
  then the better weight. An agent of weight w < 1 is also paced: after a grant of n tasks
  it waits n x (fleet latency) / (w x concurrency) before the next, i.e. it runs at about w
  of a healthy agent's rate even when the queue is full and every agent is asking.
- **Circuit breaker.** ``failures_to_trip`` failed attempts in a row open the agent's
  breaker: no new task for ``cooldown_seconds``, then half-open: one probe task. The probe
  succeeding closes the breaker; failing re-opens it for twice the previous cool-down (up to
  ``max_cooldown_seconds``). At most ``max_open_share`` of a fleet's agents (at least one)
  are held open at once, as Envoy's outlier detection caps ejections.

Capability, priority, concurrency and fleet boundaries are the store's and the dispatcher's;
nothing here widens them. This is **soft state per router replica**: it lives in memory, is
lost on restart and rebuilt from the outcomes that follow; with several replicas (NATS) each
learns from every outcome (its own and, through the store's watch, the others') but paces
and probes only the claims it serves.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo, BreakerState, Task
from agentarmy.router.governance import counts_for_sentinel
from agentarmy.router.lifecycle import agent_id

RoutingMode = Literal["results", "least-loaded"]
ROUTING_ENV = "AGENTARMY_ROUTING"
"""Environment variable of the router: ``results`` (default) or ``least-loaded``."""
FleetKey = tuple[str, str]

_RECENT_MARKS = 64
"""Ended attempts remembered per agent, so one heard twice (a replica's watch) counts once."""
_PRUNE_EVERY = 4096
"""Outcomes between sweeps of agents not heard from for a long time."""


def mode_from_env(env: Mapping[str, str]) -> RoutingMode:
    """The routing mode in ``AGENTARMY_ROUTING``; ValueError names the variable."""
    raw = env.get(ROUTING_ENV, "").strip() or "results"
    modes: tuple[str, ...] = get_args(RoutingMode)
    if raw not in modes:
        raise ValueError(f"{ROUTING_ENV}={raw!r} is not a routing mode: use {' or '.join(modes)}")
    return cast(RoutingMode, raw)


@dataclass(frozen=True)
class RoutingSettings:
    mode: RoutingMode = "results"
    """``least-loaded`` turns routing by results off: scores are still shown, never used."""
    half_life_seconds: float = 60.0
    """An outcome counts half as much after this long."""
    prior_successes: float = 2.0
    """Pseudo-outcomes of success every agent starts with (and decays back to)."""
    tolerance: float = 0.05
    """Success-rate shortfall against the fleet's that costs nothing (noise)."""
    latency_tolerance: float = 1.5
    """Latency up to this multiple of the fleet's mean costs nothing (noise, queueing)."""
    sharpness: float = 4.0
    """Exponent on the relative success rate: how hard a worse agent is pushed back."""
    exploration: float = 0.05
    """The least weight an agent keeps (its share of a healthy agent's traffic)."""
    failures_to_trip: int = 3
    """Failed attempts in a row that open the agent's breaker."""
    cooldown_seconds: float = 10.0
    """How long a freshly opened breaker gives the agent no task (doubles per failed probe)."""
    max_cooldown_seconds: float = 120.0
    """Cap on the cool-down, on a pacing pause, and on how long a probe may stay unanswered."""
    max_open_share: float = 0.5
    """Fraction of a fleet's agents whose breakers may be open at once (at least one)."""

    def __post_init__(self) -> None:
        if self.mode not in get_args(RoutingMode):
            raise ValueError(f"routing mode {self.mode!r}: use results or least-loaded")
        for name in ("half_life_seconds", "cooldown_seconds", "max_cooldown_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"routing {name} must be > 0")
        if not 0 < self.exploration <= 1:
            raise ValueError("routing exploration must be in (0, 1]")
        if self.failures_to_trip < 1:
            raise ValueError("routing failures_to_trip must be >= 1")


@dataclass
class _Decayed:
    """Sums that lose half their weight every half-life (read and written at a time ``now``)."""

    weight: float = 0.0
    total: float = 0.0
    at: float = 0.0

    def decay(self, now: float, half_life: float) -> None:
        if now > self.at:
            factor = 0.5 ** ((now - self.at) / half_life)
            self.weight *= factor
            self.total *= factor
        self.at = max(self.at, now)

    def add(self, value: float, now: float, half_life: float) -> None:
        self.decay(now, half_life)
        self.weight += 1.0
        self.total += value


@dataclass
class _Fleet:
    outcomes: _Decayed = field(default_factory=_Decayed)
    """total: successes."""
    latency: _Decayed = field(default_factory=_Decayed)
    """total: seconds of successful attempts."""
    agents: set[str] = field(default_factory=set)


@dataclass
class _Agent:
    holder: str
    """namespace/name, as the store counts leases."""
    fleet: FleetKey
    outcomes: _Decayed = field(default_factory=_Decayed)
    latency: _Decayed = field(default_factory=_Decayed)
    failures_in_a_row: int = 0
    breaker: BreakerState = "closed"
    open_until: float = 0.0
    trips: int = 0
    """Consecutive openings without a successful probe (sets the cool-down)."""
    probe: tuple[str, int] | None = None
    """(task id, attempt) of the half-open breaker's probe, while it runs."""
    probe_since: float = 0.0
    next_grant: float = 0.0
    """Pacing: no grant before this time."""
    penalized: bool = False
    """Weight below 1 or breaker not closed at the last look (else the fast path: weight 1)."""
    recent: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=_RECENT_MARKS))


@dataclass(frozen=True)
class Admission:
    tasks: int
    """How many tasks the agent may be given now (0: none)."""
    hold_seconds: float
    """When ``tasks`` is 0: how long until asking again is worthwhile."""


@dataclass(frozen=True)
class BreakerTransition:
    namespace: str
    fleet: str
    agent: str
    before: BreakerState
    after: BreakerState
    reason: str
    failuresInARow: int
    cooldownSeconds: float
    taskId: str = ""


@dataclass(frozen=True)
class AgentScore:
    score: float
    successRate: float
    latencySeconds: float
    breaker: BreakerState


class Routing:
    """Scores and breakers of the agents one router replica has heard of."""

    def __init__(
        self,
        settings: RoutingSettings | None = None,
        on_transition: Callable[[BreakerTransition], None] = lambda transition: None,
        under_canary: Callable[[str, str, str], bool] = lambda ns, fleet, template: False,
    ) -> None:
        """``under_canary(namespace, fleet, template hash)``: a canary rollout is judging
        that template. Its agents get their share whatever their record (no pacing, no
        breaker): the canary's verdict needs the evidence, and it aborts a bad template."""
        self.settings = settings or RoutingSettings()
        self.on_transition = on_transition
        self.under_canary = under_canary
        self._agents: dict[str, _Agent] = {}
        self._fleets: dict[FleetKey, _Fleet] = {}
        self._recorded = 0

    @property
    def enabled(self) -> bool:
        return self.settings.mode == "results"

    # -- outcomes ---------------------------------------------------------------------------

    def record(self, task: Task, now: float) -> None:
        """Learn from the attempt of ``task`` that just ended (others' changes are ignored)."""
        last = task.attempts[-1] if task.attempts else None
        if last is None or last.outcome is None or not last.agent:
            return
        key = (task.namespace, task.fleet)
        agent = self._agent(last.agent, key)
        mark = (task.id, last.number)
        if mark in agent.recent:
            return
        agent.recent.append(mark)
        verdict = counts_for_sentinel(task)
        if verdict is None:  # released or cancelled: says nothing, but ends a probe
            if agent.probe == mark:
                agent.probe = None
            return
        failed = verdict[1]
        half_life = self.settings.half_life_seconds
        fleet = self._fleets[key]
        agent.outcomes.add(0.0 if failed else 1.0, now, half_life)
        fleet.outcomes.add(0.0 if failed else 1.0, now, half_life)
        if not failed and last.endedAt is not None:
            duration = max(0.0, last.endedAt - last.startedAt)
            agent.latency.add(duration, now, half_life)
            fleet.latency.add(duration, now, half_life)
        if self.enabled and not self.under_canary(key[0], key[1], last.templateHash):
            self._judge(agent, failed, mark, now)
        agent.penalized = agent.breaker != "closed" or self._weight(agent, now) < 1.0
        self._recorded += 1
        if self._recorded % _PRUNE_EVERY == 0:
            self._prune(now)

    def _judge(self, agent: _Agent, failed: bool, mark: tuple[str, int], now: float) -> None:
        """The breaker's moves on one counted outcome."""
        agent.failures_in_a_row = agent.failures_in_a_row + 1 if failed else 0
        probe_ended = agent.breaker == "half-open" and agent.probe == mark
        if probe_ended and not failed:
            agent.probe = None
            agent.trips = 0
            self._move(agent, "closed", "the probe task succeeded", mark[0])
        elif probe_ended:
            agent.probe = None
            self._open(agent, now, "the probe task failed", mark[0])
        elif (
            agent.breaker == "closed"
            and agent.failures_in_a_row >= self.settings.failures_to_trip
            and self._may_open(agent)
        ):
            self._open(agent, now, f"{agent.failures_in_a_row} failed attempts in a row", mark[0])

    def _open(self, agent: _Agent, now: float, reason: str, task_id: str) -> None:
        agent.trips += 1
        cooldown = self._cooldown(agent)
        agent.open_until = now + cooldown
        self._move(agent, "open", reason, task_id)

    def _cooldown(self, agent: _Agent) -> float:
        settings = self.settings
        doubled = settings.cooldown_seconds * 2.0 ** max(0, agent.trips - 1)
        return min(settings.max_cooldown_seconds, doubled)

    def _may_open(self, agent: _Agent) -> bool:
        """Envoy's max_ejection_percent: never hold more than a share of a fleet back."""
        members = self._fleets[agent.fleet].agents
        held = sum(1 for a in members if self._agents[a].breaker != "closed")
        return held < max(1, math.floor(self.settings.max_open_share * len(members)))

    def _move(self, agent: _Agent, after: BreakerState, reason: str, task_id: str = "") -> None:
        before, agent.breaker = agent.breaker, after
        agent.penalized = True
        self.on_transition(
            BreakerTransition(
                namespace=agent.fleet[0],
                fleet=agent.fleet[1],
                agent=agent.holder.partition("/")[2],
                before=before,
                after=after,
                reason=reason,
                failuresInARow=agent.failures_in_a_row,
                cooldownSeconds=round(self._cooldown(agent), 3) if after == "open" else 0.0,
                taskId=task_id,
            )
        )

    # -- dispatch ---------------------------------------------------------------------------

    def admit(self, info: AgentInfo, max_tasks: int, now: float) -> Admission:
        """How many tasks the agent may be given now (it asked for ``max_tasks``)."""
        agent = self._limited(info)
        if agent is None:
            return Admission(max_tasks, 0.0)
        self._refresh(agent, now)
        if agent.breaker == "open":
            return Admission(0, agent.open_until - now)
        if agent.breaker == "half-open":
            if agent.probe is not None:  # one probe at a time; look again shortly
                return Admission(0, min(1.0, self.settings.cooldown_seconds))
            return Admission(1, 0.0)
        if now < agent.next_grant:
            return Admission(0, agent.next_grant - now)
        weight = self._weight(agent, now)
        agent.penalized = weight < 1.0
        return Admission(max(1, math.floor(weight * max_tasks)), 0.0)

    def may_receive(self, info: AgentInfo, now: float) -> bool:
        """May a waiting agent be given a task now (its breaker may have opened meanwhile)?"""
        return self.admit(info, 1, now).tasks > 0

    def granted(self, info: AgentInfo, tasks: list[Task], now: float) -> None:
        """The dispatcher leased ``tasks`` to the agent: start a probe, or pace the next grant."""
        agent = self._limited(info)
        if agent is None or not tasks:
            return
        if agent.breaker == "half-open" and agent.probe is None:
            agent.probe = (tasks[0].id, tasks[0].attempt)
            agent.probe_since = now
            return
        weight = self._weight(agent, now)
        latency = self._mean(self._fleets[agent.fleet].latency, now)
        if weight < 1.0 and latency > 0:
            pause = len(tasks) * latency / (weight * max(1, info.concurrency))
            agent.next_grant = now + min(pause, self.settings.max_cooldown_seconds)

    def weight(self, info: AgentInfo, now: float) -> float:
        """The agent's weight in (0, 1]; 1 for an agent with nothing against it."""
        agent = self._limited(info)
        return 1.0 if agent is None else self._weight(agent, now)

    def _limited(self, info: AgentInfo) -> _Agent | None:
        """The agent's record, when it limits the agent: routing by results is on,
        something is held against the agent, and no canary is judging its template."""
        agent = self._agents.get(agent_id(info.namespace, info.name))
        if not self.enabled or agent is None or not agent.penalized:
            return None
        if self.under_canary(info.namespace, info.fleet, info.templateHash):
            return None
        return agent

    # -- reading ----------------------------------------------------------------------------

    def score(self, namespace: str, name: str, now: float) -> AgentScore:
        agent = self._agents.get(agent_id(namespace, name))
        if agent is None:
            return AgentScore(1.0, 1.0, 0.0, "closed")
        self._refresh(agent, now)
        return AgentScore(
            score=round(self._weight(agent, now), 4),
            successRate=round(self._success_rate(agent.outcomes, now), 4),
            latencySeconds=round(self._mean(agent.latency, now), 4),
            breaker=agent.breaker,
        )

    def annotate(self, fleet: wire.FleetStats, now: float) -> None:
        """Fill in each agent's score and breaker in the fleet's stats."""
        for stats in fleet.agents:
            found = self.score(fleet.namespace, stats.name, now)
            stats.score = found.score
            stats.successRate = found.successRate
            stats.latencySeconds = found.latencySeconds
            stats.breaker = found.breaker

    # -- internals --------------------------------------------------------------------------

    def _agent(self, holder: str, key: FleetKey) -> _Agent:
        agent = self._agents.get(holder)
        if agent is None:
            agent = self._agents[holder] = _Agent(holder, key)
        fleet = self._fleets.get(key)
        if fleet is None:
            fleet = self._fleets[key] = _Fleet()
        fleet.agents.add(holder)
        return agent

    def _refresh(self, agent: _Agent, now: float) -> None:
        """Time-driven moves: the cool-down ran out (half-open); a probe never answered."""
        if agent.breaker == "open" and now >= agent.open_until:
            self._move(agent, "half-open", "cool-down over: one probe task")
        stale_probe = now - agent.probe_since > self.settings.max_cooldown_seconds
        if agent.breaker == "half-open" and agent.probe is not None and stale_probe:
            agent.probe = None

    def _success_rate(self, sums: _Decayed, now: float) -> float:
        sums.decay(now, self.settings.half_life_seconds)
        prior = self.settings.prior_successes
        return (sums.total + prior) / (sums.weight + prior)

    def _mean(self, sums: _Decayed, now: float) -> float:
        sums.decay(now, self.settings.half_life_seconds)
        return sums.total / sums.weight if sums.weight > 1e-9 else 0.0

    def _weight(self, agent: _Agent, now: float) -> float:
        settings = self.settings
        fleet = self._fleets[agent.fleet]
        own = self._success_rate(agent.outcomes, now)
        reference = self._success_rate(fleet.outcomes, now)
        relative: float = min(1.0, (own + settings.tolerance) / reference) ** settings.sharpness
        latency, usual = self._mean(agent.latency, now), self._mean(fleet.latency, now)
        tolerated = usual * settings.latency_tolerance
        speed = min(1.0, math.sqrt(tolerated / latency)) if latency > 0 and usual > 0 else 1.0
        return max(settings.exploration, relative * speed)

    def _prune(self, now: float) -> None:
        """Forget agents not heard from for 20 half-lives (gone, or back at the prior)."""
        horizon = now - 20 * self.settings.half_life_seconds
        for holder, agent in list(self._agents.items()):
            if agent.outcomes.at < horizon and agent.breaker == "closed":
                del self._agents[holder]
                self._fleets[agent.fleet].agents.discard(holder)
