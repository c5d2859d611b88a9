"""Built-in skills, plugin loading, settings from the environment, and the llm skill
against a local OpenAI-compatible server started by the test."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import (
    SkillFailed,
    TaskContext,
    available_factories,
    load_skills,
    tool_skills,
)
from agentarmy.agent.skills.http import host_allowed
from agentarmy.api import runtime_env as env
from agentarmy.api import wire


def settings(**fields: Any) -> AgentSettings:
    base: dict[str, Any] = {
        "router_url": "http://r",
        "name": "a1",
        "namespace": "ns",
        "fleet": "f",
        "capabilities": ["echo"],
    }
    return AgentSettings(**{**base, **fields})


def context(
    task_input: dict[str, Any], agent: AgentSettings, attempt: int = 1, **extra: Any
) -> TaskContext:
    async def no_hand_off(task: wire.SubmitTask) -> wire.SubmitResponse:
        raise AssertionError("no hand-off expected")

    return TaskContext(
        task_id="t-1",
        attempt=attempt,
        input=task_input,
        trace_id="0" * 32,
        settings=agent,
        hand_off=extra.pop("hand_off", no_hand_off),
        **extra,
    )


def test_settings_from_the_environment_contract() -> None:
    loaded = AgentSettings.from_env(
        {
            env.ROUTER_URL: "http://router:8080",
            env.AGENT_NAME: "a1",
            env.NAMESPACE: "team",
            env.FLEET: "fa",
            env.CAPABILITIES: "echo, summarize",
            env.SKILLS: '{"summarize": "llm"}',
            env.CONCURRENCY: "4",
            env.HEARTBEAT_INTERVAL: "2s",
            env.ALLOWED_TOOLS: "echo,http*",
            env.MODEL_TEMPERATURE: "0.5",
        }
    )
    assert loaded.capabilities == ["echo", "summarize"] and loaded.skill_for("summarize") == "llm"
    assert (loaded.concurrency, loaded.heartbeat_interval, loaded.model_temperature) == (
        4,
        2.0,
        0.5,
    )
    with pytest.raises(ValueError, match=env.CONCURRENCY):
        AgentSettings.from_env(
            {
                env.ROUTER_URL: "x",
                env.AGENT_NAME: "a",
                env.CAPABILITIES: "e",
                env.CONCURRENCY: "many",
            }
        )
    with pytest.raises(ValueError, match=env.CAPABILITIES):
        AgentSettings.from_env({env.ROUTER_URL: "x", env.AGENT_NAME: "a"})


def test_built_in_skills_are_entry_point_plugins() -> None:
    assert {"echo", "test", "http", "llm"} <= set(available_factories())
    skills = load_skills(settings(capabilities=["echo", "chat"], skills={"chat": "llm"}))
    assert skills["chat"].name == "llm"
    with pytest.raises(ValueError, match="no skill plugin named nope"):
        load_skills(settings(capabilities=["nope"]))
    assert set(tool_skills(settings(allowed_tools=["ec*", "llm"]))) == {"echo"}


async def test_test_skill_fails_on_request() -> None:
    (skill,) = load_skills(settings(capabilities=["test"])).values()
    agent = settings(capabilities=["test"])
    with pytest.raises(SkillFailed, match="attempt 1"):
        await skill.run(context({"failAttempts": 1}, agent, attempt=1))
    assert (await skill.run(context({"failAttempts": 1}, agent, attempt=2))).output["attempt"] == 2
    with pytest.raises(SkillFailed) as error:
        await skill.run(context({"fail": "bad", "retryable": False}, agent))
    assert not error.value.retryable


async def test_test_skill_fails_every_task_of_a_broken_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (skill,) = load_skills(settings(capabilities=["test"])).values()
    monkeypatch.setenv("TEST_SKILL_FAIL", "template v2 is broken")
    with pytest.raises(SkillFailed, match="template v2 is broken") as error:
        await skill.run(context({}, settings(capabilities=["test"])))
    assert error.value.retryable  # another agent (of the old template) may run it
    monkeypatch.delenv("TEST_SKILL_FAIL")
    assert (await skill.run(context({}, settings(capabilities=["test"])))).output["attempt"] == 1


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://api.example.com/x", True),
        ("https://api.example.com:8443/", False),
        ("http://127.0.0.1:9000/", True),
        ("http://127.0.0.1:9001/", False),
        ("http://evil.example.com/", False),
        ("file:///etc/passwd", False),
    ],
)
def test_http_allow_list(url: str, allowed: bool) -> None:
    assert host_allowed(url, ["api.example.com:80", "127.0.0.1:9000"]) is allowed


@pytest.fixture
async def fake_model() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An OpenAI-compatible endpoint: asks for two tool calls, then answers with what they returned."""
    requests: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        requests.append({"auth": request.headers.get("Authorization"), **body})
        tool_messages = [m for m in body["messages"] if m.get("role") == "tool"]
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not tool_messages:
            calls = [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "echo", "arguments": json.dumps({"text": "hello"})},
                },
                {"id": "c2", "type": "function", "function": {"name": "http", "arguments": "{}"}},
            ]
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
            return web.json_response(
                {"choices": [{"message": message, "finish_reason": "tool_calls"}], "usage": usage}
            )
        answer = " | ".join(m["content"] for m in tool_messages)
        return web.json_response(
            {
                "choices": [
                    {"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", requests
    await runner.cleanup()


async def test_llm_calls_allowed_tools_and_reports_usage(
    fake_model: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, requests = fake_model
    agent = settings(
        capabilities=["chat"],
        skills={"chat": "llm"},
        model_endpoint=endpoint,
        model_name="tiny",
        model_api_key="sk-test",
        allowed_tools=["echo"],
    )
    skill = load_skills(agent)["chat"]
    result = await skill.run(context({"prompt": "say hello"}, agent, tools=tool_skills(agent)))
    assert result.usage == wire.TokenUsage(promptTokens=20, completionTokens=10, totalTokens=30)
    assert [c["ok"] for c in result.output["toolCalls"]] == [True, False]  # http is not allowed
    assert '"hello"' in result.output["content"] and "not allowed" in result.output["content"]
    first = requests[0]
    assert first["auth"] == "Bearer sk-test" and first["model"] == "tiny"
    assert [t["function"]["name"] for t in first["tools"]] == ["echo"]
    assert first["messages"] == [{"role": "user", "content": "say hello"}]


async def test_llm_without_endpoint_fails_for_good() -> None:
    agent = settings(capabilities=["llm"])
    with pytest.raises(SkillFailed) as error:
        await load_skills(agent)["llm"].run(context({"prompt": "x"}, agent))
    assert not error.value.retryable
