"""Delegation from the llm skill, against a local model server (tests/e2e/fakemodel.py):
the model's calls of delegates become the children of one wait, the conversation is the
checkpoint, and the resumed run answers each call with its child's outcome."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import pytest
from pydantic import ValidationError

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import (
    ApprovalAsk,
    ChildrenAsk,
    Parked,
    SkillFailed,
    SkillResult,
    TaskContext,
    load_skills,
    tool_skills,
)
from agentarmy.api import runtime_env as env
from agentarmy.api import wire
from agentarmy.api.agent import AgentSpec, Delegate
from agentarmy.api.rules import ApprovalRule, ToolAllowList
from agentarmy.operator.pods import PodContext, render_pod
from tests.e2e.fakemodel import FakeModel, fake_model

REVIEWER = Delegate(tool="ask-reviewer", fleet="reviewers", capability="review")
WRITER = Delegate(
    tool="ask-writer", fleet="writers", capability="write", description="Have prose written."
)


class Waits:
    """The router's side of parking, in memory: what the skill asked for."""

    def __init__(self) -> None:
        self.children: list[ChildrenAsk] = []
        self.approvals: list[ApprovalAsk] = []

    async def save(self, checkpoint: dict[str, Any]) -> None:
        return None

    async def park(self, request: ApprovalAsk) -> NoReturn:
        self.approvals.append(request)
        raise Parked("approval")

    async def wait_for(self, request: ChildrenAsk) -> NoReturn:
        self.children.append(request)
        raise Parked("children")


@pytest.fixture
async def model() -> AsyncIterator[FakeModel]:
    async with fake_model() as running:
        yield running


def lead(model: FakeModel, *delegates: Delegate) -> AgentSettings:
    return AgentSettings(
        router_url="http://r",
        name="lead-1",
        namespace="ns",
        fleet="lead",
        capabilities=["chat"],
        skills={"chat": "llm"},
        model_endpoint=model.url,
        allowed_tools=["echo"],
        delegates=list(delegates),
    )


async def run(
    agent: AgentSettings, prompt: str, waits: Waits, attempt: int = 1, **resume: Any
) -> SkillResult:
    async def no_hand_off(task: wire.SubmitTask) -> wire.SubmitResponse:
        raise AssertionError("no hand-off expected")

    context = TaskContext(
        task_id="t-lead",
        attempt=attempt,
        input={"prompt": prompt},
        trace_id="0" * 32,
        settings=agent,
        hand_off=no_hand_off,
        tools=tool_skills(agent),
        checkpoints=waits,
        **resume,
    )
    return await load_skills(agent)["chat"].run(context)


def outcome(child: wire.SubmitTask, index: int, **fields: Any) -> wire.ChildOutcome:
    base: dict[str, Any] = {
        "taskId": f"t-child-{index}",
        "fleet": child.fleet,
        "capability": child.capability,
        "phase": "Succeeded",
        "input": child.input,
        "result": {"echo": child.input},
    }
    return wire.ChildOutcome(**{**base, **fields})


