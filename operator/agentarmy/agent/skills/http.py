"""http: one outbound HTTP request, only to hosts on the agent's allow-list.

Input: ``url``; optional ``method`` (GET), ``headers``, ``json`` or ``body`` (text),
``timeout`` seconds (30). Output: status, content type and the body (text, and
parsed JSON when it is JSON), cut at 64 KiB. Network errors are retryable failures.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import SkillFailed, SkillResult, TaskContext

MAX_BODY_CHARS = 64 * 1024


def host_allowed(url: str, allow_list: list[str]) -> bool:
    """``host`` entries allow any port; ``host:port`` entries only that port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.lower()
    return any(entry.lower() in (host, f"{host}:{port}") for entry in allow_list)


class HttpSkill:
    name = "http"
    description = "Make one HTTP request to an allowed host and return the response."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "url": {"type": "string"},
            "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "json": {},
            "body": {"type": "string"},
        },
        "required": ["url"],
    }

    def __init__(self, settings: AgentSettings) -> None:
        self.allow_list = settings.http_allow_list

    async def run(self, ctx: TaskContext) -> SkillResult:
        url = str(ctx.input.get("url", ""))
        if not host_allowed(url, self.allow_list):
            raise SkillFailed(f"host of {url!r} is not on the allow-list", retryable=False)
        method = str(ctx.input.get("method", "GET")).upper()
        headers = {str(k): str(v) for k, v in (ctx.input.get("headers") or {}).items()}
        headers.setdefault("traceparent", f"00-{ctx.trace_id}-{'0' * 15}1-01")
        timeout = aiohttp.ClientTimeout(total=float(ctx.input.get("timeout", 30)))
        kwargs: dict[str, Any] = {"headers": headers}
        if "json" in ctx.input:
            kwargs["json"] = ctx.input["json"]
        elif "body" in ctx.input:
            kwargs["data"] = str(ctx.input["body"])
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, url, allow_redirects=False, **kwargs) as response,
            ):
                text = (await response.text(errors="replace"))[:MAX_BODY_CHARS]
                output: dict[str, Any] = {
                    "status": response.status,
                    "contentType": response.headers.get("content-type", ""),
                    "body": text,
                }
        except (aiohttp.ClientError, TimeoutError) as error:
            raise SkillFailed(f"{method} {url} failed: {type(error).__name__}: {error}") from error
        if "json" in output["contentType"]:
            with contextlib.suppress(ValueError):
                output["json"] = json.loads(text)
        return SkillResult(output=output)
