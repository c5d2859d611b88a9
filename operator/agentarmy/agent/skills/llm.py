"""llm: a chat-completions loop against any OpenAI-compatible endpoint, with tool calling.

Input: ``prompt`` (or ``messages``), optional ``system``, ``tools`` (names to offer;
default: every tool the agent may use), ``maxTurns`` (8) and ``maxTokens`` (per reply).
Tools are the agent's other skills plus ``handoff`` (a subtask to another fleet),
filtered by the agent's allowed-tools list, and the Agent's delegates; a call to anything
else is answered with an error message to the model, never run. Token usage of every
turn is summed into the result's usage (with its cost, when the Agent's model has pricing).

Delegation: a delegate is another fleet's capability offered as a tool. The model's
calls of delegates in one reply become the children of one wait (``ctx.spawn``, join
``all``): the conversation so far is the task's checkpoint, the task waits in the router
holding no agent, and when the children have ended it runs again, on any agent of its
fleet, answering each call with its child's result (or error) before the next model turn.

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
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import (
    ApprovalAsk,
    Skill,
    SkillFailed,
    SkillResult,
    TaskContext,
    allowed,
)
from agentarmy.api import wire
from agentarmy.api.agent import Delegate
from agentarmy.logs import log_fields
from agentarmy.policy.effective import judge_tool

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
DELEGATE_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"prompt": {"type": "string", "description": "What to ask"}},
    "required": ["prompt"],
}
"""What a delegate takes by default: the arguments become the child task's input."""
Offered = Skill | Delegate | None
"""A tool offered to the model: a skill, a delegate, or None for the hand-off tool."""


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
        state = _Conversation.resume(ctx.checkpoint) or _Conversation.start(ctx.input)
        _answer_delegated(ctx, state)
        offered = self._offered_tools(ctx)
        max_turns = int(ctx.input.get("maxTurns", 8))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            await self._run_tool_calls(ctx, state)  # what a parked turn left to do
            while state.turn < max_turns:
                state.turn += 1
                reply = await self._budgeted_call(ctx, session, state.messages, offered)
                state.usage = _add_usage(
                    state.usage, reply.get("usage") or {}, self.settings.model_pricing
                )
                choice = (reply.get("choices") or [{}])[0]
                message = choice.get("message") or {}
                state.messages.append(message)
                state.pending = list(message.get("tool_calls") or [])
                if not state.pending:
                    return SkillResult(
                        output={
                            "content": message.get("content") or "",
                            "toolCalls": state.calls,
                            "turns": state.turn,
                            "finishReason": choice.get("finish_reason", ""),
                        },
                        usage=state.usage,
                    )
                await self._run_tool_calls(ctx, state)
        raise SkillFailed(f"the model was still calling tools after {max_turns} turns")

    async def _run_tool_calls(self, ctx: TaskContext, state: _Conversation) -> None:
        while state.pending:
            call = state.pending[0]
            content, record = await self._call_tool(ctx, call, state)
            state.calls.append(record)
            state.messages.append(
                {"role": "tool", "tool_call_id": call.get("id", ""), "content": content}
            )
            if content is None:  # delegated: answered by its child, once the wait ends
                state.delegated.append(
                    {"message": len(state.messages) - 1, "call": len(state.calls) - 1}
                )
            state.pending.pop(0)
            if record.get("approval"):
                state.started = ""
                await ctx.checkpoints.save(state.checkpoint())  # its outcome, stored once
        if state.delegated:
            await self._wait_for_delegates(ctx, state)

    async def _wait_for_delegates(self, ctx: TaskContext, state: _Conversation) -> None:
        """Start the reply's delegated calls as children of one wait; the conversation is
        the checkpoint the task resumes from (raises Parked)."""
        children = [
            wire.SubmitTask(namespace=self.settings.namespace, **state.calls[d["call"]]["child"])
            for d in state.delegated
        ]
        state.spawned = True
        await ctx.spawn(children, "all", state.checkpoint())

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
        tools: Mapping[str, Offered],
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

    def _offered_tools(self, ctx: TaskContext) -> dict[str, Offered]:
        delegates = {d.tool: d for d in self.settings.delegates}
        names = {*ctx.tools, HANDOFF_TOOL, *delegates}
        wanted = ctx.input.get("tools")
        if isinstance(wanted, list):
            names &= {str(n) for n in wanted}
        offered: dict[str, Offered] = {}
        for name in sorted(names):
            if name in delegates:  # declared on the Agent: that is its allow-list entry
                offered[name] = delegates[name]
            elif allowed(name, self.settings.allowed_tools):
                offered[name] = ctx.tools.get(name)
        return offered

    async def _complete(
        self,
        session: aiohttp.ClientSession,
        messages: list[dict[str, Any]],
        tools: Mapping[str, Offered],
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
        self, ctx: TaskContext, call: dict[str, Any], state: _Conversation
    ) -> tuple[str | None, dict[str, Any]]:
        """What the model is told of the call (None: a child task will tell it) and the
        call's record in the result's toolCalls."""
        function = call.get("function") or {}
        name = str(function.get("name", ""))
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = None
        record: dict[str, Any] = {"name": name, "arguments": arguments, "ok": False}
        if not isinstance(arguments, dict):
            return json.dumps({"error": "arguments must be a JSON object"}), record
        needs_approval = self._judge_by_policy(ctx, name)
        delegate = next((d for d in self.settings.delegates if d.tool == name), None)
        if delegate is None and (
            not allowed(name, self.settings.allowed_tools)
            or (name != HANDOFF_TOOL and name not in ctx.tools)
        ):
            return json.dumps({"error": f"tool {name!r} is not allowed for this agent"}), record
        if needs_approval:
            verdict = await self._approved(ctx, call, name, arguments, state)
            record["approval"] = ctx.approval.id if ctx.approval else ""
            if verdict is not None:
                return json.dumps({"error": verdict}), record
        if delegate is not None:
            return self._delegated(delegate, arguments, record)
        try:
            output = await self._run_tool(ctx, name, arguments)
        except SkillFailed as error:
            return json.dumps({"error": str(error)}), record
        record["ok"] = True
        return json.dumps(output), record

    def _delegated(
        self, delegate: Delegate, arguments: dict[str, Any], record: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """The call as a child task to start when the reply's calls are done (None), or
        what the model is told when its arguments cannot make one."""
        child = {"fleet": delegate.fleet, "capability": delegate.capability, "input": arguments}
        try:
            wire.SubmitTask(namespace=self.settings.namespace, **child)
        except ValueError as error:
            return json.dumps({"error": f"cannot ask {delegate.fleet}: {error}"}), record
        record["child"] = child
        return None, record

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

    async def _approved(
        self,
        ctx: TaskContext,
        call: dict[str, Any],
        tool: str,
        arguments: dict[str, Any],
        state: _Conversation,
    ) -> str | None:
        """None when the call may run now (a person approved it); else what the model is
        told instead. Without a decision for this call, the task is parked (Parked)."""
        approval, call_id = ctx.approval, str(call.get("id", ""))
        answers = (
            approval is not None
            and approval.decision is not None
            and approval.toolCallId == call_id
            and approval.tool == tool
        )
        if answers and approval is not None and approval.id == state.started:
            # An earlier attempt began this call and its agent stopped before storing the
            # outcome: running it again could do it twice.
            return "the approved call was started by an earlier attempt; its outcome is unknown"
        if not answers or approval is None or approval.id in state.used:
            ask = ApprovalAsk(
                tool, arguments, call_id, "the model asked for it", state.checkpoint()
            )
            await ctx.checkpoints.park(ask)
        assert approval is not None
        state.used.append(approval.id)  # a decision answers one call, once
        if approval.decision != "Approved":
            return (
                f"a person did not approve this call ({approval.decision}, by "
                f"{approval.decidedBy}): {approval.decisionReason}"
            )
        state.started = approval.id
        await ctx.checkpoints.save(state.checkpoint())
        return None

    def _judge_by_policy(self, ctx: TaskContext, tool: str) -> bool:
        """Refuse a tool the fleet's Policies do not allow: the task fails, naming the rule.
        (The runtime is ours; admission's image allow-list keeps foreign runtimes out.)
        True when the call needs a person's approval first."""
        rules = ctx.tool_rules
        if rules is None:
            return False
        decision = judge_tool(rules, tool)
        if decision.allowed:
            return decision.needs_approval
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
        refused = wire.RefusedBy(policy=finding.policy, rule=finding.rule, tool=tool)
        raise SkillFailed(message, retryable=False, refused_by=refused)


@dataclass
class _Conversation:
    """The loop's state; stored with the task (a checkpoint) when it waits for a person."""

    messages: list[dict[str, Any]]
    usage: wire.TokenUsage = field(default_factory=wire.TokenUsage)
    calls: list[dict[str, Any]] = field(default_factory=list)
    turn: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)
    """Tool calls of the last reply not yet answered (the first may wait for approval)."""
    started: str = ""
    """The approval whose call is running and has no stored outcome yet (never run twice)."""
    used: list[str] = field(default_factory=list)
    """Approvals already applied to a call."""
    delegated: list[dict[str, int]] = field(default_factory=list)
    """Calls of delegates this reply (``message``, ``call``: their indexes), unanswered."""
    spawned: bool = False
    """True in the checkpoint stored with the wait: the task's children answer them."""

    @classmethod
    def start(cls, task_input: Mapping[str, Any]) -> _Conversation:
        return cls(_initial_messages(task_input))

    @classmethod
    def resume(cls, checkpoint: Mapping[str, Any] | None) -> _Conversation | None:
        if not checkpoint or "messages" not in checkpoint:
            return None
        return cls(
            messages=[dict(m) for m in checkpoint["messages"]],  # answers are filled in
            usage=wire.TokenUsage.model_validate(checkpoint.get("usage") or {}),
            calls=[dict(c) for c in checkpoint.get("calls") or []],
            turn=int(checkpoint.get("turn", 0)),
            pending=list(checkpoint.get("pending") or []),
            started=str(checkpoint.get("started", "")),
            used=[str(u) for u in checkpoint.get("used") or []],
            delegated=list(checkpoint.get("delegated") or []),
            spawned=bool(checkpoint.get("spawned", False)),
        )

    def checkpoint(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "usage": self.usage.model_dump(),
            "calls": self.calls,
            "turn": self.turn,
            "pending": self.pending,
            "started": self.started,
            "used": self.used,
            "delegated": self.delegated,
            "spawned": self.spawned,
        }


