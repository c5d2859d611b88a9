"""The router's HTTP API (plain ASGI). One table of endpoints drives both the routes
and the OpenAPI document, so the document cannot drift from what is served."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError

from agentarmy.api import wire
from agentarmy.api.common import DNS_LABEL_PATTERN, parse_duration
from agentarmy.api.task import TaskPhase
from agentarmy.api.wire import TASK_ID_PATTERN
from agentarmy.router import openapi
from agentarmy.router.auth import Authenticator, Principal
from agentarmy.router.errors import ApiError, bad_request, from_validation, unauthorized
from agentarmy.router.service import RouterService
from agentarmy.router.store.base import TaskQuery

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Call:
    """What a handler gets: who is calling, the path parameters, the query and the body."""

    principal: Principal
    path: dict[str, str]
    query: dict[str, str]
    body: Any


Handler = Callable[[RouterService, Call], Awaitable[BaseModel | tuple[int, BaseModel]]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Handler
    response: type[BaseModel]
    request: type[BaseModel] | None = None
    query: tuple[openapi.QueryParam, ...] = ()
    status: int = 200
    tag: str = "tasks"


# -- handlers ---------------------------------------------------------------------------------


async def submit(service: RouterService, call: Call) -> tuple[int, BaseModel]:
    (item,) = await service.submit(call.principal, [call.body])
    return (201 if item.created else 200), wire.SubmitResponse(task=item.task, created=item.created)


async def submit_batch(service: RouterService, call: Call) -> BaseModel:
    items = await service.submit(call.principal, call.body.tasks)
    return wire.SubmitBatchResponse(
        results=[wire.SubmitResponse(task=i.task, created=i.created) for i in items]
    )


async def get_task(service: RouterService, call: Call) -> BaseModel:
    return await service.get(call.principal, call.path["task_id"])


async def list_tasks(service: RouterService, call: Call) -> BaseModel:
    limit = _int_query(call.query, "limit", 100, 1, 1000)
    after = _int_query(call.query, "after", 0, 0, 2**62)
    phase = call.query.get("phase")
    if phase is not None and phase not in TaskPhase.__args__:  # type: ignore[attr-defined]
        raise bad_request(f"phase must be one of {', '.join(TaskPhase.__args__)}", "phase")  # type: ignore[attr-defined]
    query = TaskQuery(
        namespace=call.query.get("namespace"),
        fleet=call.query.get("fleet"),
        phase=phase,
        parent=call.query.get("parent"),
        after_seq=after,
        limit=limit,
    )
    tasks = await service.list_tasks(call.principal, query)
    next_cursor = str(tasks[-1].seq) if len(tasks) == limit else None
    return wire.TaskList(tasks=tasks, next=next_cursor)


async def cancel_task(service: RouterService, call: Call) -> BaseModel:
    return await service.cancel(call.principal, call.path["task_id"])


async def wait_task(service: RouterService, call: Call) -> BaseModel:
    raw = call.query.get("timeout", "30s")
    try:
        timeout = parse_duration(raw)
    except ValueError as error:
        raise bad_request(str(error), "timeout") from error
    if timeout > wire.MAX_WAIT_SECONDS:
        raise bad_request(f"timeout must be at most {wire.MAX_WAIT_SECONDS:.0f}s", "timeout")
    return await service.wait(call.principal, call.path["task_id"], timeout)


async def register(service: RouterService, call: Call) -> BaseModel:
    return await service.register(call.principal, call.body)


async def claim(service: RouterService, call: Call) -> BaseModel:
    return await service.claim(call.principal, call.path["namespace"], call.path["name"], call.body)


async def heartbeat(service: RouterService, call: Call) -> BaseModel:
    return await service.heartbeat(
        call.principal, call.path["namespace"], call.path["name"], call.body
    )


async def report(service: RouterService, call: Call) -> BaseModel:
    acks = await service.report(
        call.principal, call.path["namespace"], call.path["name"], call.body.results
    )
    return wire.ReportResponse(results=acks)


async def extend_one(service: RouterService, call: Call) -> BaseModel:
    ref = wire.LeaseRef(taskId=call.path["task_id"], attempt=call.body.attempt)
    return await service.extend_one(call.principal, call.path["namespace"], call.path["name"], ref)


async def complete_one(service: RouterService, call: Call) -> BaseModel:
    body: wire.CompleteRequest = call.body
    result = wire.TaskResult(
        taskId=call.path["task_id"],
        attempt=body.attempt,
        outcome="succeeded",
        result=body.result,
        usage=body.usage,
    )
    return await service.report_one(
        call.principal, call.path["namespace"], call.path["name"], result
    )


async def fail_one(service: RouterService, call: Call) -> BaseModel:
    body: wire.FailRequest = call.body
    result = wire.TaskResult(
        taskId=call.path["task_id"],
        attempt=body.attempt,
        outcome="failed",
        error=body.error,
        retryable=body.retryable,
    )
    return await service.report_one(
        call.principal, call.path["namespace"], call.path["name"], result
    )


async def hand_off(service: RouterService, call: Call) -> tuple[int, BaseModel]:
    item = await service.hand_off(
        call.principal, call.path["namespace"], call.path["name"], call.path["task_id"], call.body
    )
    return (201 if item.created else 200), wire.SubmitResponse(task=item.task, created=item.created)


async def stats(service: RouterService, call: Call) -> BaseModel:
    return await service.stats(call.principal)


def _int_query(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer", name) from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}", name)
    return value


AGENT = "/v1/agents/{namespace}/{name}"
LEASE = AGENT + "/tasks/{task_id}"
Q = openapi.QueryParam

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/v1/tasks",
        "Submit a task (idempotent by idempotencyKey); 201 new, 200 known",
        submit,
        wire.SubmitResponse,
        wire.SubmitTask,
        status=201,
    ),
    Endpoint(
        "POST",
        "/v1/tasks:batch",
        "Submit up to 1000 tasks in one durable write",
        submit_batch,
        wire.SubmitBatchResponse,
        wire.SubmitBatchRequest,
    ),
    Endpoint(
        "GET",
        "/v1/tasks",
        "List tasks in submission order",
        list_tasks,
        wire.TaskList,
        query=(
            Q("namespace", {"type": "string", "pattern": DNS_LABEL_PATTERN}),
            Q("fleet", {"type": "string", "pattern": DNS_LABEL_PATTERN}),
            Q("phase", {"type": "string", "enum": list(TaskPhase.__args__)}),  # type: ignore[attr-defined]
            Q("parent", {"type": "string", "pattern": TASK_ID_PATTERN, "maxLength": 64}),
            Q(
                "after",
                {"type": "integer", "minimum": 0, "maximum": 2**62},
                "Cursor: the `next` of the previous page",
            ),
            Q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
    ),
    Endpoint("GET", "/v1/tasks/{task_id}", "Get a task", get_task, wire.Task),
    Endpoint(
        "POST",
        "/v1/tasks/{task_id}/cancel",
        "Cancel a task; a running attempt learns it on its next heartbeat",
        cancel_task,
        wire.Task,
    ),
    Endpoint(
        "GET",
        "/v1/tasks/{task_id}/wait",
        "Wait until the task has ended (or timeout)",
        wait_task,
        wire.Task,
        query=(
            Q(
                "timeout",
                {"type": "string", "pattern": r"^(([0-9]|[1-5][0-9]|60)s|[0-9]{1,4}ms)$"},
                "Duration, at most 60s (default 30s)",
            ),
        ),
    ),
    Endpoint(
        "POST",
        "/v1/agents",
        "Register (or re-register) an agent",
        register,
        wire.AgentInfo,
        wire.RegisterAgent,
        tag="agents",
    ),
    Endpoint(
        "POST",
        AGENT + "/claim",
        "Record results, then lease up to `max` tasks (long-poll)",
        claim,
        wire.ClaimResponse,
        wire.ClaimRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        AGENT + "/heartbeat",
        "Liveness and lease renewal for the agent's tasks",
        heartbeat,
        wire.HeartbeatResponse,
        wire.HeartbeatRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        AGENT + "/results",
        "Record results of many attempts",
        report,
        wire.ReportResponse,
        wire.ReportRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/heartbeat",
        "Extend one lease; 409 if its fencing token is stale",
        extend_one,
        wire.LeaseStatus,
        wire.AttemptRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/complete",
        "Complete one attempt; 409 if its fencing token is stale",
        complete_one,
        wire.ResultAck,
        wire.CompleteRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/fail",
        "Fail one attempt with a reason; 409 if stale",
        fail_one,
        wire.ResultAck,
        wire.FailRequest,
        tag="agents",
    ),
    Endpoint(
        "POST",
        LEASE + "/subtasks",
        "Hand off a subtask to another fleet (carries the parent id)",
        hand_off,
        wire.SubmitResponse,
        wire.SubtaskRequest,
        status=201,
        tag="agents",
    ),
    Endpoint(
        "GET",
        "/v1/stats",
        "Per-fleet queue depth, agents and error rate per template hash",
        stats,
        wire.Stats,
        tag="operator",
    ),
)


# -- plumbing ---------------------------------------------------------------------------------
#
# A plain ASGI application: one compiled pattern per path and nothing else between the server
# and a handler. Every call of an agent or caller passes here, so each layer a framework adds
# (middleware, request objects) is paid on every task; measured on 2 cores, Starlette's own
# layers cost about as much as a whole no-op request under uvicorn.

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
) -> tuple[int, bytes]:
    try:
        principal = await _principal(scope, authenticator)
        body = (
            _parse(await _read_body(scope, receive), endpoint.request) if endpoint.request else None
        )
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        _check_strings(path, PATH_PATTERNS, "path")
        _check_strings(query, QUERY_PATTERNS, "query")
        outcome = await endpoint.handler(service, Call(principal, path, query, body))
    except ApiError as error:
        return error_response(error)
    except ValidationError as error:  # a model built from request parts the checks above missed
        return error_response(from_validation(error, "request"))
    except Exception:
        log.exception("%s %s failed", endpoint.method, endpoint.path)
        return error_response(
            ApiError(503, "Unavailable", "the router could not do that now; retry")
        )
    status, model = outcome if isinstance(outcome, tuple) else (endpoint.status, outcome)
    return status, model.model_dump_json().encode()


PATH_PATTERNS = {
    "namespace": (re.compile(DNS_LABEL_PATTERN), 63, "a DNS label"),
    "name": (re.compile(DNS_LABEL_PATTERN), 63, "a DNS label"),
    "task_id": (re.compile(TASK_ID_PATTERN), 64, "a task id (letters, digits, '_', '.', '-')"),
}
QUERY_PATTERNS = {
    "namespace": PATH_PATTERNS["namespace"],
    "fleet": PATH_PATTERNS["namespace"],
    "parent": PATH_PATTERNS["task_id"],
}


def _check_strings(
    values: dict[str, str], rules: dict[str, tuple[re.Pattern[str], int, str]], where: str
) -> None:
    for key, (pattern, longest, what) in rules.items():
        value = values.get(key)
        if value is not None and (len(value) > longest or not pattern.fullmatch(value)):
            raise bad_request(
                f"{key} in the {where} must be {what} of at most {longest} characters", key
            )


class RouterApp:
    """The router's ASGI application: the endpoint table, the OpenAPI document, health,
    readiness and metrics; the service's start and stop ride on the ASGI lifespan."""

    def __init__(self, service: RouterService, authenticator: Authenticator) -> None:
        self.service = service
        self.authenticator = authenticator
        self.document = json.dumps(openapi.build(ENDPOINTS)).encode()
        by_path: dict[str, dict[str, Endpoint]] = {}
        for endpoint in ENDPOINTS:
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
                status, body = await _call_endpoint(
                    self.service, self.authenticator, endpoint, scope, receive, match.groupdict()
                )
                return status, JSON, body, []
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
            await _principal(scope, self.authenticator)
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


def create_app(service: RouterService, authenticator: Authenticator) -> RouterApp:
    return RouterApp(service, authenticator)
