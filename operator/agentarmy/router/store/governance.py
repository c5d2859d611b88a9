"""Where runtime-rule state lives: each fleet's rules and halt, submission buckets and
token-budget counters. Durable like tasks, and shared by every replica on one store.

Each task store owns one of these (``TaskStore.governance``), on the same database or
NATS connection. The arithmetic is :mod:`agentarmy.router.governance`'s; a backend
applies it under its own concurrency control, so a limit holds across replicas.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agentarmy.api.rules import FleetRules, Halt
from agentarmy.router.governance import RateLimit

FleetKey = tuple[str, str]


@dataclass(frozen=True)
class Change:
    """Another replica changed a fleet's rules or halt (None: removed)."""

    key: FleetKey
    rules: FleetRules | None = None
    halt: Halt | None = None
    what: str = "rules"
    """``rules`` or ``halt``."""


@dataclass(frozen=True)
class BudgetCount:
    ok: bool
    used: int
    """Tokens counted in the window after this change (or as it was, when refused)."""


class GovernanceState(abc.ABC):
    def __init__(self) -> None:
        self.listener: Callable[[Change], None] | None = None

    @abc.abstractmethod
    async def open(self) -> None: ...

    async def close(self) -> None:
        return None

    @abc.abstractmethod
    async def load(self) -> tuple[dict[FleetKey, FleetRules], dict[FleetKey, Halt]]:
        """Every fleet's rules and every halt, as stored."""

    @abc.abstractmethod
    async def replace_rules(
        self, rules: Mapping[str, Sequence[FleetRules]], namespaces: Sequence[str] | None
    ) -> None:
        """Make the stored rules of ``namespaces`` (None: of every namespace) equal to
        ``rules``; fleets of those namespaces not in ``rules`` lose theirs."""

    @abc.abstractmethod
    async def halt(self, halt: Halt) -> Halt:
        """Record a halt unless the fleet is halted already; the halt in force."""

    @abc.abstractmethod
    async def clear_halt(self, key: FleetKey) -> Halt | None:
        """Remove the fleet's halt; the one removed, if any."""

    @abc.abstractmethod
    async def take_submissions(
        self, key: FleetKey, count: int, limit: RateLimit, now: float
    ) -> float:
        """Take ``count`` from the fleet's bucket: 0.0 when granted, else seconds to wait."""

    @abc.abstractmethod
    async def count_tokens(self, counter: str, tokens: int, limit: int | None) -> BudgetCount:
        """Add ``tokens`` (may be negative: a reservation settled lower) to a budget counter;
        with ``limit``, only if the sum stays within it."""

    @abc.abstractmethod
    async def tokens_counted(self, counter: str) -> int: ...