def _answer_delegated(ctx: TaskContext, state: _Conversation) -> None:
    """After the wait: each delegated call is answered with its child's result or error,
    in the order they were started. Applying the same children to the same checkpoint
    again (a later attempt) gives the same conversation."""
    if not state.spawned:
        return  # not started yet (e.g. a later call of the reply waited for a person)
    children = ctx.children or []
    if len(children) != len(state.delegated):
        raise SkillFailed(
            f"resumed with {len(children)} children's outcomes for "
            f"{len(state.delegated)} delegated calls",
            retryable=False,
        )
    for waiting, child in zip(state.delegated, children, strict=True):
        succeeded = child.phase == "Succeeded"
        answer: dict[str, Any] = (
            child.result or {}
            if succeeded
            else {
                "error": f"task {child.taskId} on fleet {child.fleet} {child.phase}: {child.error}"
            }
        )
        state.messages[waiting["message"]]["content"] = json.dumps(answer)
        record = state.calls[waiting["call"]]
        record.pop("child", None)
        record.update({"ok": succeeded, "taskId": child.taskId})
    state.delegated, state.spawned = [], False


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


def _tool_schema(name: str, tool: Offered) -> dict[str, Any]:
    if isinstance(tool, Delegate):
        description = tool.description or f"Ask fleet {tool.fleet} to {tool.capability}."
        parameters = DELEGATE_PARAMETERS
    elif tool is None:
        description, parameters = "Hand a subtask to another fleet.", HANDOFF_PARAMETERS
    else:
        description, parameters = tool.description, tool.parameters
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
