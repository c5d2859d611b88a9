"""llm: a chat-completions loop against any OpenAI-compatible endpoint, with tool calling.

Input: ``prompt`` (or ``messages``), optional ``system``, ``tools`` (names to offer;
default: every tool the agent may use), ``maxTurns`` (8) and ``maxTokens`` (per reply).
Tools are the agent's other skills plus ``handoff`` (a subtask to another fleet),
filtered by the agent's allowed-tools list; a call to anything else is answered with
an error message to the model, never run. Token usage of every turn is summed into
the result's usage (with its cost, when the Agent's model has pricing).

Policy at run time: before every model call the skill reserves the call's tokens with
the router (the prompt, estimated, plus the reply's max tokens, which it always sends),
and stops when the fleet's token budget cannot afford it; after the call it settles
the reservation with the usage the model reported. A tool call is judged by the tool
rules the lease carries: a tool the fleet's Policies do not allow fails the task,
naming the policy and rule.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import Skill, SkillFailed, SkillResult, TaskContext, allowed
from agentarmy.api import wire
from agentarmy.logs import log_fields
from agentarmy.policy.effective import tool_decision

HANDOFF_TOOL = "handoff"
DEFAULT_MAX_TOKENS = 1024
"""Reply cap when neither the Agent nor the task sets one: a reservation needs a bound."""
CHARS_PER_TOKEN = 3
"""For estimating a prompt's tokens before the call (English text runs about 4)."""
decision_log = logging.getLogger("agentarmy.agent.decisions")
HANDOFF_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "fleet": {"type": "string", "description": "Fleet that should do the subtask"},
        "capability": {"type": "string"},
        "input": {"type": "object"},
    },
    "required": ["fleet", "capability"],
}


