"""echo: returns its input. The smallest useful skill (and a no-op for benchmarks)."""

from __future__ import annotations

from typing import Any

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import SkillResult, TaskContext


class EchoSkill:
    name = "echo"
    description = "Return the input unchanged."
    parameters: dict[str, Any] = {"type": "object", "additionalProperties": True}

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, ctx: TaskContext) -> SkillResult:
        return SkillResult(output={"echo": ctx.input})
