"""Policies at the API server's door: the validating webhook, called by the real
kube-apiserver over TLS, served by two operator replicas."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509

from agentarmy.devcluster.admission import (
    LocalAdmission,
    issue_serving_certificate,
)
from tests.integration.operator_process import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    get_json,
    wait_for,
)

pytestmark = pytest.mark.integration

DENIED = 'admission webhook "policy.agentarmy.io" denied the request'


def start_replica(cluster: Any, admission: LocalAdmission, name: str) -> OperatorProcess:
    """A replica whose Policy catalog is loaded: it can answer admission."""
    return OperatorProcess(cluster.kubeconfig, name, admission=admission).start().wait_ready(40)


@pytest.fixture(scope="module")
def replicas(cluster: Any, admission: LocalAdmission) -> Iterator[list[OperatorProcess]]:
    processes = [start_replica(cluster, admission, f"admission-{i}") for i in range(2)]
    try:
        wait_for(lambda: any(p.is_leader() for p in processes), 40, what="a leader")
        yield processes
    finally:
        for process in processes:
            process.stop()


def fleet(
    name: str, replicas: int = 1, image: str = "ghcr.io/acme/agent:1", **spec: Any
) -> dict[str, Any]:
    template_spec = {
        "capabilities": ["echo"],
        "image": image,
        "resources": {"limits": {"memory": "256Mi"}},
        **spec,
    }
    return {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"team": "a"}}, "spec": template_spec},
        },
    }


def agent(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "capabilities": ["echo"],
        "image": "ghcr.io/acme/agent:1",
        "resources": {"limits": {"memory": "256Mi"}},
        **spec,
    }
    return {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": body,
    }


def policy(name: str = "baseline", mode: str = "enforce", **rules: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"mode": mode, "rules": rules},
    }


def kubectl(cluster: Any, namespace: str, *args: str, body: Any = None) -> Any:
    text = None if body is None else json.dumps(body)
    return cluster.kubectl(*args, "-n", namespace, input=text, check=False)


def apply(cluster: Any, namespace: str, body: Any, *extra: str) -> Any:
    return kubectl(cluster, namespace, "apply", "-f", "-", *extra, body=body)


def applied(cluster: Any, namespace: str, body: Any) -> Any:
    result = apply(cluster, namespace, body)
    assert result.returncode == 0, result.stderr
    return result


BASELINE = {
    "allowedImageRegistries": ["ghcr.io/acme/"],
    "models": {"providers": ["none", "openai"], "names": ["gpt-4o*"]},
    "allowedTools": ["git.*"],
    "maxReplicasPerFleet": 3,
    "requireResourceLimits": ["memory"],
}


@pytest.mark.parametrize(
    ("body", "rule", "field"),
    [
        (
            fleet("img", image="evil.io/x"),
            "allowedImageRegistries",
            'spec.template.spec.image "evil.io/x"',
        ),
        (agent("img", image="ghcr.io/acmeevil/x:1"), "allowedImageRegistries", "spec.image"),
        (
            fleet("prov", model={"provider": "anthropic", "name": "claude"}),
            "models",
            'spec.template.spec.model.provider "anthropic"',
        ),
        (
            agent("name", model={"provider": "openai", "name": "o1"}),
            "models",
            'spec.model.name "o1"',
        ),
        (
            fleet("tools", tools={"allowed": ["git.diff", "shell.exec"]}),
            "allowedTools",
            'spec.template.spec.tools.allowed[1] "shell.exec"',
        ),
        (
            fleet("many", replicas=4),
            "maxReplicasPerFleet",
            "spec.replicas 4 is above the limit of 3",
        ),
        (
            agent("limits", resources={"limits": {"cpu": "1"}}),
            "requireResourceLimits",
            "spec.resources.limits.memory must be set",
        ),
    ],
    ids=["fleet-image", "agent-image", "provider", "model-name", "tool", "replicas", "limits"],
)
def test_each_rule_denies_naming_policy_rule_and_field(
    cluster: Any, namespace: str, replicas: Any, body: Any, rule: str, field: str
) -> None:
    applied(cluster, namespace, policy(**BASELINE))
    result = apply(cluster, namespace, body)
    assert result.returncode != 0, f"{body['metadata']['name']} was admitted"
    assert DENIED in result.stderr
    assert f"policy {namespace}/baseline, rule {rule}: " in result.stderr
    assert field in result.stderr
    # What does comply is admitted by the same Policy.
    applied(cluster, namespace, fleet("fine", replicas=3, tools={"allowed": ["git.diff"]}))


def test_audit_mode_admits_with_a_warning(cluster: Any, namespace: str, replicas: Any) -> None:
    applied(
        cluster, namespace, policy("watch", mode="audit", allowedImageRegistries=["ghcr.io/acme/"])
    )
    result = applied(cluster, namespace, fleet("outsider", image="docker.io/library/busybox"))
    assert "Warning: policy " + namespace + "/watch, rule allowedImageRegistries" in result.stderr
    assert "(audit mode: admitted)" in result.stderr


def test_policy_edit_changes_the_next_verdict_within_two_seconds(
    cluster: Any, namespace: str, replicas: Any
) -> None:
    applied(cluster, namespace, policy(maxReplicasPerFleet=5))
    probe = fleet("probe", replicas=4)
    result = kubectl(cluster, namespace, "create", "--dry-run=server", "-f", "-", body=probe)
    assert result.returncode == 0, result.stderr
    applied(cluster, namespace, policy(maxReplicasPerFleet=3))
    edited = time.monotonic()
    while True:
        result = kubectl(cluster, namespace, "create", "--dry-run=server", "-f", "-", body=probe)
        if result.returncode != 0:
            break
        assert time.monotonic() - edited < 2.0, "the edited Policy was not in force after 2 s"
        time.sleep(0.05)
    assert "rule maxReplicasPerFleet: spec.replicas 4 is above the limit of 3" in result.stderr


def test_kubectl_scale_past_the_limit_is_denied(
    cluster: Any, namespace: str, replicas: Any
) -> None:
    applied(cluster, namespace, fleet("scaled", replicas=2))
    applied(cluster, namespace, policy(maxReplicasPerFleet=3))
    result = kubectl(cluster, namespace, "scale", "fleet/scaled", "--replicas=5")
    assert result.returncode != 0
    assert DENIED in result.stderr
    assert "rule maxReplicasPerFleet: spec.replicas 5 is above the limit of 3" in result.stderr
    ok = kubectl(cluster, namespace, "scale", "fleet/scaled", "--replicas=3")
    assert ok.returncode == 0, ok.stderr
    assert get_json(cluster, "fleet", "scaled", "-n", namespace)["spec"]["replicas"] == 3


def test_an_update_is_judged_on_what_it_adds(cluster: Any, namespace: str, replicas: Any) -> None:
    """A Fleet above a limit set after it existed may shrink and relabel, not grow."""
    applied(cluster, namespace, fleet("big", replicas=5))
    applied(cluster, namespace, policy(maxReplicasPerFleet=3))
    labelled = kubectl(cluster, namespace, "label", "fleet/big", "tier=gold")
    assert labelled.returncode == 0, labelled.stderr
    assert "already so before this change" in labelled.stderr
    assert kubectl(cluster, namespace, "scale", "fleet/big", "--replicas=4").returncode == 0
    grown = kubectl(cluster, namespace, "scale", "fleet/big", "--replicas=6")
    assert grown.returncode != 0 and "above the limit of 3" in grown.stderr


def test_an_invalid_policy_is_refused_naming_the_field(
    cluster: Any, namespace: str, replicas: Any
) -> None:
    bad = policy(allowedTools=["git.["])
    bad["spec"]["selector"] = {"matchLabels": {"not a key!": "x"}}
    result = apply(cluster, namespace, bad)
    assert result.returncode != 0 and DENIED in result.stderr
    assert "spec.rules.allowedTools[0]" in result.stderr
    assert "spec.selector.matchLabels" in result.stderr


def test_a_tightened_policy_shows_on_running_fleets_and_on_itself(
    cluster: Any, namespace: str, replicas: Any
) -> None:
    applied(cluster, namespace, fleet("early", replicas=3))
    applied(cluster, namespace, policy("late", maxReplicasPerFleet=2))

    def violation() -> Any:
        body = get_json(cluster, "fleet", "early", "-n", namespace)
        conditions = {c["type"]: c for c in body.get("status", {}).get("conditions", [])}
        found = conditions.get("PolicyCompliant")
        return found if found and found["status"] == "False" else None

    condition = wait_for(violation, 30, what="PolicyCompliant=False on the Fleet")
    assert condition["reason"] == "PolicyViolation"
    assert f"policy {namespace}/late, rule maxReplicasPerFleet" in condition["message"]

    def reported() -> Any:
        status = get_json(cluster, "policy", "late", "-n", namespace).get("status", {})
        return status if status.get("violations") else None

    status = wait_for(reported, 30, what="the violation on the Policy's status")
    assert status["matchedFleets"] == 1
    assert {"kind": "Fleet", "name": "early", "rule": "maxReplicasPerFleet"}.items() <= status[
        "recentViolations"
    ][0].items()
    events = get_json(
        cluster, "events", "-n", namespace, "--field-selector=involvedObject.name=early"
    )
    assert any(e["reason"] == "PolicyViolation" for e in events["items"])


def served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_rotated_certificate_is_served_without_a_restart(
    cluster: Any, namespace: str, admission: LocalAdmission, replicas: list[OperatorProcess]
) -> None:
    before = served_serial(admission.port)
    pids = [p.pid for p in replicas]
    rotated = issue_serving_certificate(cluster.pki, OPERATOR_NAMESPACE)
    new = x509.load_pem_x509_certificate(rotated.cert.read_bytes()).serial_number
    assert new != before

    def all_serve_new() -> bool:
        # Connections land on either replica: sample several.
        return all(served_serial(admission.port) == new for _ in range(8))

    wait_for(all_serve_new, 15, what="every replica to serve the rotated certificate")
    assert [p.pid for p in replicas] == pids and all(p.process.poll() is None for p in replicas)  # type: ignore[union-attr]
    applied(cluster, namespace, policy(maxReplicasPerFleet=3))
    result = apply(cluster, namespace, fleet("after-rotation", replicas=4))
    assert DENIED in result.stderr, "the API server did not reach the webhook after rotation"


def test_killing_one_replica_leaves_admission_working(
    cluster: Any, namespace: str, admission: LocalAdmission, replicas: list[OperatorProcess]
) -> None:
    applied(cluster, namespace, policy(maxReplicasPerFleet=3))
    victim = replicas[0]
    victim.kill()
    try:
        for i in range(10):
            applied(cluster, namespace, fleet(f"still-{i}"))
            denied = apply(cluster, namespace, fleet(f"over-{i}", replicas=4))
            assert DENIED in denied.stderr, denied.stderr
    finally:
        replicas[0] = start_replica(cluster, admission, "admission-0b")


def test_with_the_operator_stopped_our_kinds_fail_closed_and_nothing_else_does(
    cluster: Any, namespace: str, admission: LocalAdmission, replicas: list[OperatorProcess]
) -> None:
    for process in replicas:
        process.stop()
    try:
        result = apply(cluster, namespace, fleet("closed"))
        assert result.returncode != 0
        assert 'failed calling webhook "policy.agentarmy.io"' in result.stderr
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"still-works-{namespace}"},
            "data": {"a": "b"},
        }
        created = kubectl(cluster, "kube-system", "apply", "-f", "-", body=config_map)
        assert created.returncode == 0, created.stderr
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"still-works-{namespace}"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "x"}},
                "template": {
                    "metadata": {"labels": {"app": "x"}},
                    "spec": {"containers": [{"name": "x", "image": "busybox"}]},
                },
            },
        }
        created = kubectl(cluster, "default", "apply", "-f", "-", body=deployment)
        assert created.returncode == 0, created.stderr
    finally:
        cluster.kubectl(
            "delete", "configmap", f"still-works-{namespace}", "-n", "kube-system", check=False
        )
        cluster.kubectl(
            "delete", "deployment", f"still-works-{namespace}", "-n", "default", check=False
        )
        replicas[:] = [start_replica(cluster, admission, f"admission-r{i}") for i in range(2)]


def test_every_verdict_is_a_decision_line_and_a_counter(
    cluster: Any, namespace: str, replicas: list[OperatorProcess]
) -> None:
    def denials() -> float:
        return sum(
            v
            for p in replicas
            for k, v in p.metrics().items()
            if k.startswith("agentarmy_policy_verdicts_total{")
            and 'source="admission"' in k
            and 'verdict="deny"' in k
            and 'rule="maxReplicasPerFleet"' in k
        )

    applied(cluster, namespace, policy(maxReplicasPerFleet=3))
    before = denials()
    assert DENIED in apply(cluster, namespace, fleet("logged", replicas=9)).stderr
    assert denials() == before + 1
    lines = [
        json.loads(line)
        for p in replicas
        for line in p.log.read_text(errors="replace").splitlines()
        if '"policy-verdict"' in line and f'"{namespace}"' in line
    ]
    denial = next(x for x in lines if x["object"] == "logged" and x["verdict"] == "deny")
    assert denial["source"] == "admission" and denial["operation"] == "CREATE"
    assert denial["policy"] == f"{namespace}/baseline" and denial["rule"] == "maxReplicasPerFleet"
    assert "spec.replicas 9 is above the limit of 3" in denial["reason"]
