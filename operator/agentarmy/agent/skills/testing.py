"""test: a skill that behaves as asked, for tests and fault drills.

Input (all optional): ``sleep`` seconds; ``fail`` (message) to fail every attempt, or
``failAttempts`` N to fail attempts 1..N only; ``retryable`` (default true);
``crash`` to kill the whole agent process mid-task (exit 137, like SIGKILL);
``handOff`` {fleet, capability, input} to submit a subtask; ``fanOut`` {fleet, capability,
inputs: [...], join: all|failFast} to start one child per input and wait for them (the
result then lists each child's phase, result and error); ``output`` to return.

``TEST_SKILL_FAIL`` in the Agent's env (its template's ``env``) makes every task of that
Agent fail, retryably, with that message: a broken template, for canary drills.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import SkillFailed, SkillResult, TaskContext
from agentarmy.api import wire

BROKEN_TEMPLATE_ENV = "TEST_SKILL_FAIL"


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
        broken = os.environ.get(BROKEN_TEMPLATE_ENV)
        if broken:
            raise SkillFailed(broken, retryable=True)
        if spec.get("fail"):
            raise SkillFailed(str(spec["fail"]), retryable=retryable)
        if ctx.attempt <= int(spec.get("failAttempts", 0) or 0):
            raise SkillFailed(f"failing attempt {ctx.attempt} on request", retryable=retryable)
        fan_out = spec.get("fanOut")
        if isinstance(fan_out, dict) and ctx.children is None:
            await ctx.spawn(_children(self.settings.namespace, fan_out), fan_out.get("join", "all"))
        output: dict[str, Any] = {"attempt": ctx.attempt, "agent": self.settings.name}
        if ctx.children is not None:
            output["children"] = [
                {"phase": c.phase, "result": c.result, "error": c.error} for c in ctx.children
            ]
        if isinstance(spec.get("handOff"), dict):
            child = wire.SubmitTask(namespace=self.settings.namespace, **spec["handOff"])
            submitted = await ctx.hand_off(child)
            output["handedOff"] = submitted.task.id
        if isinstance(spec.get("output"), dict):
            output.update(spec["output"])
        return SkillResult(output=output)


def _children(namespace: str, fan_out: dict[str, Any]) -> list[wire.SubmitTask]:
    try:
        return [
            wire.SubmitTask(
                namespace=namespace,
                fleet=fan_out["fleet"],
                capability=fan_out["capability"],
                input=child_input,
                maxAttempts=int(fan_out.get("maxAttempts", 3)),
            )
            for child_input in fan_out.get("inputs", [])
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise SkillFailed(f"bad fanOut: {error}", retryable=False) from error