class LlmSkill:
    name = "llm"
    description = "Ask a language model, letting it call the agent's allowed tools."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "system": {"type": "string"},
            "messages": {"type": "array"},
            "tools": {"type": "array", "items": {"type": "string"}},
            "maxTurns": {"type": "integer", "minimum": 1, "maximum": 32},
            "maxTokens": {"type": "integer", "minimum": 1, "maximum": 1000000},
        },
    }

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, ctx: TaskContext) -> SkillResult:
        if not self.settings.model_endpoint:
            raise SkillFailed("the agent has no model endpoint configured", retryable=False)
        messages = _initial_messages(ctx.input)
        offered = self._offered_tools(ctx)
        usage = wire.TokenUsage()
        calls: list[dict[str, Any]] = []
        max_turns = int(ctx.input.get("maxTurns", 8))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            for turn in range(1, max_turns + 1):
                reply = await self._budgeted_call(ctx, session, messages, offered)
                usage = _add_usage(usage, reply.get("usage") or {}, self.settings.model_pricing)
                choice = (reply.get("choices") or [{}])[0]
                message = choice.get("message") or {}
                messages.append(message)
                tool_calls = message.get("tool_calls") or []
                if not tool_calls:
                    return SkillResult(
                        output={
                            "content": message.get("content") or "",
                            "toolCalls": calls,
                            "turns": turn,
                            "finishReason": choice.get("finish_reason", ""),
                        },
                        usage=usage,
                    )
                for call in tool_calls:
                    content, record = await self._call_tool(ctx, call)
                    calls.append(record)
                    messages.append(
                        {"role": "tool", "tool_call_id": call.get("id", ""), "content": content}
                    )
        raise SkillFailed(f"the model was still calling tools after {max_turns} turns")

    def _max_tokens(self, ctx: TaskContext) -> int:
        wanted = ctx.input.get("maxTokens")
        cap = self.settings.model_max_output_tokens
        if isinstance(wanted, int) and wanted > 0:
            return min(wanted, cap) if cap else wanted
        return cap or DEFAULT_MAX_TOKENS

    async def _budgeted_call(
        self,
        ctx: TaskContext,
        session: aiohttp.ClientSession,
        messages: list[dict[str, Any]],
        tools: Mapping[str, Skill | None],
    ) -> dict[str, Any]:
        """One model call inside a reservation: overshoot is bounded by the prompt estimate."""
        max_tokens = self._max_tokens(ctx)
        prompt = json.dumps(messages) + json.dumps(sorted(tools))
        reserved = len(prompt) // CHARS_PER_TOKEN + max_tokens
        await ctx.budget.reserve(reserved)
        used = reserved  # if the call fails, the reservation stands: the count errs high
        try:
            reply = await self._complete(session, messages, tools, max_tokens)
            reported = reply.get("usage") or {}
            used = int(reported.get("total_tokens", 0) or 0) or (
                int(reported.get("prompt_tokens", 0) or 0)
                + int(reported.get("completion_tokens", 0) or 0)
            )
            return reply
        finally:
            await ctx.budget.settle(reserved, used)

    def _offered_tools(self, ctx: TaskContext) -> dict[str, Skill | None]:
        names = {*ctx.tools, HANDOFF_TOOL}
        wanted = ctx.input.get("tools")
        if isinstance(wanted, list):
            names &= {str(n) for n in wanted}
        offered: dict[str, Skill | None] = {}
        for name in sorted(names):
            if allowed(name, self.settings.allowed_tools):
                offered[name] = ctx.tools.get(name)
        return offered

    async def _complete(
        self,
        session: aiohttp.ClientSession,
        messages: list[dict[str, Any]],
        tools: Mapping[str, Skill | None],
        max_tokens: int,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model_name,
            "messages": messages,
            "max_tokens": max_tokens,
        }
        if tools:
            body["tools"] = [_tool_schema(name, skill) for name, skill in tools.items()]
        if self.settings.model_temperature is not None:
            body["temperature"] = self.settings.model_temperature
        headers = {}
        if self.settings.model_api_key:
            headers["Authorization"] = f"Bearer {self.settings.model_api_key}"
        url = self.settings.model_endpoint.rstrip("/") + "/chat/completions"
        try:
            async with session.post(url, json=body, headers=headers) as response:
                text = await response.text()
                if response.status == 429 or response.status >= 500:
                    raise SkillFailed(f"model endpoint answered {response.status}: {text[:300]}")
                if response.status >= 400:
                    raise SkillFailed(
                        f"model endpoint refused the request ({response.status}): {text[:300]}",
                        retryable=False,
                    )
                reply: dict[str, Any] = json.loads(text)
                return reply
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise SkillFailed(f"model endpoint failed: {type(error).__name__}: {error}") from error

    async def _call_tool(
        self, ctx: TaskContext, call: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        function = call.get("function") or {}
        name = str(function.get("name", ""))
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = None
        record: dict[str, Any] = {"name": name, "arguments": arguments, "ok": False}
        if not isinstance(arguments, dict):
            return json.dumps({"error": "arguments must be a JSON object"}), record
        self._judge_by_policy(ctx, name)
        if not allowed(name, self.settings.allowed_tools) or (
            name != HANDOFF_TOOL and name not in ctx.tools
        ):
            return json.dumps({"error": f"tool {name!r} is not allowed for this agent"}), record
        try:
            output = await self._run_tool(ctx, name, arguments)
        except SkillFailed as error:
            return json.dumps({"error": str(error)}), record
        record["ok"] = True
        return json.dumps(output), record

    async def _run_tool(
        self, ctx: TaskContext, name: str, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        if name == HANDOFF_TOOL:
            try:
                child = wire.SubmitTask(namespace=self.settings.namespace, **arguments)
            except ValueError as error:
                raise SkillFailed(f"bad hand-off: {error}") from error
            submitted = await ctx.hand_off(child)
            return {"taskId": submitted.task.id, "fleet": child.fleet}
        sub_context = TaskContext(
            task_id=ctx.task_id,
            attempt=ctx.attempt,
            input=arguments,
            trace_id=ctx.trace_id,
            settings=ctx.settings,
            hand_off=ctx.hand_off,
        )
        result = await ctx.tools[name].run(sub_context)
        return result.output


    def _judge_by_policy(self, ctx: TaskContext, tool: str) -> None:
        """Refuse a tool the fleet's Policies do not allow: the task fails, naming the rule.
        (The runtime is ours; admission's image allow-list keeps foreign runtimes out.)"""
        rules = ctx.tool_rules
        if rules is None:
            return
        decision = tool_decision(
            [(entry.policy, entry.globs) for entry in rules.allowedTools],
            [(entry.tool, entry.policy) for entry in rules.approvalTools],
            tool,
        )
        if decision.allowed:
            return
        finding = decision.finding
        assert finding is not None
        message = f"policy {finding.policy}, rule {finding.rule}: {finding.message}"
        log_fields(
            decision_log,
            "tool-refused",
            {
                "event": "tool-refused",
                "taskId": ctx.task_id,
                "traceId": ctx.trace_id,
                "attempt": ctx.attempt,
                "agent": f"{self.settings.namespace}/{self.settings.name}",
                "tool": tool,
                "policy": finding.policy,
                "rule": finding.rule,
            },
        )
        raise SkillFailed(message, retryable=False)


def _initial_messages(task_input: Mapping[str, Any]) -> list[dict[str, Any]]:
    if isinstance(task_input.get("messages"), list):
        return [dict(m) for m in task_input["messages"]]
    prompt = task_input.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise SkillFailed("input needs a prompt (string) or messages (list)", retryable=False)
    messages: list[dict[str, Any]] = []
    if isinstance(task_input.get("system"), str):
        messages.append({"role": "system", "content": task_input["system"]})
    messages.append({"role": "user", "content": prompt})
    return messages


def _tool_schema(name: str, skill: Skill | None) -> dict[str, Any]:
    description = skill.description if skill else "Hand a subtask to another fleet."
    parameters = skill.parameters if skill else HANDOFF_PARAMETERS
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def _add_usage(
    total: wire.TokenUsage, usage: Mapping[str, Any], pricing: tuple[float, float] | None
) -> wire.TokenUsage:
    prompt = int(usage.get("prompt_tokens", 0) or 0)
    completion = int(usage.get("completion_tokens", 0) or 0)
    cost = 0.0
    if pricing is not None:
        cost = (prompt * pricing[0] + completion * pricing[1]) / 1_000_000
    return wire.TokenUsage(
        promptTokens=total.promptTokens + prompt,
        completionTokens=total.completionTokens + completion,
        totalTokens=total.totalTokens + int(usage.get("total_tokens", prompt + completion) or 0),
        cost=round(total.cost + cost, 9),
    )
