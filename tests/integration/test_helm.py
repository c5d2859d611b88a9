"""The Helm chart: lints, renders what manifests/base renders (RBAC cannot
drift apart), refuses bad values with a clear message (values.schema.json names the key
of a typo), and its workloads are
admitted under the `restricted` Pod Security Standard."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.devcluster import binaries
from agentarmy.operator.webhookconfig import webhook_configuration

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "agentarmy"
RBAC_KINDS = ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding", "ServiceAccount")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binaries.ensure(["helm"])
    return subprocess.run(
        [str(binaries.kube_binary("helm")), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def render(*values: str, namespace: str = "agentarmy-system") -> list[dict[str, Any]]:
    out = helm("template", "agentarmy", str(CHART), "-n", namespace, *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind_and_name(docs: list[dict[str, Any]], kinds: tuple[str, ...]) -> dict[str, Any]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs if d["kind"] in kinds}


def test_chart_lints() -> None:
    assert "0 chart(s) failed" in helm("lint", str(CHART)).stdout


def test_chart_rbac_matches_the_kustomize_base(cluster: Any) -> None:
    base = [
        d
        for d in yaml.safe_load_all(
            cluster.kubectl("kustomize", str(REPO / "manifests" / "base")).stdout
        )
        if d
    ]
    chart = by_kind_and_name(render(), RBAC_KINDS)
    kustomize = by_kind_and_name(base, RBAC_KINDS)
    assert sorted(chart) == sorted(kustomize)
    for key, doc in chart.items():
        for field in ("rules", "roleRef", "subjects"):
            assert doc.get(field) == kustomize[key].get(field), f"{key}.{field} differs"


def test_a_typo_or_a_bad_value_fails_with_its_key_named() -> None:
    typo = helm("template", "agentarmy", str(CHART), "--set", "operator.replicaz=2", check=False)
    assert typo.returncode != 0
    assert "at '/operator': additional properties 'replicaz' not allowed" in typo.stderr
    bad = helm(
        "template", "agentarmy", str(CHART), "--set", "webhook.failurePolicy=Maybe", check=False
    )
    assert bad.returncode != 0
    assert "at '/webhook/failurePolicy'" in bad.stderr
    store = helm(
        "template", "agentarmy", str(CHART), "--set", "router.store=redis://x", check=False
    )
    assert store.returncode != 0 and "at '/router/store'" in store.stderr


def test_more_router_replicas_need_nats() -> None:
    out = helm("template", "agentarmy", str(CHART), "--set", "router.replicas=2", check=False)
    assert out.returncode != 0
    assert "router.replicas > 1 needs the NATS store" in out.stderr
    docs = render("--set", "router.replicas=3", "--set", "router.store=nats://nats:4222")
    router = by_kind_and_name(docs, ("Deployment",))["Deployment/agentarmy-router"]
    assert router["spec"]["replicas"] == 3
    assert "PersistentVolumeClaim/agentarmy-router-data" not in by_kind_and_name(
        docs, ("PersistentVolumeClaim",)
    )


def test_chart_workloads_pass_restricted_pod_security(cluster: Any, namespace: str) -> None:
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    workloads = [
        d
        for d in render(namespace=namespace)
        if d["kind"] in ("Deployment", "Service", "PersistentVolumeClaim")
    ]
    out = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input="---\n".join(yaml.safe_dump(d) for d in workloads),
    )
    assert "Warning" not in out.stderr, out.stderr
    assert out.stdout.count("(server dry run)") == len(workloads)


def _webhooks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The webhooks of a configuration, without the CA (made per install)."""
    hooks = []
    for hook in doc["webhooks"]:
        client = {k: v for k, v in hook["clientConfig"].items() if k != "caBundle"}
        hooks.append({**hook, "clientConfig": client})
    return hooks


def test_one_webhook_configuration_in_chart_kustomize_and_devcluster(cluster: Any) -> None:
    """The chart, manifests/base and the devcluster configure admission the same way."""
    ours = webhook_configuration("agentarmy-system", b"ca")
    base = [
        d
        for d in yaml.safe_load_all(
            cluster.kubectl("kustomize", str(REPO / "manifests" / "base")).stdout
        )
        if d
    ]
    kinds = ("ValidatingWebhookConfiguration",)
    key = f"ValidatingWebhookConfiguration/{ours['metadata']['name']}"
    for docs in (render(), render("--set", "webhook.certManager.enabled=true"), base):
        assert _webhooks(by_kind_and_name(docs, kinds)[key]) == _webhooks(ours)
    chart = by_kind_and_name(render(), ("Secret", "Service"))
    assert "Secret/agentarmy-webhook-tls" in chart and "Service/agentarmy-webhook" in chart
    with_cm = by_kind_and_name(
        render("--set", "webhook.certManager.enabled=true"), ("Secret", "Certificate", "Issuer")
    )
    assert "Secret/agentarmy-webhook-tls" not in with_cm
    assert {"Certificate/agentarmy-webhook", "Issuer/agentarmy-webhook-selfsigned"} <= set(with_cm)


def test_chart_admission_objects_are_accepted_by_the_api_server(cluster: Any) -> None:
    """The generated certificate, the Service and the configuration, server-side dry run
    (the configuration is cluster-scoped: a dry run installs nothing)."""
    docs = [
        d
        for d in render()
        if d["kind"] in ("Secret", "Service", "ValidatingWebhookConfiguration")
        and "webhook" in d["metadata"]["name"] + d["kind"].lower()
    ]
    cluster.kubectl("create", "namespace", "agentarmy-system", check=False)
    out = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        "agentarmy-system",
        "-f",
        "-",
        input="---\n".join(yaml.safe_dump(d) for d in docs),
    )
    assert out.stdout.count("(server dry run)") == 3, out.stdout


def test_chart_keeps_its_webhook_certificate_on_upgrade(cluster: Any, namespace: str) -> None:
    """Without cert-manager the chart makes the certificate once: an upgrade (rendered
    against the cluster, so `lookup` sees the stored Secret) keeps it and its CA."""

    def against_cluster() -> dict[str, Any]:
        out = helm(
            "template",
            "agentarmy",
            str(CHART),
            "-n",
            namespace,
            "--dry-run=server",
            f"--kubeconfig={cluster.kubeconfig}",
        ).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        return by_kind_and_name(docs, ("Secret", "ValidatingWebhookConfiguration"))

    first = against_cluster()
    secret = first["Secret/agentarmy-webhook-tls"]
    bundle = first["ValidatingWebhookConfiguration/agentarmy-policy"]["webhooks"][0]
    assert bundle["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert against_cluster()["Secret/agentarmy-webhook-tls"]["data"] != secret["data"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(secret))
    upgraded = against_cluster()
    assert upgraded["Secret/agentarmy-webhook-tls"]["data"] == secret["data"]
    hook = upgraded["ValidatingWebhookConfiguration/agentarmy-policy"]["webhooks"][0]
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
