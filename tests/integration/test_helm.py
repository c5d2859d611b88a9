"""The Helm chart: lints, renders what manifests/base renders (RBAC cannot
drift apart), refuses bad values with a clear message (values.schema.json names the key
of a typo), and its workloads are
admitted under the `restricted` Pod Security Standard."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.devcluster import binaries
from agentarmy.devcluster.cluster import DevCluster
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


def test_chart_budgets_network_policies_and_probes_match_the_kustomize_base(
    cluster: Any,
) -> None:
    base = [
        d
        for d in yaml.safe_load_all(
            cluster.kubectl("kustomize", str(REPO / "manifests" / "base")).stdout
        )
        if d
    ]
    kinds = ("PodDisruptionBudget", "NetworkPolicy")
    chart, kustomize = by_kind_and_name(render(), kinds), by_kind_and_name(base, kinds)
    assert sorted(chart) == sorted(kustomize) != []
    for key, doc in chart.items():
        assert doc["spec"] == kustomize[key]["spec"], f"{key} differs"
    deployments = ("Deployment",)
    chart, kustomize = by_kind_and_name(render(), deployments), by_kind_and_name(base, deployments)
    for key, doc in chart.items():
        ours, theirs = (
            d["spec"]["template"]["spec"]["containers"][0] for d in (doc, kustomize[key])
        )
        for field in ("livenessProbe", "readinessProbe", "startupProbe", "resources"):
            assert ours.get(field) == theirs.get(field), f"{key} {field} differs"


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


ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"


def _leaves(values: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a values tree by dotted path (a list or an empty map is a leaf)."""
    if isinstance(values, dict) and values:
        found: dict[str, Any] = {}
        for key, value in values.items():
            found.update(_leaves(value, f"{prefix}{key}."))
        return found
    return {prefix.rstrip("."): values}


def test_the_all_options_file_sets_every_option() -> None:
    defaults = _leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    options = _leaves(yaml.safe_load(ALL_OPTIONS.read_text()))
    unset = [k for k in defaults if not any(o == k or o.startswith(f"{k}.") for o in options)]
    assert unset == [], "options the file leaves at their defaults"
    same = [k for k in defaults if k in options and options[k] == defaults[k]]
    # The keys a value must keep (the toggles that render the most, kept on).
    assert sorted(same) == [
        "crds.install",
        "monitoring.dashboard.enabled",
        "monitoring.dashboard.labels.grafana_dashboard",  # what Grafana's sidecar looks for
        "networkPolicy.enabled",
        "operator.podDisruptionBudget.enabled",
        "operator.podDisruptionBudget.maxUnavailable",  # minAvailable, set, wins
        "router.podDisruptionBudget.enabled",
        "router.podDisruptionBudget.minAvailable",  # unset: maxUnavailable applies
    ]


# The fields of the real cert-manager and Prometheus Operator CRDs that this chart sets,
# with their types: enough for a strict server-side dry run to refuse a misspelt or
# misplaced field (the full upstream CRDs are not vendored here).
def _obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


STRING: dict[str, Any] = {"type": "string"}
STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": STRING}
LABEL_SELECTOR = _obj({"matchLabels": STRING_MAP})
THIRD_PARTY_KINDS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("cert-manager.io", "Issuer", "issuers"): _obj(
        {"selfSigned": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    ),
    ("cert-manager.io", "Certificate", "certificates"): _obj(
        {
            "secretName": STRING,
            "dnsNames": {"type": "array", "items": STRING},
            "issuerRef": _obj({"name": STRING, "kind": STRING, "group": STRING}, ("name",)),
        },
        ("secretName", "issuerRef"),
    ),
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"): _obj(
        {
            "selector": LABEL_SELECTOR,
            "endpoints": {
                "type": "array",
                "items": _obj(
                    {
                        "port": STRING,
                        "path": STRING,
                        "interval": {
                            "type": "string",
                            "pattern": "^(0|(([0-9]+)(y|w|d|h|m|s|ms))+)$",
                        },
                        "authorization": _obj(
                            {
                                "type": STRING,
                                "credentials": _obj({"name": STRING, "key": STRING}, ("key",)),
                            }
                        ),
                    }
                ),
            },
        },
        ("selector",),
    ),
    ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"): _obj(
        {
            "groups": {
                "type": "array",
                "items": _obj(
                    {
                        "name": STRING,
                        "rules": {
                            "type": "array",
                            "items": _obj(
                                {
                                    "alert": STRING,
                                    "expr": {"x-kubernetes-int-or-string": True},
                                    "for": STRING,
                                    "labels": STRING_MAP,
                                    "annotations": STRING_MAP,
                                },
                                ("expr",),
                            ),
                        },
                    },
                    ("name",),
                ),
            }
        }
    ),
}


