"""AdmissionReview handling: request in, response out (pure parts; the API server's side
is tests/integration/test_admission.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agentarmy.api.policy import PolicySpec
from agentarmy.operator.admission import BadReview, answer
from agentarmy.policy import NamedPolicy, PolicySet

NS = "team-a"


def policies(mode: str = "enforce", **rules: Any) -> PolicySet:
    spec = PolicySpec.model_validate({"mode": mode, "rules": rules})
    return PolicySet([NamedPolicy(NS, "baseline", spec)])


def fleet(replicas: int = 1, image: str = "ghcr.io/acme/a:1") -> dict[str, Any]:
    return {
        "metadata": {"name": "f", "namespace": NS, "labels": {"team": "a"}},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"capabilities": ["echo"], "image": image}},
        },
    }


def review(
    obj: Any, old: Any = None, resource: str = "fleets", sub: str = "", operation: str = "CREATE"
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": "u-1",
        "resource": {"group": "agentarmy.io", "version": "v1alpha1", "resource": resource},
        "namespace": NS,
        "operation": operation,
        "object": obj,
        "oldObject": old,
    }
    if sub:
        request["subResource"] = sub
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


async def no_fleet(namespace: str, name: str) -> None:
    return None


async def run(
    body: dict[str, Any], policy_set: PolicySet, fleets: Any = no_fleet
) -> dict[str, Any]:
    result: dict[str, Any] = (await answer(body, lambda _: policy_set, fleets))["response"]
    assert result["uid"] == "u-1"
    return result


async def test_a_denial_names_policy_rule_and_field() -> None:
    response = await run(
        review(fleet(image="evil.io/x")), policies(allowedImageRegistries=["ghcr.io/acme/"])
    )
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert response["status"]["message"] == (
        f'policy {NS}/baseline, rule allowedImageRegistries: spec.template.spec.image "evil.io/x" '
        "is not under ghcr.io/acme/"
    )


async def test_audit_findings_come_back_as_warnings() -> None:
    response = await run(review(fleet(replicas=9)), policies("audit", maxReplicasPerFleet=3))
    assert response["allowed"] is True
    assert response["warnings"] == [
        f"policy {NS}/baseline, rule maxReplicasPerFleet: spec.replicas 9 is above the limit of 3 "
        "(audit mode: admitted)"
    ]


async def test_an_update_may_shrink_but_not_grow_past_the_limit() -> None:
    limit = policies(maxReplicasPerFleet=3)
    shrink = await run(review(fleet(5), fleet(6), operation="UPDATE"), limit)
    assert shrink["allowed"] is True and "already so before this change" in shrink["warnings"][0]
    grow = await run(review(fleet(7), fleet(6), operation="UPDATE"), limit)
    assert grow["allowed"] is False


async def test_an_update_that_changes_the_image_to_another_forbidden_one_is_denied() -> None:
    rules = policies(allowedImageRegistries=["ghcr.io/acme/"])
    same = await run(
        review(fleet(image="evil.io/x"), fleet(image="evil.io/x"), operation="UPDATE"), rules
    )
    assert same["allowed"] is True
    other = await run(
        review(fleet(image="evil.io/y"), fleet(image="evil.io/x"), operation="UPDATE"), rules
    )
    assert other["allowed"] is False


async def test_scale_reads_the_fleet_for_its_labels() -> None:
    async def stored(namespace: str, name: str) -> dict[str, Any]:
        return fleet(2)

    scale = {"metadata": {"name": "f", "namespace": NS}, "spec": {"replicas": 5}}
    old = {"metadata": {"name": "f", "namespace": NS}, "spec": {"replicas": 2}}
    response = await run(
        review(scale, old, sub="scale", operation="UPDATE"), policies(maxReplicasPerFleet=3), stored
    )
    assert response["allowed"] is False
    assert "spec.replicas 5 is above the limit of 3" in response["status"]["message"]


async def test_an_invalid_policy_is_denied_with_its_fields() -> None:
    body = {
        "metadata": {"name": "p", "namespace": NS},
        "spec": {
            "rules": {"allowedTools": ["git.["]},
            "selector": {"matchLabels": {"bad key": "x"}},
        },
    }
    response = await run(review(body, resource="policies"), PolicySet())
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "spec.rules.allowedTools[0]" in message and "spec.selector.matchLabels" in message


async def test_a_spec_the_models_refuse_is_denied_with_the_field() -> None:
    bad = fleet()
    bad["spec"]["replicas"] = -1
    response = await run(review(bad), PolicySet())
    assert response["allowed"] is False and "spec.replicas" in response["status"]["message"]


async def test_an_object_being_deleted_is_always_admitted() -> None:
    leaving = fleet(image="evil.io/x")
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    response = await run(
        review(leaving, fleet(image="evil.io/y"), operation="UPDATE"),
        policies(allowedImageRegistries=["ghcr.io/acme/"]),
    )
    assert response["allowed"] is True


@pytest.mark.parametrize("body", [{}, {"request": {}}, {"request": "x"}])
async def test_a_request_that_is_no_review_is_refused(body: Any) -> None:
    with pytest.raises(BadReview):
        await answer(body, lambda _: PolicySet(), no_fleet)
