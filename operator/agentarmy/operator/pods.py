"""Render the one Pod an Agent owns. Pure: same Agent in, same Pod out.

The Pod passes the `restricted` Pod Security Standard: non-root, no privilege
escalation, all capabilities dropped, seccomp RuntimeDefault, read-only root
filesystem with a writable /tmp. Secrets reach it by reference only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agentarmy.api import runtime_env as env
from agentarmy.api.agent import AgentSpec
from agentarmy.api.common import API_VERSION
from agentarmy.operator import labels

AGENT_COMMAND = ["armyctl", "agent"]
CONTAINER = "agent"
RUN_AS = 65532
TOKEN_DIR = env.DEFAULT_TOKEN_PATH.rsplit("/", 1)[0]
TOKEN_TTL_SECONDS = 3600
TERMINATION_GRACE_SECONDS = 30


@dataclass(frozen=True)
class PodContext:
    """What the Pod needs beyond the Agent: where the router is."""

    router_url: str
    router_ca_file: str = ""


def _runtime_env(
    name: str, namespace: str, fleet: str, template_hash: str, spec: AgentSpec, ctx: PodContext
) -> list[dict[str, Any]]:
    model = spec.model
    values = {
        env.TEMPLATE_HASH: template_hash,
        env.ROUTER_URL: ctx.router_url,
        env.ROUTER_CA_FILE: ctx.router_ca_file,
        env.AGENT_NAME: name,
        env.NAMESPACE: namespace,
        env.FLEET: fleet,
        env.ROLE: spec.role,
        env.CAPABILITIES: ",".join(spec.capabilities),
        env.SKILLS: json.dumps(spec.skills, sort_keys=True),
        env.CONCURRENCY: str(spec.concurrency),
        env.HEARTBEAT_INTERVAL: spec.heartbeatInterval,
        env.TOKEN_FILE: env.DEFAULT_TOKEN_PATH,
        env.MODEL_PROVIDER: model.provider,
        env.MODEL_NAME: model.name,
        env.MODEL_ENDPOINT: model.endpoint,
        env.ALLOWED_TOOLS: ",".join(spec.tools.allowed),
    }
    if spec.delegates:
        values[env.DELEGATES] = json.dumps([d.model_dump() for d in spec.delegates])
    if model.temperature is not None:
        values[env.MODEL_TEMPERATURE] = str(model.temperature)
    if model.maxOutputTokens is not None:
        values[env.MODEL_MAX_OUTPUT_TOKENS] = str(model.maxOutputTokens)
    if model.pricing is not None:
        prices = model.pricing
        values[env.MODEL_PRICING] = (
            f"{prices.inputPerMillionTokens:g},{prices.outputPerMillionTokens:g}"
        )
    result: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items() if v]
    if model.apiKeySecretRef is not None:
        ref = model.apiKeySecretRef
        result.append(
            {
                "name": env.MODEL_API_KEY,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    return result


def _user_env(spec: AgentSpec) -> list[dict[str, Any]]:
    result = []
    for var in spec.env:
        entry: dict[str, Any] = {"name": var.name}
        if var.value is not None:
            entry["value"] = var.value
        elif var.valueFrom is not None:
            source = var.valueFrom.model_dump(exclude_none=True)
            entry["valueFrom"] = source
        result.append(entry)
    return result


def _resources(spec: AgentSpec) -> dict[str, Any]:
    resources = spec.resources.model_dump(exclude_defaults=True)
    return {k: {r: str(q) for r, q in v.items()} for k, v in resources.items() if v}


def render_pod(
    name: str,
    namespace: str,
    uid: str,
    agent_labels: dict[str, str],
    spec: AgentSpec,
    ctx: PodContext,
) -> dict[str, Any]:
    """The Pod for Agent ``namespace/name``, with its hash label set."""
    fleet = agent_labels.get(labels.FLEET, "")
    pod_labels = {
        labels.AGENT: name,
        labels.ROLE: spec.role,
        labels.MANAGED_BY: labels.MANAGER,
        "app.kubernetes.io/name": "agentarmy-agent",
    }
    if fleet:
        pod_labels[labels.FLEET] = fleet
    container = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.imagePullPolicy,
        "command": AGENT_COMMAND,
        "env": _runtime_env(
            name, namespace, fleet or name, agent_labels.get(labels.TEMPLATE_HASH, ""), spec, ctx
        )
        + _user_env(spec),
        "resources": _resources(spec),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "router-token", "mountPath": TOKEN_DIR, "readOnly": True},
        ],
    }
    pod_spec = {
        "restartPolicy": "Never",
        "serviceAccountName": spec.serviceAccountName or "default",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            {
                "name": "router-token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": env.TOKEN_AUDIENCE,
                                "expirationSeconds": TOKEN_TTL_SECONDS,
                                "path": env.DEFAULT_TOKEN_PATH.rsplit("/", 1)[1],
                            }
                        }
                    ]
                },
            },
        ],
    }
    pod_labels[labels.POD_HASH] = labels.stable_hash({"labels": pod_labels, "spec": pod_spec})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": pod_labels,
            "ownerReferences": [labels.owner_reference(API_VERSION, "Agent", name, uid)],
        },
        "spec": pod_spec,
    }
