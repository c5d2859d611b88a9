"""Skills: what an agent does with a task of one capability. Plugins are found through
the ``agentarmy.skills`` entry-point group; each entry point names a factory that takes
the agent's settings and returns a :class:`Skill`."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, NoReturn, Protocol

from agentarmy.agent.settings import AgentSettings
from agentarmy.api import wire

ENTRY_POINT_GROUP = "agentarmy.skills"
log = logging.getLogger(__name__)

HandOff = Callable[[wire.SubmitTask], Awaitable[wire.SubmitResponse]]


class SkillFailed(Exception):
    """The skill could not do the task; ``retryable=False`` fails it without more attempts."""

    def __init__(
        self, message: str, retryable: bool = True, refused_by: wire.RefusedBy | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.refused_by = refused_by
        """The Policy rule that refused what the skill was about to do, if one did."""


class Parked(Exception):
    """The task now waits (for a person's decision, or for its children); the router holds
    it, the agent sends no result (its lease has ended) and takes other work."""


class Checkpoints(Protocol):
    """The task's stored state (with the router) and parking it for an approval."""

    async def save(self, checkpoint: dict[str, Any]) -> None:
        """Store ``checkpoint`` with the task (fenced by the lease); SkillFailed if refused."""

    async def park(self, request: ApprovalAsk) -> NoReturn:
        """Ask for a person's approval: the task is parked and Parked is raised."""

    async def wait_for(self, request: ChildrenAsk) -> NoReturn:
        """Start children and park the task until they end: Parked is raised. The task is
        run again (on any agent of its fleet) with ``TaskContext.children`` set."""


@dataclass(frozen=True)
class ApprovalAsk:
    tool: str
    arguments: dict[str, Any]
    tool_call_id: str
    reason: str
    checkpoint: dict[str, Any]


@dataclass(frozen=True)
class ChildrenAsk:
    tasks: list[wire.SubmitTask]
    join: wire.JoinMode
    checkpoint: dict[str, Any]


class Unparkable:
    """For contexts with no router (tests of a skill alone): nothing can wait."""

    async def save(self, checkpoint: dict[str, Any]) -> None:
        return None

    async def park(self, request: ApprovalAsk) -> NoReturn:
        raise SkillFailed(f"tool {request.tool} needs approval and no router can hold the task")

    async def wait_for(self, request: ChildrenAsk) -> NoReturn:
        raise SkillFailed("no router can hold the task while children run")


class TokenBudget(Protocol):
    """The fleet's token budgets, as the router counts them (reserve, then settle)."""

    async def reserve(self, tokens: int) -> None:
        """Count ``tokens`` before a model call; SkillFailed when the budget cannot afford it."""

    async def settle(self, reserved: int, used: int) -> None:
        """Correct the count once the call said what it used."""


class Unbudgeted:
    """For contexts with no router to ask (tests of a skill alone)."""

    async def reserve(self, tokens: int) -> None:
        return None

    async def settle(self, reserved: int, used: int) -> None:
        return None


@dataclass
class SkillResult:
    output: dict[str, Any]
    usage: wire.TokenUsage | None = None


@dataclass
class TaskContext:
    """What a skill sees of the task and of the agent running it."""

    task_id: str
    attempt: int
    input: dict[str, Any]
    trace_id: str
    settings: AgentSettings
    hand_off: HandOff
    tools: Mapping[str, Skill] = field(default_factory=dict)
    """Skills this task may call as tools (the llm skill's function calls)."""
    tool_rules: wire.ToolRules | None = None
    """The fleet's Policy tool rules, from the lease; every tool call is judged by them."""
    budget: TokenBudget = field(default_factory=Unbudgeted)
    checkpoints: Checkpoints = field(default_factory=Unparkable)
    approval: wire.Approval | None = None
    """On a resume after an approval: the request and its decision."""
    checkpoint: dict[str, Any] | None = None
    """On a resume: the state the skill stored (the conversation so far)."""
    children: list[wire.ChildOutcome] | None = None
    """On a resume after children ended: each child's phase, result and error, in order."""

    async def spawn(
        self,
        tasks: list[wire.SubmitTask],
        join: wire.JoinMode = "all",
        checkpoint: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Start ``tasks`` as children and park this task until they end (``failFast``: or
        the first fails); the skill runs again later with ``children`` and ``checkpoint``."""
        await self.checkpoints.wait_for(ChildrenAsk(tasks, join, checkpoint or {}))


class Skill(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the skill's input, offered to models when the skill is a tool."""

    async def run(self, ctx: TaskContext) -> SkillResult: ...


SkillFactory = Callable[[AgentSettings], Skill]


def available_factories() -> dict[str, SkillFactory]:
    factories: dict[str, SkillFactory] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            factories[entry.name] = entry.load()
        except Exception:  # one broken plugin must not take the agent down
            log.exception("cannot load skill plugin %s (%s)", entry.name, entry.value)
    return factories


def load_skills(
    settings: AgentSettings, factories: Mapping[str, SkillFactory] | None = None
) -> dict[str, Skill]:
    """capability -> skill instance; ValueError names capabilities no plugin serves."""
    factories = dict(factories if factories is not None else available_factories())
    missing = sorted({settings.skill_for(c) for c in settings.capabilities} - set(factories))
    if missing:
        raise ValueError(
            f"no skill plugin named {', '.join(missing)} (installed: {', '.join(sorted(factories))})"
        )
    instances: dict[str, Skill] = {}
    by_capability = {}
    for capability in settings.capabilities:
        skill_name = settings.skill_for(capability)
        if skill_name not in instances:
            instances[skill_name] = factories[skill_name](settings)
        by_capability[capability] = instances[skill_name]
    return by_capability


def allowed(name: str, patterns: list[str]) -> bool:
    """Is tool ``name`` allowed by the agent's tool list (globs, '*' suffix = prefix)?"""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def tool_skills(
    settings: AgentSettings, factories: Mapping[str, SkillFactory] | None = None
) -> dict[str, Skill]:
    """Skills the agent may call as tools: installed plugins its allow-list names (never llm)."""
    factories = dict(factories if factories is not None else available_factories())
    return {
        name: factory(settings)
        for name, factory in factories.items()
        if name != "llm" and allowed(name, settings.allowed_tools)
    }
