"""The router's HTTP layer: plain ASGI over the endpoint table. Routing, the bearer token,
the body (size-capped, parsed into the endpoint's model), the parameter checks, the JSON
error bodies, and the service's start and stop on the ASGI lifespan."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError

from agentarmy.router import openapi
from agentarmy.router.auth import Authenticator, Principal
from agentarmy.router.endpoints import Endpoint, check_strings
from agentarmy.router.errors import ApiError, bad_request, from_validation, unauthorized
from agentarmy.router.handlers import Call
from agentarmy.router.service import RouterService

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"

# A plain ASGI application: one compiled pattern per path and nothing else between the server
# and a handler. Every call of an agent or caller passes here, so each layer a framework adds
# (middleware, request objects) is paid on every task. Measured 2026-12-06 on 2 cores with
# `bench_router.py --only sqlite` (figures in docs/router.md, "The HTTP layer"): the same table
# on Starlette's Router/Route and Request/Response took 10% more router CPU per run and 11% off
# the e2e burst; the rule was to keep ours if Starlette cost more than 5%.

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PlainHandler = Callable[[Scope, Receive], Awaitable[tuple[int, bytes, bytes]]]
"""(status, content type, body) for the few routes outside the endpoint table."""


@dataclass
class _Route:
    pattern: re.Pattern[str]
    endpoints: dict[str, Endpoint]
    plain: dict[str, PlainHandler]

    @property
    def methods(self) -> list[str]:
        names = [*self.endpoints, *self.plain]
        return [*names, "HEAD"] if "GET" in names else names


def _compile(template: str) -> re.Pattern[str]:
    """``/v1/tasks/{task_id}`` -> a pattern with one named group per path parameter."""
    parts = re.split(r"\{([a-z_]+)\}", template)
    regex = "".join(
        re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/]+)"
        for index, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


def error_response(error: ApiError) -> tuple[int, bytes]:
    return error.status, error.body().model_dump_json(exclude_none=True).encode()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _principal(scope: Scope, authenticator: Authenticator) -> Principal:
    scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("send an Authorization: Bearer <token> header")
    try:
        principal = await authenticator.authenticate(token.strip())
    except Exception as error:
        log.warning("authentication backend failed: %s", error)
        raise ApiError(503, "AuthUnavailable", "cannot check the token right now; retry") from error
    if principal is None:
        raise unauthorized("the bearer token is not valid for this router")
    return principal


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "TooLarge", f"request body is larger than {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "BadRequest", "the client went away before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "TooLarge", f"request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse(raw: bytes, model: type[BaseModel]) -> BaseModel:
    if not raw:
        raise bad_request("request body is empty; send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise from_validation(error) from None


async def _call_endpoint(
    service: RouterService,
    authenticator: Authenticator,
    endpoint: Endpoint,
    scope: Scope,
    receive: Receive,
    path: dict[str, str],
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    try:
        principal = await _principal(scope, authenticator)
        body = (
            _parse(await _read_body(scope, receive), endpoint.request) if endpoint.request else None
        )
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        check_strings(path, query)
        outcome = await endpoint.handler(service, Call(principal, path, query, body))
    except ApiError as error:
        return (*error_response(error), error.headers)
    except ValidationError as error:  # a model built from request parts the checks above missed
        return (*error_response(from_validation(error, "request")), [])
    except Exception:
        log.exception("%s %s failed", endpoint.method, endpoint.path)
        unavailable = ApiError(503, "Unavailable", "the router could not do that now; retry")
        return (*error_response(unavailable), [])
    status, model = outcome if isinstance(outcome, tuple) else (endpoint.status, outcome)
    return status, model.model_dump_json().encode(), []


class RouterApp:
    """The router's ASGI application: the endpoint table, the OpenAPI document, health,
    readiness and metrics; the service's start and stop ride on the ASGI lifespan."""

    def __init__(
        self, service: RouterService, authenticator: Authenticator, endpoints: Sequence[Endpoint]
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.document = json.dumps(openapi.build(endpoints)).encode()
        by_path: dict[str, dict[str, Endpoint]] = {}
        for endpoint in endpoints:
            by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
        self.routes = [_Route(_compile(path), group, {}) for path, group in by_path.items()]
        plain: dict[str, PlainHandler] = {
            "/openapi.json": self._openapi,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }
        self.routes += [_Route(_compile(p), {}, {"GET": h}) for p, h in plain.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            status, content_type, body, headers = await self._dispatch(scope, receive)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", content_type),
                        (b"content-length", str(len(body)).encode()),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _dispatch(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        path: str = scope["path"]
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            endpoint = route.endpoints.get(method)
            if endpoint is not None:
                status, body, headers = await _call_endpoint(
                    self.service, self.authenticator, endpoint, scope, receive, match.groupdict()
                )
                return status, JSON, body, headers
            handler = route.plain.get(method)
            if handler is not None:
                return (*await handler(scope, receive), [])
            error = ApiError(405, "MethodNotAllowed", f"{scope['method']} is not allowed here")
            allow = (b"allow", ", ".join(route.methods).encode())
            return (*_json_error(error), [allow])
        return (*_json_error(ApiError(404, "NotFound", f"no route for {path}")), [])

    async def _openapi(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        return 200, JSON, self.document

    async def _healthz(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        return 200, JSON, b'{"ok":true}'

    async def _readyz(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        ready = self.service.ready
        return (200 if ready else 503), JSON, json.dumps({"ready": ready}).encode()

    async def _metrics(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        try:
            principal = await _principal(scope, self.authenticator)
            principal.check_metrics()
        except ApiError as error:
            return _json_error(error)
        return 200, PROMETHEUS, await self.service.render_metrics()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service.start()
                except Exception as error:
                    log.exception("router failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.service.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _json_error(error: ApiError) -> tuple[int, bytes, bytes]:
    status, body = error_response(error)
    return status, JSON, body
