"""The generated CRDs on a real API server: installed, examples apply, bad
objects are refused by the server with the offending field named, printer
columns and the scale subresource work."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.api.resources import RESOURCES

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
API = "agentarmy.io/v1alpha1"

AGENT: dict[str, Any] = {
    "apiVersion": API,
    "kind": "Agent",
    "metadata": {"name": "a"},
    "spec": {"capabilities": ["echo"]},
}
FLEET: dict[str, Any] = {
    "apiVersion": API,
    "kind": "Fleet",
    "metadata": {"name": "f"},
    "spec": {"replicas": 2, "template": {"spec": {"capabilities": ["echo"]}}},
}
POLICY: dict[str, Any] = {
    "apiVersion": API,
    "kind": "Policy",
    "metadata": {"name": "p"},
    "spec": {},
}
TASK: dict[str, Any] = {
    "apiVersion": API,
    "kind": "Task",
    "metadata": {"name": "t"},
    "spec": {"fleet": "echo", "capability": "echo"},
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of base with the dotted path set (creating maps on the way)."""
    doc = copy.deepcopy(base)
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return doc


# (case id, object, text the server's message must contain: the offending field)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("agent-no-capabilities", _with(AGENT, "spec.capabilities", []), "spec.capabilities"),
    (
        "agent-capability-uppercase",
        _with(AGENT, "spec.capabilities", ["Echo"]),
        "spec.capabilities[0]",
    ),
    ("agent-concurrency-zero", _with(AGENT, "spec.concurrency", 0), "spec.concurrency"),
    ("agent-concurrency-string", _with(AGENT, "spec.concurrency", "four"), "spec.concurrency"),
    (
        "agent-unknown-provider",
        _with(AGENT, "spec.model.provider", "skynet"),
        "spec.model.provider",
    ),
    (
        "agent-bad-duration",
        _with(AGENT, "spec.heartbeatInterval", "10 seconds"),
        "spec.heartbeatInterval",
    ),
    (
        "agent-endpoint-not-url",
        _with(AGENT, "spec.model.endpoint", "ftp://x"),
        "spec.model.endpoint",
    ),
    (
        "agent-secret-ref-no-key",
        _with(AGENT, "spec.model.apiKeySecretRef", {"name": "s"}),
        "spec.model.apiKeySecretRef.key",
    ),
    (
        "agent-env-value-and-from",
        _with(
            AGENT,
            "spec.env",
            [{"name": "X", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        ),
        "spec.env[0]",
    ),
    (
        "agent-env-bad-name",
        _with(AGENT, "spec.env", [{"name": "1X", "value": "1"}]),
        "spec.env[0].name",
    ),
    ("agent-bad-image", _with(AGENT, "spec.image", "Not An Image"), "spec.image"),
    ("agent-name-too-long", _with(AGENT, "metadata.name", "a" * 64), "metadata.name"),
    ("agent-skill-key", _with(AGENT, "spec.skills", {"Bad Key": "echo"}), "spec.skills"),
    ("fleet-negative-replicas", _with(FLEET, "spec.replicas", -1), "spec.replicas"),
    ("fleet-too-many-replicas", _with(FLEET, "spec.replicas", 10_001), "spec.replicas"),
    ("fleet-no-template", _with(FLEET, "spec", {"replicas": 1}), "spec.template"),
    (
        "fleet-surge-and-unavailable-zero",
        _with(FLEET, "spec.strategy", {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "0%"}}),
        "spec.strategy.rollingUpdate.maxUnavailable",
    ),
    (
        "fleet-unknown-strategy",
        _with(FLEET, "spec.strategy", {"type": "BlueGreen"}),
        "spec.strategy.type",
    ),
    (
        "fleet-canary-without-steps",
        _with(FLEET, "spec.strategy", {"type": "Canary"}),
        "spec.strategy.canary",
    ),
    (
        "fleet-canary-error-rate",
        _with(FLEET, "spec.strategy", {"type": "Canary", "canary": {"maxErrorRate": 1.5}}),
        "spec.strategy.canary.maxErrorRate",
    ),
    (
        "fleet-autoscaling-min-over-max",
        _with(FLEET, "spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
    ),
    (
        "fleet-replicas-outside-autoscaling",
        _with(FLEET, "spec.autoscaling", {"minReplicas": 3, "maxReplicas": 5}),
        "spec.replicas",
    ),
    (
        "fleet-selector-mismatch",
        _with(FLEET, "spec.selector", {"matchLabels": {"team": "x"}}),
        "spec.selector",
    ),
    ("fleet-name-too-long", _with(FLEET, "metadata.name", "f" * 53), "metadata.name"),
    ("policy-unknown-mode", _with(POLICY, "spec.mode", "yolo"), "spec.mode"),
    (
        "policy-rate-zero",
        _with(POLICY, "spec.rules", {"taskRateLimit": {"tasksPerMinute": 0}}),
        "spec.rules.taskRateLimit.tasksPerMinute",
    ),
    (
        "policy-bad-cidr",
        _with(POLICY, "spec.rules", {"egress": {"cidrs": ["everywhere"]}}),
        "spec.rules.egress.cidrs[0]",
    ),
    (
        "policy-bad-port",
        _with(POLICY, "spec.rules", {"egress": {"ports": [70000]}}),
        "spec.rules.egress.ports[0]",
    ),
    (
        "policy-bad-limit-kind",
        _with(POLICY, "spec.rules", {"requireResourceLimits": ["gpu"]}),
        "spec.rules.requireResourceLimits[0]",
    ),
    ("task-no-fleet", _with(TASK, "spec", {"capability": "echo"}), "spec.fleet"),
    ("task-fleet-not-dns", _with(TASK, "spec.fleet", "Echo_Fleet"), "spec.fleet"),
    ("task-priority-high", _with(TASK, "spec.priority", 101), "spec.priority"),
    ("task-max-attempts-zero", _with(TASK, "spec.maxAttempts", 0), "spec.maxAttempts"),
    ("task-bad-timeout", _with(TASK, "spec.timeout", "forever"), "spec.timeout"),
]


def test_crds_established(cluster: Any) -> None:
    for resource in RESOURCES:
        out = cluster.kubectl(
            "get",
            "crd",
            resource.crd_name,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Established")].status}',
        )
        assert out.stdout == "True", resource.crd_name


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_applies(cluster: Any, namespace: str, example: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / example))
    for doc in yaml.safe_load_all((EXAMPLES / example).read_text()):
        kind = doc["kind"].lower()
        cluster.kubectl("get", "-n", namespace, f"{kind}/{doc['metadata']['name']}")


