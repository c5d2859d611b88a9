"""Static tokens and TokenReview (against an in-process fake API server speaking the same JSON)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agentarmy.router.auth import KubeAccess, Principal, Role, StaticTokens, TokenReviewer
from agentarmy.router.errors import ApiError


async def test_static_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "- {token: aaaaaaaaaaaaaaaa1, name: ops, role: admin}\n"
        "- {token: bbbbbbbbbbbbbbbb1, name: fa, role: agent, namespace: team, fleet: fa}\n"
    )
    tokens = StaticTokens.from_file(path)
    admin = await tokens.authenticate("aaaaaaaaaaaaaaaa1")
    agent = await tokens.authenticate("bbbbbbbbbbbbbbbb1")
    assert admin is not None and admin.role == "admin"
    assert agent is not None and (agent.namespace, agent.fleet) == ("team", "fa")
    assert await tokens.authenticate("nope") is None
    agent.check_agent("team", "anyone", "fa")
    with pytest.raises(ApiError) as refused:
        agent.check_agent("team", "anyone", "fb")
    assert refused.value.status == 403


def test_agent_tokens_need_a_fleet(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("- {token: cccccccccccccccc1, name: x, role: agent}\n")
    with pytest.raises(ValueError, match="namespace and a fleet"):
        StaticTokens.from_file(path)


async def test_a_metrics_token_reads_metrics_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("- {token: dddddddddddddddd1, name: prometheus, role: metrics}\n")
    reader = await StaticTokens.from_file(path).authenticate("dddddddddddddddd1")
    assert reader is not None and reader.role == "metrics"
    reader.check_metrics()
    refusals = [
        lambda: reader.check_caller("team"),  # submit, read, cancel, list, approvals, resume
        lambda: reader.check_agent("team", "a", "fa"),  # register, claim, report
        reader.check_admin,  # stats, rules, halts
    ]
    for refusal in refusals:
        with pytest.raises(ApiError) as refused:
            refusal()
        assert refused.value.status == 403 and "prometheus" in refused.value.message


@pytest.mark.parametrize(
    ("role", "namespace", "fleet", "readable"),
    [
        ("admin", None, None, True),
        ("metrics", None, None, True),
        ("client", None, None, False),  # /metrics names every namespace's fleets
        ("client", "team", None, False),
        ("agent", "team", "fa", False),
    ],
)
def test_only_admins_and_metrics_readers_read_metrics(
    role: Role, namespace: str | None, fleet: str | None, readable: bool
) -> None:
    principal = Principal("who", role, namespace, fleet)
    if readable:
        principal.check_metrics()
        return
    with pytest.raises(ApiError) as refused:
        principal.check_metrics()
    assert refused.value.status == 403 and f"role {role}" in refused.value.message


def test_metrics_tokens_take_no_scope(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("- {token: eeeeeeeeeeeeeeee1, name: scraper, role: metrics, namespace: t}\n")
    with pytest.raises(ValueError, match=r"scraper.*no namespace, fleet or agent"):
        StaticTokens.from_file(path)


class FakeApiServer:
    """Answers TokenReviews and pod GETs like kube-apiserver; records what it was asked."""

    def __init__(self) -> None:
        self.reviews: list[dict[str, Any]] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}

    async def review(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.reviews.append(body)
        user = self.users.get(body["spec"]["token"])
        status: dict[str, Any] = {"authenticated": user is not None}
        if user is not None:
            status.update(user=user, audiences=body["spec"]["audiences"])
        return web.json_response({"status": status})

    async def pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(f"{request.match_info['ns']}/{request.match_info['name']}")
        return web.json_response(pod) if pod else web.json_response({}, status=404)


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[FakeApiServer, str]]:
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", fake.review)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", fake.pod)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def pod_user(ns: str, sa: str, pod: str, uid: str) -> dict[str, Any]:
    return {
        "username": f"system:serviceaccount:{ns}:{sa}",
        "extra": {
            "authentication.kubernetes.io/pod-name": [pod],
            "authentication.kubernetes.io/pod-uid": [uid],
        },
    }


async def test_token_review_maps_the_pod_to_its_fleet(fake_api: tuple[FakeApiServer, str]) -> None:
    fake, url = fake_api
    fake.users["pod-token"] = pod_user("team", "agents", "fa-0-xyz", "uid-1")
    fake.pods["team/fa-0-xyz"] = {
        "metadata": {
            "uid": "uid-1",
            "labels": {"agentarmy.io/fleet": "fa", "agentarmy.io/agent": "fa-0"},
        }
    }
    fake.users["operator-token"] = {"username": "system:serviceaccount:agentarmy-system:operator"}
    reviewer = TokenReviewer(KubeAccess(url), admins=["agentarmy-system:operator"])
    try:
        agent = await reviewer.authenticate("pod-token")
        assert agent is not None and (agent.role, agent.namespace, agent.fleet, agent.agent) == (
            "agent",
            "team",
            "fa",
            "fa-0",
        )
        assert fake.reviews[0]["spec"]["audiences"] == ["agentarmy-router"]
        await reviewer.authenticate("pod-token")
        assert len(fake.reviews) == 1  # cached
        admin = await reviewer.authenticate("operator-token")
        assert admin is not None and admin.role == "admin"
        assert await reviewer.authenticate("forged") is None
    finally:
        await reviewer.close()


async def test_token_review_knows_metrics_readers(fake_api: tuple[FakeApiServer, str]) -> None:
    fake, url = fake_api
    fake.users["scraper-token"] = {"username": "system:serviceaccount:monitoring:scraper"}
    fake.users["other-token"] = {"username": "system:serviceaccount:monitoring:other"}
    reviewer = TokenReviewer(KubeAccess(url), metrics=["monitoring:scraper"])
    try:
        reader = await reviewer.authenticate("scraper-token")
        assert reader is not None and (reader.role, reader.namespace) == ("metrics", None)
        # Not listed and not bound to a pod: no principal at all.
        assert await reviewer.authenticate("other-token") is None
    finally:
        await reviewer.close()


async def test_token_of_a_replaced_pod_is_refused(fake_api: tuple[FakeApiServer, str]) -> None:
    fake, url = fake_api
    fake.users["old-token"] = pod_user("team", "agents", "fa-0", "uid-old")
    fake.pods["team/fa-0"] = {
        "metadata": {"uid": "uid-new", "labels": {"agentarmy.io/fleet": "fa"}}
    }
    fake.users["unlabelled"] = pod_user("team", "agents", "plain", "u")
    fake.pods["team/plain"] = {"metadata": {"uid": "u", "labels": {}}}
    reviewer = TokenReviewer(KubeAccess(url))
    try:
        assert await reviewer.authenticate("old-token") is None
        assert await reviewer.authenticate("unlabelled") is None
    finally:
        await reviewer.close()
