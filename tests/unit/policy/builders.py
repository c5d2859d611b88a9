"""Small builders for the policy library's tests: Policies, Agent and Fleet specs, subjects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentarmy.api.agent import AgentSpec
from agentarmy.api.fleet import FleetSpec
from agentarmy.api.policy import PolicySpec
from agentarmy.policy import NamedPolicy, Subject, agent_subject, fleet_subject, scale_subject

NS = "team-a"


def policy(
    name: str = "baseline",
    namespace: str = NS,
    *,
    mode: str = "enforce",
    selector: Mapping[str, Any] | None = None,
    **rules: Any,
) -> NamedPolicy:
    """A Policy with these rules (spec.rules keys, camelCase) and selector."""
    spec = PolicySpec.model_validate(
        {"mode": mode, "selector": dict(selector or {}), "rules": rules}
    )
    return NamedPolicy(namespace, name, spec)


def agent_spec(
    *,
    image: str = "ghcr.io/acme/agent:1",
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    tools: Sequence[str] = (),
    limits: Mapping[str, str] | None = None,
) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "capabilities": ["summarize"],
            "image": image,
            "model": {"provider": provider, "name": model},
            "tools": {"allowed": list(tools)},
            "resources": {"limits": dict(limits or {})},
        }
    )


def fleet_spec(
    *,
    replicas: int = 1,
    template_labels: Mapping[str, str] | None = None,
    autoscaling_max: int | None = None,
    autoscaling_enabled: bool = True,
    **agent: Any,
) -> FleetSpec:
    body: dict[str, Any] = {
        "replicas": replicas,
        "template": {
            "metadata": {"labels": dict(template_labels or {})},
            "spec": agent_spec(**agent).model_dump(mode="json", exclude_none=True),
        },
    }
    if autoscaling_max is not None:
        body["autoscaling"] = {
            "enabled": autoscaling_enabled,
            "minReplicas": 0,
            "maxReplicas": autoscaling_max,
        }
    return FleetSpec.model_validate(body)


def an_agent(
    labels: Mapping[str, str] | None = None,
    namespace: str = NS,
    name: str = "a1",
    **spec: Any,
) -> Subject:
    return agent_subject(namespace, name, dict(labels or {}), agent_spec(**spec))


def a_fleet(
    labels: Mapping[str, str] | None = None,
    namespace: str = NS,
    name: str = "f1",
    **spec: Any,
) -> Subject:
    return fleet_subject(namespace, name, dict(labels or {}), fleet_spec(**spec))


def a_scale(
    to: int,
    labels: Mapping[str, str] | None = None,
    namespace: str = NS,
    name: str = "f1",
    **spec: Any,
) -> Subject:
    """Fleet ``name`` (with ``spec``) scaled to ``to`` replicas."""
    return scale_subject(namespace, name, dict(labels or {}), fleet_spec(**spec), to)
