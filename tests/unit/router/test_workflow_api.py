"""Workflows through the router's HTTP API (in-process, real SQLite): a Policy's bounds on
depth and fan-out refuse a spawn naming the Policy and rule, and a resumed parent's lease
carries its children's results within a total size (larger ones by a marker)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import to_json

from agentarmy.api import wire
from agentarmy.router import lifecycle

Api = Any  # the `api` fixture (tests/unit/router/conftest.py)
LEASES = "/v1/agents/default/a1/tasks"
POLICY = "default/workflow-bounds"


async def leased_root(api: Api, concurrency: int = 4) -> dict[str, Any]:
    """A root task of fleet-a, leased to agent a1."""
    body = {
        "namespace": "default",
        "name": "a1",
        "fleet": "fleet-a",
        "capabilities": ["echo"],
        "concurrency": concurrency,
    }
    reply = await api.http.post("/v1/agents", json=body, headers=api.auth("agent"))
    assert reply.status_code == 200, reply.text
    task = {"fleet": "fleet-a", "capability": "echo"}
    reply = await api.http.post("/v1/tasks", json=task, headers=api.auth("client"))
    assert reply.status_code == 201, reply.text
    return await claim_one(api)


async def claim_one(api: Api) -> dict[str, Any]:
    reply = await api.http.post(
        "/v1/agents/default/a1/claim",
        json={"max": 1, "waitSeconds": 0},
        headers=api.auth("agent"),
    )
    assert reply.status_code == 200, reply.text
    (lease,) = reply.json()["tasks"]
    lease_: dict[str, Any] = lease
    return lease_


async def spawn(api: Api, lease: dict[str, Any], children: int, fleet: str = "fleet-b") -> Any:
    body = {
        "attempt": lease["attempt"],
        "tasks": [{"fleet": fleet, "capability": "echo"} for _ in range(children)],
    }
    return await api.http.post(
        f"{LEASES}/{lease['taskId']}/children", json=body, headers=api.auth("agent")
    )


async def bound(api: Api, **limits: int) -> None:
    rules = {k: {"value": v, "policy": POLICY} for k, v in limits.items()}
    reply = await api.http.put(
        "/v1/rules/default",
        json={"fleets": [{"fleet": "fleet-a", "policies": [POLICY], **rules}]},
        headers=api.auth("admin"),
    )
    assert reply.status_code == 200, reply.text


async def test_a_policy_bound_on_fan_out_refuses_a_wider_wait(api: Api) -> None:
    await bound(api, maxChildrenPerWait=2)
    lease = await leased_root(api)
    refused = await spawn(api, lease, 3)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["policy"], error["rule"], error["field"]) == (
        POLICY,
        "maxChildrenPerWait",
        "tasks",
    )
    assert "allows at most 2 per wait" in error["message"] and POLICY in error["message"]
    assert (await spawn(api, lease, 2)).status_code == 201  # within the bound: still leased


async def test_a_policy_bound_on_depth_refuses_a_deeper_tree(api: Api) -> None:
    await bound(api, maxTaskDepth=1)
    lease = await leased_root(api)
    assert (await spawn(api, lease, 1, fleet="fleet-a")).status_code == 201
    child = await claim_one(api)  # the child, of fleet-a too, at depth 1
    assert child["parentTaskId"] == lease["taskId"]
    refused = await spawn(api, child, 1)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["policy"], error["rule"]) == (POLICY, "maxTaskDepth")
    assert "at depth 1" in error["message"] and "allows trees 1 deep" in error["message"]


async def test_a_looser_rule_than_the_router_default_leaves_the_default(api: Api) -> None:
    await bound(api, maxTaskDepth=100)
    lease = await leased_root(api)
    for _ in range(wire.MAX_DEPTH):
        assert (await spawn(api, lease, 1, fleet="fleet-a")).status_code == 201
        lease = await claim_one(api)
    refused = await spawn(api, lease, 1)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "policy" not in error and f"allows trees {wire.MAX_DEPTH} deep" in error["message"]


async def test_a_resumed_lease_carries_large_results_as_markers(api: Api) -> None:
    count, large = 38, 250_000  # 36 of 250 kB and two small: over 8 MiB in all
    lease = await leased_root(api, concurrency=count)
    assert (await spawn(api, lease, count, fleet="fleet-a")).status_code == 201
    reply = await api.http.post(
        "/v1/agents/default/a1/claim",
        json={"max": count, "waitSeconds": 0},
        headers=api.auth("agent"),
    )
    children = reply.json()["tasks"]
    sizes = {c["taskId"]: (10 if i in (5, 30) else large) for i, c in enumerate(children)}
    reports = [
        {
            "taskId": c["taskId"],
            "attempt": c["attempt"],
            "outcome": "succeeded",
            "result": {"text": "x" * sizes[c["taskId"]]},
        }
        for c in children
    ]
    for start in range(0, count, 8):
        reply = await api.http.post(
            "/v1/agents/default/a1/results",
            json={"results": reports[start : start + 8]},
            headers=api.auth("agent"),
        )
        assert reply.status_code == 200, reply.text
    resumed = await claim_one(api)
    assert resumed["taskId"] == lease["taskId"]
    carried = {c["taskId"]: c["result"] for c in resumed["children"]}
    assert list(carried) == list(sizes)  # in start order
    omitted = [t for t, result in carried.items() if result.get("omitted")]
    assert len(to_json(resumed["children"])) <= lifecycle.MAX_CHILD_RESULTS_BYTES
    assert len(omitted) == 36 - 33  # 33 of the large ones fit in 8 MiB, with the small ones
    for task_id, result in carried.items():
        if task_id in omitted:
            assert sizes[task_id] == large and result == lifecycle.omitted_marker(task_id)
        else:
            assert result == {"text": "x" * sizes[task_id]}
    whole = await api.http.get(f"/v1/tasks/{omitted[0]}", headers=api.auth("client"))
    assert whole.json()["result"]["text"] == "x" * large  # fetched by its id


def task_with(result_bytes: int, index: int) -> wire.Task:
    request = wire.SubmitTask(fleet="f", capability="echo")
    task = lifecycle.new_task(request, f"t-{index:024x}", seq=index, now=0.0)
    return task.model_copy(update={"result": {"r": "x" * result_bytes}, "phase": "Succeeded"})


@given(st.lists(st.integers(0, 5000), max_size=40), st.integers(0, 50_000))
def test_outcomes_stay_within_the_budget_and_keep_what_fits(
    result_sizes: list[int], budget: int
) -> None:
    children = [task_with(size, i) for i, size in enumerate(result_sizes)]
    outcomes = lifecycle.child_outcomes(children, budget)
    assert [o.taskId for o in outcomes] == [c.id for c in children]
    kept = [o for o in outcomes if not (o.result or {}).get("omitted")]
    carried = sum(len(to_json(o.input)) + len(to_json(o.result)) for o in outcomes)
    if budget >= lifecycle.MARKER_BYTES * len(children):
        assert carried <= budget
    if (
        sum(len(to_json(c.input)) + len(to_json(c.result)) for c in children)
        + (lifecycle.MARKER_BYTES * len(children))
        <= budget
    ):
        assert len(kept) == len(children)  # nothing is left out when everything fits
    omitted = [o for o in outcomes if o not in kept]
    for outcome in omitted:
        assert outcome.result == lifecycle.omitted_marker(outcome.taskId)
        assert len(to_json(outcome.result)) <= lifecycle.MARKER_BYTES
    size = dict(zip([c.id for c in children], result_sizes, strict=True))
    if kept and omitted:  # the smallest are carried whole
        assert max(size[o.taskId] for o in kept) <= min(size[o.taskId] for o in omitted)
