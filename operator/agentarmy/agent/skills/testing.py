"""test: a skill that behaves as asked, for tests and fault drills.

Input (all optional): ``sleep`` seconds; ``fail`` (message) to fail every attempt, or
``failAttempts`` N to fail attempts 1..N only; ``retryable`` (default true);
``crash`` to kill the whole agent process mid-task (exit 137, like SIGKILL);
``handOff`` {fleet, capability, input} to submit a subtask; ``output`` to return.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import SkillFailed, SkillResult, TaskContext
from agentarmy.api import wire


class TestSkill:
    __test__ = False  # not a pytest class
    name = "test"
    description = "Sleep, fail or crash on request (for tests)."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "sleep": {"type": "number", "minimum": 0},
            "fail": {"type": "string"},
            "failAttempts": {"type": "integer", "minimum": 0},
            "retryable": {"type": "boolean"},
            "output": {"type": "object"},
        },
    }

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, ctx: TaskContext) -> SkillResult:
        spec = ctx.input
        if spec.get("crash"):
            os._exit(137)
        sleep = float(spec.get("sleep", 0) or 0)
        if sleep > 0:
            await asyncio.sleep(sleep)
        retryable = bool(spec.get("retryable", True))
        if spec.get("fail"):
            raise SkillFailed(str(spec["fail"]), retryable=retryable)
        if ctx.attempt <= int(spec.get("failAttempts", 0) or 0):
            raise SkillFailed(f"failing attempt {ctx.attempt} on request", retryable=retryable)
        output: dict[str, Any] = {"attempt": ctx.attempt, "agent": self.settings.name}
        if isinstance(spec.get("handOff"), dict):
            child = wire.SubmitTask(namespace=self.settings.namespace, **spec["handOff"])
            submitted = await ctx.hand_off(child)
            output["handedOff"] = submitted.task.id
        if isinstance(spec.get("output"), dict):
            output.update(spec["output"])
        return SkillResult(output=output)