def test_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 20
    assert {doc["kind"] for _, doc, _ in INVALID} == {"Agent", "Fleet", "Policy", "Task"}


@pytest.mark.parametrize(("case", "doc", "field"), INVALID, ids=[c for c, _, _ in INVALID])
def test_invalid_object_rejected_by_apiserver(
    cluster: Any, namespace: str, case: str, doc: dict[str, Any], field: str
) -> None:
    out = cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False)
    assert out.returncode != 0, f"{case}: the API server accepted an invalid object"
    assert "is invalid" in out.stderr, out.stderr
    assert field in out.stderr, f"{case}: message does not name {field}: {out.stderr}"


def test_task_spec_is_immutable(cluster: Any, namespace: str) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(TASK))
    out = cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "task/t",
        "--type=merge",
        "-p",
        '{"spec": {"priority": 99}}',
        check=False,
    )
    assert out.returncode != 0
    assert "immutable" in out.stderr


def test_printer_columns(cluster: Any, namespace: str) -> None:
    for doc in (AGENT, FLEET, POLICY, TASK):
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(doc))
    out = cluster.kubectl("get", "fleets,agents,policies,tasks", "-n", namespace).stdout
    for header in (
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",  # fleets
        "ROLE",
        "MODEL",
        "PHASE",  # agents
        "MODE",
        "FLEETS",
        "AGENTS",  # policies
        "FLEET",
        "CAPABILITY",
        "ATTEMPTS",
    ):  # tasks
        assert header in out, f"{header} missing from:\n{out}"
    wide = cluster.kubectl("get", "fleets", "-n", namespace, "-o", "wide").stdout
    assert "STRATEGY" in wide
    category = cluster.kubectl("get", "agentarmy", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(category) == sorted(
        [
            "agent.agentarmy.io/a",
            "fleet.agentarmy.io/f",
            "policy.agentarmy.io/p",
            "task.agentarmy.io/t",
        ]
    )


def test_scale_subresource(cluster: Any, namespace: str) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(FLEET))
    cluster.kubectl("scale", "-n", namespace, "fleet/f", "--replicas=3")
    replicas = cluster.kubectl("get", "-n", namespace, "fleet/f", "-o", "jsonpath={.spec.replicas}")
    assert replicas.stdout == "3"
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw", f"/apis/agentarmy.io/v1alpha1/namespaces/{namespace}/fleets/f/scale"
        ).stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3


def test_deployment_reaches_ready_on_kwok_nodes(cluster: Any, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "pause"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "pause"}},
            "template": {
                "metadata": {"labels": {"app": "pause"}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(deployment))
    cluster.kubectl("rollout", "status", "-n", namespace, "deployment/pause", "--timeout=90s")
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    ready = [
        p
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    ]
    assert len(ready) == 3
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in ready)