async def test_calls_of_delegates_in_one_reply_are_children_of_one_wait(model: FakeModel) -> None:
    agent = lead(model, REVIEWER, WRITER)
    prompt = "\n".join(
        [
            'call:ask-reviewer {"prompt": "review the plan"}',
            'call:echo {"text": "local"}',
            'call:ask-writer {"prompt": "write the summary"}',
        ]
    )
    waits = Waits()
    with pytest.raises(Parked):
        await run(agent, prompt, waits)
    (wait,) = waits.children
    assert wait.join == "all"
    assert [(c.namespace, c.fleet, c.capability, c.input) for c in wait.tasks] == [
        ("ns", "reviewers", "review", {"prompt": "review the plan"}),
        ("ns", "writers", "write", {"prompt": "write the summary"}),
    ]
    offered = {t["function"]["name"]: t["function"] for t in model.calls[0]["tools"]}
    assert set(offered) == {"ask-reviewer", "ask-writer", "echo"}  # handoff is not allowed
    assert offered["ask-writer"]["description"] == "Have prose written."
    assert offered["ask-reviewer"]["description"] == "Ask fleet reviewers to review."
    assert offered["ask-reviewer"]["parameters"]["required"] == ["prompt"]
    # The conversation is the checkpoint: the local tool already answered, the two
    # delegated calls are unanswered until their children end.
    stored = wait.checkpoint
    tool_messages = [m for m in stored["messages"] if m["role"] == "tool"]
    assert [m["content"] is None for m in tool_messages] == [True, False, True]
    assert len(model.calls) == 1

    # The resume, on any agent (a fresh skill instance): no model call is repeated.
    children = [outcome(c, i) for i, c in enumerate(wait.tasks)]
    children[1] = outcome(wait.tasks[1], 1, phase="Failed", result=None, error="no ink")
    done = await run(agent, prompt, Waits(), attempt=2, checkpoint=stored, children=children)
    assert len(model.calls) == 2
    answered = [m for m in model.calls[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in answered] == ["call-1", "call-2", "call-3"]
    assert json.loads(answered[0]["content"]) == {"echo": {"prompt": "review the plan"}}
    assert "t-child-1 on fleet writers Failed: no ink" in answered[2]["content"]
    assert "review the plan" in done.output["content"]
    calls = done.output["toolCalls"]
    assert [(c["name"], c["ok"], c.get("taskId")) for c in calls] == [
        ("ask-reviewer", True, "t-child-0"),
        ("echo", True, None),
        ("ask-writer", False, "t-child-1"),
    ]
    assert done.output["turns"] == 2
    assert done.usage is not None and done.usage.totalTokens == 2 * 150


async def test_a_resume_applies_the_children_once_even_when_repeated(model: FakeModel) -> None:
    agent = lead(model, REVIEWER)
    prompt = 'call:ask-reviewer {"prompt": "check"}'
    waits = Waits()
    with pytest.raises(Parked):
        await run(agent, prompt, waits)
    (wait,) = waits.children
    children = [outcome(wait.tasks[0], 0)]
    stored = copy.deepcopy(wait.checkpoint)
    first = await run(agent, prompt, Waits(), 2, checkpoint=wait.checkpoint, children=children)
    assert wait.checkpoint == stored  # the stored conversation is not changed by a run
    again = await run(agent, prompt, Waits(), 3, checkpoint=wait.checkpoint, children=children)
    assert first.output == again.output  # a lost result re-run gives the same answer
    answers = [m for m in model.calls[-1]["messages"] if m["role"] == "tool"]
    assert [json.loads(m["content"]) for m in answers] == [{"echo": {"prompt": "check"}}]


async def test_a_resume_without_the_children_fails_clearly(model: FakeModel) -> None:
    agent = lead(model, REVIEWER)
    waits = Waits()
    with pytest.raises(Parked):
        await run(agent, 'call:ask-reviewer {"prompt": "x"}', waits)
    with pytest.raises(SkillFailed) as failed:
        await run(agent, "x", Waits(), 2, checkpoint=waits.children[0].checkpoint, children=[])
    assert "0 children's outcomes for 1 delegated calls" in str(failed.value)
    assert not failed.value.retryable


async def test_policy_tool_rules_judge_delegate_names(model: FakeModel) -> None:
    agent = lead(model, REVIEWER)
    prompt = 'call:ask-reviewer {"prompt": "x"}'
    refusing = wire.ToolRules(allowedTools=[ToolAllowList(policy="ns/tight", globs=["echo"])])
    with pytest.raises(SkillFailed) as refused:
        await run(agent, prompt, Waits(), tool_rules=refusing)
    assert refused.value.refused_by == wire.RefusedBy(
        policy="ns/tight", rule="allowedTools", tool="ask-reviewer"
    )

    approving = wire.ToolRules(approvalTools=[ApprovalRule(tool="ask-*", policy="ns/humans")])
    waits = Waits()
    with pytest.raises(Parked):
        await run(agent, prompt, waits, tool_rules=approving)
    (asked,) = waits.approvals
    assert (asked.tool, asked.arguments) == ("ask-reviewer", {"prompt": "x"})
    assert not waits.children  # nothing starts before a person approves

    approval = wire.Approval(
        id="t-lead.1.1",
        tool="ask-reviewer",
        arguments={"prompt": "x"},
        toolCallId="call-1",
        agent="ns/lead-1",
        attempt=1,
        policies=["ns/humans"],
        requestedAt=0,
        deadlineAt=1,
        decision="Approved",
        decidedBy="admin:ops",
    )
    after = Waits()
    with pytest.raises(Parked):
        await run(
            agent,
            prompt,
            after,
            2,
            tool_rules=approving,
            approval=approval,
            checkpoint=asked.checkpoint,
        )
    (wait,) = after.children  # approved: the call becomes the child
    assert wait.tasks[0].fleet == "reviewers"


async def test_arguments_that_cannot_make_a_task_are_told_to_the_model(model: FakeModel) -> None:
    agent = lead(model, REVIEWER)
    big = json.dumps({"prompt": "x" * 300_000})
    done = await run(agent, f"call:ask-reviewer {big}", Waits())
    assert "cannot ask reviewers" in done.output["content"]
    assert [c["ok"] for c in done.output["toolCalls"]] == [False]


def test_a_delegate_cannot_take_the_hand_off_tool_name() -> None:
    with pytest.raises(ValidationError) as error:
        AgentSpec.model_validate(
            {
                "capabilities": ["chat"],
                "delegates": [{"tool": "handoff", "fleet": "r", "capability": "review"}],
            }
        )
    assert error.value.errors()[0]["loc"] == ("delegates", 0, "tool")
    with pytest.raises(ValidationError):
        Delegate.model_validate({"tool": "ask reviewer", "fleet": "r", "capability": "review"})


def test_delegates_reach_the_agent_through_the_pod_environment() -> None:
    spec = AgentSpec.model_validate(
        {
            "capabilities": ["chat"],
            "skills": {"chat": "llm"},
            "delegates": [REVIEWER.model_dump(), WRITER.model_dump()],
        }
    )
    pod = render_pod("lead-1", "ns", "uid-1", {}, spec, PodContext(router_url="http://r"))
    (container,) = pod["spec"]["containers"]
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert AgentSettings.from_env(values).delegates == [REVIEWER, WRITER]
    without = AgentSpec.model_validate({"capabilities": ["chat"]})
    (plain,) = render_pod("a", "ns", "u", {}, without, PodContext("http://r"))["spec"]["containers"]
    assert env.DELEGATES not in {e["name"] for e in plain["env"]}
    with pytest.raises(ValueError, match=f"{env.DELEGATES}: 0.fleet"):
        AgentSettings.from_env({**values, env.DELEGATES: '[{"tool": "t", "capability": "c"}]'})
