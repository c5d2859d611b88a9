"""The HTTP API: authentication, validation, fencing (409), idempotency, hand-offs, stats."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentarmy.api.task import DEFAULT_PRIORITY

AGENT_PATH = "/v1/agents/default/a1"
Api = Any  # the `api` fixture (tests/unit/router/conftest.py)


async def register(
    api: Api, name: str = "a1", fleet: str = "fleet-a", who: str = "agent", concurrency: int = 4
) -> Any:
    body = {
        "namespace": "default",
        "name": name,
        "fleet": fleet,
        "capabilities": ["echo"],
        "concurrency": concurrency,
        "templateHash": "abc",
    }
    return await api.http.post("/v1/agents", json=body, headers=api.auth(who))


async def submit(api: Api, **fields: Any) -> Any:
    body = {"fleet": "fleet-a", "capability": "echo", **fields}
    return await api.http.post("/v1/tasks", json=body, headers=api.auth("client"))


async def claim(api: Api, wait: float = 0, maximum: int = 1, **extra: Any) -> dict[str, Any]:
    reply = await api.http.post(
        f"{AGENT_PATH}/claim",
        json={"max": maximum, "waitSeconds": wait, **extra},
        headers=api.auth("agent"),
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def test_every_call_needs_a_valid_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        reply = await api.http.get("/v1/tasks", headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "Unauthorized"
    assert (await api.http.get("/metrics")).status_code == 401
    assert (await api.http.get("/healthz")).status_code == 200


async def test_submit_defaults_come_from_the_task_model(api: Api) -> None:
    reply = await submit(api, input={"q": "hi"})
    assert reply.status_code == 201
    task = reply.json()["task"]
    assert (
        task["priority"] == DEFAULT_PRIORITY
        and task["maxAttempts"] == 3
        and task["timeout"] == "5m"
    )
    assert task["phase"] == "Queued" and len(task["traceId"]) == 32


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"priority": 101}, "priority"),
        ({"priority": -1}, "priority"),
        ({"timeout": "forever"}, "timeout"),
        ({"timeout": "0s"}, "timeout"),
        ({"priority": False}, "priority"),
        ({"maxAttempts": 0}, "maxAttempts"),
        ({"fleet": "Not_A_Label"}, "fleet"),
        ({"input": "text"}, "input"),
        ({"input": {"big": "x" * 300_000}}, "input"),
        ({"surprise": 1}, "surprise"),
        ({"traceId": "xyz"}, "traceId"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    api: Api, fields: dict[str, Any], field: str
) -> None:
    reply = await submit(api, **fields)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["field"] == field and field in error["message"]


async def test_malformed_bodies_are_400_and_oversized_413(api: Api) -> None:
    headers = {**api.auth("client"), "content-type": "application/json"}
    assert (
        await api.http.post("/v1/tasks", content=b"{not json", headers=headers)
    ).status_code == 400
    assert (await api.http.post("/v1/tasks", content=b"", headers=headers)).status_code == 400
    assert (await api.http.post("/v1/tasks", content=b"[1,2]", headers=headers)).status_code == 400
    huge = b'{"fleet": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    assert (await api.http.post("/v1/tasks", content=huge, headers=headers)).status_code == 413
    reply = await api.http.get("/v1/tasks", params={"limit": "lots"}, headers=api.auth("client"))
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "limit"
    reply = await api.http.get("/v1/nothing-here", headers=api.auth("client"))
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "NotFound"


async def test_idempotent_submission_by_key(api: Api) -> None:
    first = await submit(api, idempotencyKey="order-42")
    second = await submit(api, idempotencyKey="order-42")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["task"]["id"] == second.json()["task"]["id"]
    assert second.json()["created"] is False


async def test_clients_are_held_to_their_namespace_and_agents_to_their_fleet(api: Api) -> None:
    assert (await submit(api, namespace="other")).status_code == 403
    assert (await register(api, fleet="fleet-b")).status_code == 403  # agent token of fleet-a
    assert (await register(api, who="client")).status_code == 403
    assert (await register(api, name="a2", who="only-a1")).status_code == 403
    assert (await register(api, name="a1", who="only-a1")).status_code == 200
    # A fleet-b agent cannot claim as a fleet-a agent, even knowing its name.
    reply = await api.http.post(
        f"{AGENT_PATH}/claim", json={"max": 1, "waitSeconds": 0}, headers=api.auth("agent-b")
    )
    assert reply.status_code == 403 and "fleet-b" in reply.json()["error"]["message"]
    assert (await api.http.get("/v1/stats", headers=api.auth("client"))).status_code == 403
    assert (
        await api.http.post(
            "/v1/tasks", json={"fleet": "fleet-a", "capability": "echo"}, headers=api.auth("agent")
        )
    ).status_code == 403


async def test_metrics_are_for_admins_and_metrics_readers_only(api: Api) -> None:
    assert (await api.http.get("/metrics", headers=api.auth("metrics"))).status_code == 200
    for who in ("client", "agent"):
        refused = await api.http.get("/metrics", headers=api.auth(who))
        assert refused.status_code == 403 and f"role {refused_role(who)}" in refused.text
    assert (await register(api)).status_code == 200  # so a claim is refused for who asks
    reader = api.auth("metrics")
    task = {"fleet": "fleet-a", "capability": "echo"}
    calls = [
        api.http.get("/v1/tasks", headers=reader),
        api.http.get("/v1/tasks?namespace=default", headers=reader),
        api.http.post("/v1/tasks", json=task, headers=reader),
        api.http.get("/v1/stats", headers=reader),
        api.http.get("/v1/approvals", headers=reader),
        api.http.post(f"{AGENT_PATH}/claim", json={"max": 1}, headers=reader),
    ]
    for call in calls:
        reply = await call
        assert reply.status_code == 403, (reply.request.url, reply.text)
        assert "prometheus" in reply.json()["error"]["message"]


def refused_role(who: str) -> str:
    return "agent" if who == "agent" else "client"


async def test_parked_tasks_are_a_gauge_per_fleet_and_phase(api: Api) -> None:
    assert (await register(api)).status_code == 200
    assert (await submit(api)).status_code == 201
    (lease,) = (await claim(api))["tasks"]
    children = {"attempt": lease["attempt"], "tasks": [{"fleet": "fleet-b", "capability": "echo"}]}
    reply = await api.http.post(
        f"{AGENT_PATH}/tasks/{lease['taskId']}/children", json=children, headers=api.auth("agent")
    )
    assert reply.status_code == 201, reply.text
    text = (await api.http.get("/metrics", headers=api.auth("metrics"))).text
    series = 'agentarmy_router_tasks_waiting{fleet="fleet-a",namespace="default",phase="%s"}'
    assert series % "WaitingForChildren" + " 1.0" in text
    assert series % "AwaitingApproval" + " 0.0" in text


async def test_unregistered_agent_is_told_to_register(api: Api) -> None:
    reply = await api.http.post(f"{AGENT_PATH}/claim", json={}, headers=api.auth("agent"))
    assert reply.status_code == 404 and "register" in reply.json()["error"]["message"]


async def test_claim_complete_and_stale_tokens_get_409(api: Api) -> None:
    await register(api)
    task_id = (await submit(api, input={"n": 1}, maxAttempts=2)).json()["task"]["id"]
    (lease,) = (await claim(api))["tasks"]
    assert lease["taskId"] == task_id and lease["attempt"] == 1 and lease["input"] == {"n": 1}
    base = f"{AGENT_PATH}/tasks/{task_id}"
    beat = await api.http.post(f"{base}/heartbeat", json={"attempt": 1}, headers=api.auth("agent"))
    assert beat.status_code == 200 and beat.json()["status"] == "extended"
    stale = await api.http.post(
        f"{base}/complete", json={"attempt": 7, "result": {}}, headers=api.auth("agent")
    )
    assert stale.status_code == 409
    assert (
        stale.json()["error"]["code"] == "StaleLease"
        and "attempt 7" in stale.json()["error"]["message"]
    )
    done = await api.http.post(
        f"{base}/complete", json={"attempt": 1, "result": {"answer": 42}}, headers=api.auth("agent")
    )
    assert done.status_code == 200 and done.json()["phase"] == "Succeeded"
    again = await api.http.post(
        f"{base}/fail", json={"attempt": 1, "error": "late"}, headers=api.auth("agent")
    )
    assert again.status_code == 409
    waited = await api.http.get(
        f"/v1/tasks/{task_id}/wait", params={"timeout": "1s"}, headers=api.auth("client")
    )
    assert waited.json()["result"] == {"answer": 42}


async def test_long_poll_claim_gets_work_submitted_later(api: Api) -> None:
    await register(api)
    waiting = asyncio.create_task(claim(api, wait=5))
    await asyncio.sleep(0.1)
    task_id = (await submit(api)).json()["task"]["id"]
    body = await asyncio.wait_for(waiting, 3)
    assert [t["taskId"] for t in body["tasks"]] == [task_id]


async def test_results_ride_along_with_the_next_claim(api: Api) -> None:
    await register(api)
    first, second = [(await submit(api, input={"n": n})).json()["task"]["id"] for n in (1, 2)]
    (lease,) = (await claim(api))["tasks"]
    result = {
        "taskId": lease["taskId"],
        "attempt": 1,
        "outcome": "succeeded",
        "result": {"ok": True},
    }
    body = await claim(api, results=[result])
    assert body["results"][0]["status"] == "recorded"
    assert [t["taskId"] for t in body["tasks"]] == [second]
    assert lease["taskId"] == first


async def test_wait_returns_a_result_recorded_meanwhile(api: Api) -> None:
    await register(api)
    task_id = (await submit(api)).json()["task"]["id"]
    waiter = asyncio.create_task(
        api.http.get(
            f"/v1/tasks/{task_id}/wait", params={"timeout": "5s"}, headers=api.auth("client")
        )
    )
    (lease,) = (await claim(api))["tasks"]
    await api.http.post(
        f"{AGENT_PATH}/tasks/{task_id}/complete",
        json={"attempt": lease["attempt"]},
        headers=api.auth("agent"),
    )
    reply = await asyncio.wait_for(waiter, 3)
    assert reply.json()["phase"] == "Succeeded"


async def test_cancel_reaches_the_agent_through_its_heartbeat(api: Api) -> None:
    await register(api)
    task_id = (await submit(api)).json()["task"]["id"]
    (lease,) = (await claim(api))["tasks"]
    cancelled = await api.http.post(f"/v1/tasks/{task_id}/cancel", headers=api.auth("client"))
    assert cancelled.json()["phase"] == "Cancelled"
    beat = await api.http.post(
        f"{AGENT_PATH}/heartbeat",
        json={"leases": [{"taskId": task_id, "attempt": lease["attempt"]}]},
        headers=api.auth("agent"),
    )
    assert beat.json()["leases"][0]["status"] == "cancelled"


async def test_hand_off_carries_the_parent_and_needs_the_lease(api: Api) -> None:
    await register(api)
    parent_id = (await submit(api)).json()["task"]["id"]
    (lease,) = (await claim(api))["tasks"]
    child = {"fleet": "fleet-b", "capability": "review", "input": {"from": parent_id}}
    path = f"{AGENT_PATH}/tasks/{parent_id}/subtasks"
    reply = await api.http.post(
        path, json={"attempt": lease["attempt"], "task": child}, headers=api.auth("agent")
    )
    assert reply.status_code == 201, reply.text
    handed = reply.json()["task"]
    assert handed["parentTaskId"] == parent_id and handed["fleet"] == "fleet-b"
    assert handed["traceId"] == lease["traceId"]
    stale = await api.http.post(path, json={"attempt": 9, "task": child}, headers=api.auth("agent"))
    assert stale.status_code == 409
    listed = await api.http.get(
        "/v1/tasks", params={"parent": parent_id}, headers=api.auth("client")
    )
    assert [t["id"] for t in listed.json()["tasks"]] == [handed["id"]]


async def test_stats_and_metrics(api: Api) -> None:
    await register(api)
    for priority in (10, 90, 90):
        await submit(api, priority=priority)
    (lease,) = (await claim(api))["tasks"]
    await api.http.post(
        f"{AGENT_PATH}/tasks/{lease['taskId']}/fail",
        json={"attempt": 1, "error": "x"},
        headers=api.auth("agent"),
    )
    stats = (await api.http.get("/v1/stats", headers=api.auth("admin"))).json()
    (fleet,) = stats["fleets"]
    assert fleet["queued"] == 3 and fleet["queuedByPriority"] == {"10": 1, "90": 2}
    (agent,) = fleet["agents"]
    assert (agent["name"], agent["failed"], agent["live"]) == ("a1", 1, True)
    assert fleet["templates"] == [
        {"templateHash": "abc", "attempts": 1, "failures": 1, "errorRate": 1.0}
    ]
    text = (await api.http.get("/metrics", headers=api.auth("admin"))).text
    assert (
        'agentarmy_router_queue_depth{fleet="fleet-a",namespace="default",priority="90"} 2.0'
        in text
    )
    assert 'agentarmy_router_live_agents{fleet="fleet-a",namespace="default"} 1.0' in text
    assert 'reason="Failed"' in text and "agentarmy_router_dispatch_latency_seconds_bucket" in text


async def test_openapi_document_describes_every_route(api: Api) -> None:
    document = (await api.http.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    assert {
        "/v1/tasks",
        "/v1/tasks:batch",
        "/v1/stats",
        "/v1/agents/{namespace}/{name}/claim",
    } <= set(paths)
    submit_op = paths["/v1/tasks"]["post"]
    assert submit_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SubmitTask"
    )
    schemas = document["components"]["schemas"]
    assert schemas["SubmitTask"]["properties"]["priority"]["maximum"] == 100
    assert (
        "409"
        in paths["/v1/agents/{namespace}/{name}/tasks/{task_id}/complete"]["post"]["responses"]
    )