def _third_party_crd(group: str, kind: str, plural: str, spec: dict[str, Any]) -> dict[str, Any]:
    version = "v1"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _obj({"spec": spec})},
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def third_party_crds(cluster: Any) -> Iterator[None]:
    crds = [_third_party_crd(*key, spec) for key, spec in THIRD_PARTY_KINDS.items()]
    cluster.apply(crds)
    for crd in crds:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s"
        )
    yield
    for crd in crds:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--wait=false", check=False)


@pytest.mark.parametrize("values", ["defaults", "all-options"])
def test_every_rendered_object_is_accepted_by_the_api_server(
    cluster: Any, namespace: str, third_party_crds: None, values: str
) -> None:
    """`helm template` output, applied with a strict server-side dry run: every object,
    CRDs included, is one the API server would store (unknown fields are errors). Server-side
    apply: the shared cluster's CRDs were not made by `kubectl apply`."""
    extra = [] if values == "defaults" else ["-f", str(ALL_OPTIONS)]
    docs = render(
        *extra, "--set", f"monitoring.dashboard.namespace={namespace}", namespace=namespace
    )
    kinds = {d["kind"] for d in docs}
    expected = {"CustomResourceDefinition", "Deployment", "PodDisruptionBudget", "NetworkPolicy"}
    if values == "all-options":
        expected |= {"Certificate", "ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert expected <= kinds
    out = cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-test",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input="---\n".join(yaml.safe_dump(d) for d in docs),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    assert out.stdout.count("(server dry run)") == len(docs), out.stdout


def test_image_by_digest_and_probes() -> None:
    digest = "sha256:" + "ab" * 32
    docs = by_kind_and_name(render("--set", f"image.digest={digest}"), ("Deployment",))
    for name in ("agentarmy-operator", "agentarmy-router"):
        container = docs[f"Deployment/{name}"]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"ghcr.io/agentarmy/agentarmy@{digest}"
        assert {"livenessProbe", "readinessProbe", "resources"} <= set(container), name
        assert container["resources"]["requests"] and container["resources"]["limits"]
    bad = helm("template", "agentarmy", str(CHART), "--set", "image.digest=latest", check=False)
    assert bad.returncode != 0 and "at '/image/digest'" in bad.stderr


def test_network_policies_open_only_what_each_component_needs() -> None:
    docs = by_kind_and_name(render("-f", str(ALL_OPTIONS)), ("NetworkPolicy",))
    operator = docs["NetworkPolicy/agentarmy-operator"]["spec"]
    router = docs["NetworkPolicy/agentarmy-router"]["spec"]
    assert operator["policyTypes"] == router["policyTypes"] == ["Ingress", "Egress"]
    # The webhook port only from the API server's addresses; /metrics only from monitoring.
    webhook, metrics = operator["ingress"]
    assert webhook["ports"] == [{"protocol": "TCP", "port": 10443}]
    assert [p["ipBlock"]["cidr"] for p in webhook["from"]] == ["10.0.0.0/24", "192.168.10.5/32"]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress_ports = [sorted(p["port"] for p in rule["ports"]) for rule in operator["egress"]]
    assert egress_ports == [[53, 53], [6443], [8080]]
    (ingress,) = router["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    agents, op, clients, scrapers = ingress["from"]
    assert agents["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "agentarmy-agent"}
    assert op["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "agentarmy-operator"}
    assert clients["namespaceSelector"]["matchLabels"] == {"agentarmy.io/clients": "true"}
    assert scrapers == metrics["from"][0]
    # DNS, the API server, and NATS on the store URL's port.
    assert [sorted(p["port"] for p in rule["ports"]) for rule in router["egress"]] == [
        [53, 53],
        [6443],
        [4223],
    ]
    assert "agentarmy-router" not in json.dumps(router["egress"])
    off = render("--set", "networkPolicy.enabled=false")
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]


def test_serving_metrics_behind_network_policies_needs_the_scrapers_named() -> None:
    out = helm(
        "template",
        "agentarmy",
        str(CHART),
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        check=False,
    )
    assert out.returncode != 0 and "needs networkPolicy.metricsFrom" in out.stderr


def test_pod_disruption_budgets_keep_one_operator_and_allow_drains() -> None:
    docs = by_kind_and_name(render(), ("PodDisruptionBudget",))
    for name in ("agentarmy-operator", "agentarmy-router"):
        spec = docs[f"PodDisruptionBudget/{name}"]["spec"]
        assert spec == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        }
    custom = by_kind_and_name(render("-f", str(ALL_OPTIONS)), ("PodDisruptionBudget",))
    assert custom["PodDisruptionBudget/agentarmy-operator"]["spec"]["minAvailable"] == 2


def test_webhook_certificate_through_cert_manager_or_the_chart() -> None:
    """cert-manager: a Certificate from the named issuer and the cainjector annotation, no
    Secret and no caBundle from the chart; without it the chart's Secret is the CA."""
    kinds = ("Secret", "Certificate", "Issuer", "ValidatingWebhookConfiguration")
    managed = by_kind_and_name(render("-f", str(ALL_OPTIONS)), kinds)
    certificate = managed["Certificate/agentarmy-webhook"]["spec"]
    assert certificate["issuerRef"] == {
        "name": "platform-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert certificate["secretName"] == "agentarmy-webhook-tls"
    assert (
        "Secret/agentarmy-webhook-tls" not in managed
        and "Issuer/agentarmy-webhook-selfsigned" not in managed
    )
    config = managed["ValidatingWebhookConfiguration/agentarmy-policy"]
    assert config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "agentarmy-system/agentarmy-webhook"
    }
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    own = by_kind_and_name(render(), kinds)
    assert "Certificate/agentarmy-webhook" not in own
    bundle = own["ValidatingWebhookConfiguration/agentarmy-policy"]["webhooks"][0]
    assert (
        bundle["clientConfig"]["caBundle"] == own["Secret/agentarmy-webhook-tls"]["data"]["ca.crt"]
    )


def _chart_version(chart_yaml: str) -> str:
    return str(yaml.safe_load(chart_yaml)["version"])


def previous_chart(into: Path) -> tuple[str, Path]:
    """The last committed state of the chart's previous version (the newest commit whose
    Chart.yaml names another version than the working tree's), extracted into ``into``."""
    current = _chart_version((CHART / "Chart.yaml").read_text())

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    for commit in git("log", "--format=%H", "--", "helm/agentarmy/Chart.yaml").split():
        version = _chart_version(git("show", f"{commit}:helm/agentarmy/Chart.yaml"))
        if version != current:
            archive = subprocess.run(
                ["git", "archive", commit, "helm/agentarmy"],
                cwd=REPO,
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
            return version, into / "helm" / "agentarmy"
    raise AssertionError(f"no committed chart version other than {current} in git history")


def with_changed_task_crd(into: Path) -> Path:
    """The working tree's chart with one more field in the Task schema (a CRD change)."""
    subprocess.run(["cp", "-r", str(CHART), str(into)], check=True)
    chart = into / CHART.name
    path = chart / "files" / "crds" / "tasks.agentarmy.io.yaml"
    crd = yaml.safe_load(path.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["upgradeMarker"] = {"type": "string", "description": "upgrade test"}
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[DevCluster]:
    """A control plane of its own: the chart installs cluster-wide objects (ClusterRoles,
    the webhook configuration) whose names the shared cluster's tests use too."""
    with DevCluster() as dev:
        yield dev


def test_upgrade_from_the_previous_chart_applies_changed_crds(
    own_cluster: DevCluster, tmp_path: Path
) -> None:
    """Install the previous chart version from git, upgrade to this one and then to this
    one with a changed CRD: the new schema is in force on the API server; objects survive
    the upgrades and the uninstall (the CRDs are kept)."""
    kube = f"--kubeconfig={own_cluster.kubeconfig}"
    release = ("agentarmy", "-n", "agentarmy-system", kube)
    (tmp_path / "previous").mkdir()
    version, previous = previous_chart(tmp_path / "previous")
    helm("install", *release, str(previous), "--create-namespace")
    task = (REPO / "manifests" / "examples" / "task-hello.yaml").read_text()
    own_cluster.kubectl("apply", "-n", "default", "-f", "-", input=task)
    marked = yaml.safe_load(task)
    marked["metadata"]["name"] = "marked"
    marked["spec"]["upgradeMarker"] = "new schema"

    def create_marked() -> subprocess.CompletedProcess[str]:
        return own_cluster.kubectl(
            "create",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            "default",
            "-f",
            "-",
            input=yaml.safe_dump(marked),
            check=False,
        )

    assert 'unknown field "spec.upgradeMarker"' in create_marked().stderr
    # A chart before 0.2.0 installed the CRDs from crds/, outside the release: the first
    # upgrade takes them over (docs/install.md).
    takeover = ["--take-ownership"] if (previous / "crds").is_dir() else []
    helm("upgrade", *release, str(CHART), *takeover)
    crd = json.loads(own_cluster.kubectl("get", "crd", "tasks.agentarmy.io", "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "agentarmy"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    helm("upgrade", *release, str(with_changed_task_crd(tmp_path)))
    accepted = create_marked()
    assert accepted.returncode == 0, accepted.stderr
    history = helm("history", *release, "-o", "json").stdout
    assert [r["chart"] for r in json.loads(history)] == [
        f"agentarmy-{version}",
        f"agentarmy-{_chart_version((CHART / 'Chart.yaml').read_text())}",
        f"agentarmy-{_chart_version((CHART / 'Chart.yaml').read_text())}",
    ]

    uninstall = helm("uninstall", *release)
    assert "kept due to the resource policy" in uninstall.stdout
    own_cluster.kubectl("get", "task", "hello", "-n", "default")
    assert own_cluster.kubectl("get", "clusterrole", "agentarmy-operator", check=False).returncode
