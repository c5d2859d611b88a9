"""Async client of the router API, used by the agent runtime, armyctl, tests and benchmarks."""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from agentarmy.api import rules, wire
from agentarmy.router.http import HttpClient

M = TypeVar("M", bound=BaseModel)


class RouterError(Exception):
    """The router answered with an error (its JSON error body, parsed)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class TokenSource:
    """A bearer token from a file (re-read when it changes: projected tokens rotate) or a string."""

    def __init__(self, token: str | None = None, path: Path | None = None) -> None:
        self._token = token
        self._path = path
        self._mtime = -1.0

    def get(self) -> str:
        if self._path is not None:
            mtime = self._path.stat().st_mtime
            if mtime != self._mtime:
                self._token = self._path.read_text().strip()
                self._mtime = mtime
        return self._token or ""


TRANSIENT = (OSError, TimeoutError)
"""The router could not be reached or did not answer (HttpConnectionError, refused
connections and TLS failures are all OSErrors): worth retrying."""


class RouterClient:
    def __init__(
        self,
        base_url: str,
        token: TokenSource | str,
        ca_file: str | None = None,
        timeout: float = 90.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token if isinstance(token, TokenSource) else TokenSource(token)
        self.ca_file = ca_file
        self.timeout = timeout
        self._http: HttpClient | None = None

    async def __aenter__(self) -> RouterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _client(self) -> HttpClient:
        if self._http is None:
            context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
            self._http = HttpClient(self.base_url, context, self.timeout)
        return self._http

    async def request(
        self,
        method: str,
        path: str,
        response: type[M],
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
    ) -> M:
        _, payload = await self.raw(method, path, body, params)
        return response.model_validate_json(payload)

    async def raw(
        self,
        method: str,
        path: str,
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token.get()}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = body.model_dump_json(exclude_none=True).encode()
        status, payload = await self._client().request(method, path, headers, data, params)
        if status >= 400:
            raise _error(status, payload)
        return status, payload

    # -- callers ----------------------------------------------------------------------------

    async def submit(self, task: wire.SubmitTask) -> wire.SubmitResponse:
        return await self.request("POST", "/v1/tasks", wire.SubmitResponse, task)

    async def submit_batch(self, tasks: Sequence[wire.SubmitTask]) -> wire.SubmitBatchResponse:
        body = wire.SubmitBatchRequest(tasks=list(tasks))
        return await self.request("POST", "/v1/tasks:batch", wire.SubmitBatchResponse, body)

    async def get(self, task_id: str) -> wire.Task:
        return await self.request("GET", f"/v1/tasks/{task_id}", wire.Task)

    async def list(self, **filters: Any) -> wire.TaskList:
        params = {k: str(v) for k, v in filters.items() if v is not None}
        return await self.request("GET", "/v1/tasks", wire.TaskList, params=params)

    async def cancel(self, task_id: str) -> wire.Task:
        return await self.request("POST", f"/v1/tasks/{task_id}/cancel", wire.Task)

    async def wait(self, task_id: str, timeout_seconds: float = 30.0) -> wire.Task:
        timeout = f"{max(1, min(60, int(timeout_seconds)))}s"
        return await self.request(
            "GET", f"/v1/tasks/{task_id}/wait", wire.Task, params={"timeout": timeout}
        )

    async def stats(self) -> wire.Stats:
        return await self.request("GET", "/v1/stats", wire.Stats)

    async def watch_stats(self, since: str = "", timeout_seconds: int = 30) -> wire.StatsWatch:
        """The stats once the operator's figures differ from ``since`` (a token from an
        earlier answer), or ``changed=False`` after ``timeout_seconds``."""
        params = {"since": since, "timeoutSeconds": str(timeout_seconds)}
        return await self.request("GET", "/v1/stats/watch", wire.StatsWatch, params=params)

    # -- agents -----------------------------------------------------------------------------

    async def register(self, agent: wire.RegisterAgent) -> wire.AgentInfo:
        return await self.request("POST", "/v1/agents", wire.AgentInfo, agent)

    async def claim(
        self, namespace: str, name: str, request: wire.ClaimRequest
    ) -> wire.ClaimResponse:
        return await self.request(
            "POST", f"/v1/agents/{namespace}/{name}/claim", wire.ClaimResponse, request
        )

    async def heartbeat(
        self, namespace: str, name: str, request: wire.HeartbeatRequest
    ) -> wire.HeartbeatResponse:
        path = f"/v1/agents/{namespace}/{name}/heartbeat"
        return await self.request("POST", path, wire.HeartbeatResponse, request)

    async def report(
        self, namespace: str, name: str, results: Sequence[wire.TaskResult]
    ) -> wire.ReportResponse:
        body = wire.ReportRequest(results=list(results))
        return await self.request(
            "POST", f"/v1/agents/{namespace}/{name}/results", wire.ReportResponse, body
        )

    async def hand_off(
        self, namespace: str, name: str, parent: wire.LeaseRef | wire.Lease, task: wire.SubmitTask
    ) -> wire.SubmitResponse:
        path = f"/v1/agents/{namespace}/{name}/tasks/{parent.taskId}/subtasks"
        body = wire.SubtaskRequest(attempt=parent.attempt, task=task)
        return await self.request("POST", path, wire.SubmitResponse, body)

    async def spawn_children(
        self,
        namespace: str,
        name: str,
        parent: wire.LeaseRef | wire.Lease,
        request: wire.ChildrenRequest,
    ) -> wire.ChildrenResponse:
        path = f"/v1/agents/{namespace}/{name}/tasks/{parent.taskId}/children"
        return await self.request("POST", path, wire.ChildrenResponse, request)

    async def tree(self, task_id: str, limit: int = 1000) -> wire.TaskTree:
        params = {"limit": str(limit)}
        return await self.request("GET", f"/v1/tasks/{task_id}/tree", wire.TaskTree, params=params)

    async def reserve_tokens(
        self, namespace: str, name: str, lease: wire.LeaseRef | wire.Lease, tokens: int
    ) -> rules.TokenGrant:
        path = f"/v1/agents/{namespace}/{name}/tasks/{lease.taskId}/tokens:reserve"
        body = rules.TokenReservation(attempt=lease.attempt, tokens=tokens)
        return await self.request("POST", path, rules.TokenGrant, body)

    async def settle_tokens(
        self, namespace: str, name: str, lease: wire.LeaseRef | wire.Lease, reserved: int, used: int
    ) -> rules.TokenGrant:
        path = f"/v1/agents/{namespace}/{name}/tasks/{lease.taskId}/tokens:settle"
        body = rules.TokenSettlement(attempt=lease.attempt, reserved=reserved, used=used)
        return await self.request("POST", path, rules.TokenGrant, body)

    async def request_approval(
        self,
        namespace: str,
        name: str,
        lease: wire.LeaseRef | wire.Lease,
        request: wire.ApprovalRequest,
    ) -> wire.Task:
        path = f"/v1/agents/{namespace}/{name}/tasks/{lease.taskId}/approval"
        return await self.request("POST", path, wire.Task, request)

    async def save_checkpoint(
        self,
        namespace: str,
        name: str,
        lease: wire.LeaseRef | wire.Lease,
        checkpoint: dict[str, Any],
    ) -> wire.Task:
        path = f"/v1/agents/{namespace}/{name}/tasks/{lease.taskId}/checkpoint"
        body = wire.CheckpointRequest(attempt=lease.attempt, checkpoint=checkpoint)
        return await self.request("POST", path, wire.Task, body)

    async def approvals(self, namespace: str | None = None) -> wire.ApprovalList:
        params = {"namespace": namespace} if namespace else None
        return await self.request("GET", "/v1/approvals", wire.ApprovalList, params=params)

    async def decide(self, task_id: str, approve: bool, reason: str = "") -> wire.Task:
        verb = "approve" if approve else "reject"
        body = wire.DecisionRequest(reason=reason) if approve else wire.RejectRequest(reason=reason)
        return await self.request("POST", f"/v1/approvals/{task_id}/{verb}", wire.Task, body)

    # -- operator ---------------------------------------------------------------------------

    async def put_rules(self, namespace: str, fleets: Sequence[rules.FleetRules]) -> None:
        body = rules.NamespaceRules(fleets=list(fleets))
        await self.raw("PUT", f"/v1/rules/{namespace}", body)

    async def replace_rules(self, namespaces: Mapping[str, Sequence[rules.FleetRules]]) -> None:
        body = rules.AllRules(
            namespaces=[
                rules.RulesInForce(namespace=ns, fleets=list(group))
                for ns, group in sorted(namespaces.items())
            ]
        )
        await self.raw("PUT", "/v1/rules", body)

    async def halts(self) -> wire.HaltList:
        return await self.request("GET", "/v1/halts", wire.HaltList)

    async def rules_in_force(self) -> rules.AllRules:
        return await self.request("GET", "/v1/rules", rules.AllRules)

    async def resume(self, namespace: str, fleet: str, reason: str = "") -> rules.Resumed:
        path = f"/v1/fleets/{namespace}/{fleet}/resume"
        return await self.request("POST", path, rules.Resumed, rules.ResumeRequest(reason=reason))


def _error(status: int, payload: bytes) -> RouterError:
    try:
        detail = wire.ErrorResponse.model_validate_json(payload).error
    except ValueError:
        return RouterError(status, "HttpError", payload[:200].decode(errors="replace"))
    return RouterError(status, detail.code, detail.message, detail.field)
