"""A local OpenAI-compatible chat-completions server for tests: real HTTP on loopback.

Each reply reports a fixed usage. A prompt naming a tool (``call:<tool> [JSON arguments]``)
makes the first turn ask for that tool (one line per call: several calls in one reply);
the next turn answers with what the tools returned.
``POST /side-effect`` counts its calls: a tool with an effect you can count (the http skill).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeModel:
    url: str = ""
    side_effect_url: str = ""
    prompt_tokens: int = 100
    completion_tokens: int = 50
    calls: list[dict[str, Any]] = field(default_factory=list)
    side_effects: int = 0

    async def side_effect(self, request: web.Request) -> web.Response:
        self.side_effects += 1
        return web.json_response({"done": self.side_effects})

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        messages = body["messages"]
        prompt = next((m["content"] for m in messages if m.get("role") == "user"), "")
        answered = [m for m in messages if m.get("role") == "tool"]
        if prompt.startswith("call:") and not answered:
            calls = []
            for number, line in enumerate(prompt.splitlines(), start=1):
                tool, _, raw = line.split(":", 1)[1].strip().partition(" ")
                arguments = raw or json.dumps({"text": "hi"})
                calls.append(
                    {
                        "id": f"call-{number}",
                        "type": "function",
                        "function": {"name": tool, "arguments": arguments},
                    }
                )
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
            reason = "tool_calls"
        else:
            content = " | ".join(m["content"] for m in answered) or f"answer to {prompt}"
            message, reason = {"role": "assistant", "content": content}, "stop"
        return web.json_response(
            {"choices": [{"message": message, "finish_reason": reason}], "usage": usage}
        )


@asynccontextmanager
async def fake_model() -> AsyncIterator[FakeModel]:
    model = FakeModel()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", model.chat)
    app.router.add_post("/side-effect", model.side_effect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    model.url = f"http://127.0.0.1:{port}/v1"
    model.side_effect_url = f"http://127.0.0.1:{port}/side-effect"
    try:
        yield model
    finally:
        await runner.cleanup()
