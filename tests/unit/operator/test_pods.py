"""The rendered agent Pod: restricted security, secrets by reference, stable hash."""

from __future__ import annotations

from agentarmy.api.agent import AgentSpec
from agentarmy.operator import labels
from agentarmy.operator.pods import PodContext, render_pod

CTX = PodContext(router_url="http://router:8080")


def render(spec: dict[str, object]) -> dict[str, object]:
    return render_pod("a1", "ns", "uid-1", {labels.FLEET: "f"}, AgentSpec.model_validate(spec), CTX)


def test_restricted_security_context() -> None:
    pod = render({"capabilities": ["echo"]})
    spec = pod["spec"]
    assert isinstance(spec, dict)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_api_key_only_by_reference() -> None:
    pod = render(
        {
            "capabilities": ["echo"],
            "model": {
                "provider": "openai",
                "name": "m",
                "apiKeySecretRef": {"name": "s", "key": "k"},
            },
        }
    )
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}  # type: ignore[index]
    assert env["AGENTARMY_MODEL_API_KEY"] == {
        "name": "AGENTARMY_MODEL_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
    }
    assert env["AGENTARMY_FLEET"]["value"] == "f"


def test_hash_changes_with_the_spec_and_only_then() -> None:
    first = render({"capabilities": ["echo"]})["metadata"]
    again = render({"capabilities": ["echo"]})["metadata"]
    changed = render({"capabilities": ["echo"], "concurrency": 2})["metadata"]
    h = labels.POD_HASH
    assert first["labels"][h] == again["labels"][h]  # type: ignore[index]
    assert first["labels"][h] != changed["labels"][h]  # type: ignore[index]


def test_owner_reference_points_at_the_agent() -> None:
    owner = render({"capabilities": ["echo"]})["metadata"]["ownerReferences"][0]  # type: ignore[index]
    assert owner == {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Agent",
        "name": "a1",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_a_fleet_agent_tells_the_router_its_template_hash() -> None:
    spec = AgentSpec.model_validate({"capabilities": ["echo"]})
    member = render_pod(
        "a1", "ns", "uid-1", {labels.FLEET: "f", labels.TEMPLATE_HASH: "abc123"}, spec, CTX
    )
    env = {e["name"]: e.get("value") for e in member["spec"]["containers"][0]["env"]}
    assert env["AGENTARMY_TEMPLATE_HASH"] == "abc123"
    standalone = render_pod("a1", "ns", "uid-1", {}, spec, CTX)
    names = {e["name"] for e in standalone["spec"]["containers"][0]["env"]}
    assert "AGENTARMY_TEMPLATE_HASH" not in names  # no template, no hash
