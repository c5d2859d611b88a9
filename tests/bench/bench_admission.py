"""What admission adds to a Fleet create: our webhook vs a ValidatingAdmissionPolicy.

    .venv/bin/python tests/bench/bench_admission.py [--creates 400] [--rounds 2]

On one control plane, in one run, the p50 and p99 of creating a Fleet (replicas 0,
so nothing but the write is measured) through the API server, one at a time over a
kept-alive HTTPS connection:

  none     no admission for our kinds
  vap      a ValidatingAdmissionPolicy doing the replica and image checks in CEL
           inside kube-apiserver (the in-process anchor)
  hook-1   our webhook (two operator replicas), 1 Policy in the namespace
  hook-100 our webhook, 100 Policies in the namespace (mixed selectors)

The configurations take turns for --rounds rounds so drift hits them alike.
Prints each one's latencies and what it adds over `none`, and our added p99 as a
multiple of the VAP's. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import ssl
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import yaml

from agentarmy.api import crdgen
from agentarmy.devcluster.admission import install_admission, remove_admission
from agentarmy.devcluster.cluster import DevCluster
from agentarmy.devcluster.operator_process import OPERATOR_NAMESPACE, OperatorProcess

WARMUP = 20
VAP_NAME = "bench-fleet-limits"


class Api:
    """A kept-alive HTTPS connection to the API server as the admin."""

    def __init__(self, cluster: DevCluster) -> None:
        context = ssl.create_default_context(cafile=str(cluster.ca_file))
        context.load_cert_chain(str(cluster.admin_cert_file), str(cluster.admin_key_file))
        host, port = cluster.server.removeprefix("https://").split(":")
        self.connection = http.client.HTTPSConnection(host, int(port), context=context)

    def post(self, path: str, body: dict[str, Any]) -> int:
        self.connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        text = response.read()
        if response.status != 201:
            raise RuntimeError(f"POST {path} answered {response.status}: {text[:500]!r}")
        return response.status


def fleet(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "agentarmy.io/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": name, "labels": {"team": "bench"}},
        "spec": {
            "replicas": 0,
            "template": {
                "metadata": {"labels": {"team": "bench"}},
                "spec": {"capabilities": ["echo"], "image": "ghcr.io/acme/agent:1"},
            },
        },
    }


def policies(count: int) -> list[dict[str, Any]]:
    """One Policy that selects every Fleet, the rest with selectors that do or do not."""
    docs = []
    for i in range(count):
        selector: dict[str, Any] = {}
        if i % 3 == 1:
            selector = {"matchLabels": {"team": "bench" if i % 2 else f"other-{i}"}}
        elif i % 3 == 2:
            selector = {
                "matchExpressions": [
                    {"key": "team", "operator": "In", "values": ["bench", f"x{i}"]}
                ]
            }
        docs.append(
            {
                "apiVersion": "agentarmy.io/v1alpha1",
                "kind": "Policy",
                "metadata": {"name": f"p{i:03d}"},
                "spec": {
                    "mode": "enforce",
                    "selector": selector,
                    "rules": {
                        "maxReplicasPerFleet": 10 + i,
                        "allowedImageRegistries": ["ghcr.io/acme/", f"registry-{i}.example/"],
                    },
                },
            }
        )
    return docs


def vap_documents(namespace: str) -> list[dict[str, Any]]:
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": VAP_NAME},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["agentarmy.io"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["fleets"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "object.spec.replicas <= 10",
                    "message": "spec.replicas is above the limit of 10",
                },
                {
                    "expression": "object.spec.template.spec.image.startsWith('ghcr.io/acme/')",
                    "message": "spec.template.spec.image is not under ghcr.io/acme/",
                },
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": VAP_NAME},
        "spec": {
            "policyName": VAP_NAME,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    return [policy, binding]


def apply(cluster: DevCluster, docs: list[dict[str, Any]], namespace: str | None = None) -> None:
    extra = ["-n", namespace] if namespace else []
    cluster.kubectl("apply", *extra, "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in docs))


def namespace(cluster: DevCluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s")


def measure(api: Api, ns: str, prefix: str, creates: int) -> list[float]:
    path = f"/apis/agentarmy.io/v1alpha1/namespaces/{ns}/fleets"
    for i in range(WARMUP):
        api.post(path, fleet(f"{prefix}-w{i}"))
    samples = []
    for i in range(creates):
        started = time.perf_counter()
        api.post(path, fleet(f"{prefix}-{i}"))
        samples.append(time.perf_counter() - started)
    return samples


def quantile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q * 100) - 1]


def wait_until_enforced(cluster: DevCluster, ns: str, what: str) -> None:
    """Until a too-big Fleet is refused in ``ns`` (the admission under test is live)."""
    too_big = fleet("probe")
    too_big["spec"]["replicas"] = 1000
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = cluster.kubectl(
            "create",
            "--dry-run=server",
            "-n",
            ns,
            "-f",
            "-",
            input=json.dumps(too_big),
            check=False,
        )
        if "spec.replicas" in out.stderr and "above the limit of" in out.stderr:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not start refusing in 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--creates", type=int, default=400, help="measured creates per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print("starting a control plane ...", flush=True)
    samples: dict[str, list[float]] = defaultdict(list)
    with DevCluster(nodes=1) as cluster:
        cluster.install_crds(crdgen.default_output())
        for ns in ("bench-none", "bench-vap", "bench-hook-1", "bench-hook-100"):
            namespace(cluster, ns)
        apply(cluster, policies(1), "bench-hook-1")
        apply(cluster, policies(100), "bench-hook-100")
        api = Api(cluster)
        for round_ in range(args.rounds):
            tag = f"r{round_}"
            samples["none"] += measure(api, "bench-none", tag, args.creates)

            apply(cluster, vap_documents("bench-vap"))
            wait_until_enforced(cluster, "bench-vap", "the ValidatingAdmissionPolicy")
            samples["vap"] += measure(api, "bench-vap", tag, args.creates)
            cluster.kubectl("delete", "validatingadmissionpolicybinding", VAP_NAME)
            cluster.kubectl("delete", "validatingadmissionpolicy", VAP_NAME)

            admission = install_admission(cluster, OPERATOR_NAMESPACE)
            replicas = [
                OperatorProcess(cluster.kubeconfig, f"bench-{i}", admission=admission)
                .start()
                .wait_ready()
                for i in range(2)
            ]
            try:
                for size in (1, 100):
                    ns = f"bench-hook-{size}"
                    wait_until_enforced(cluster, ns, "the webhook")
                    samples[f"hook-{size}"] += measure(api, ns, tag, args.creates)
            finally:
                for process in replicas:
                    process.stop()
                remove_admission(cluster, OPERATOR_NAMESPACE)
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    base50, base99 = quantile(samples["none"], 0.5), quantile(samples["none"], 0.99)
    print()
    print(f"{'admission':>10} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8}")
    added: dict[str, float] = {}
    for name in ("none", "vap", "hook-1", "hook-100"):
        p50, p99 = quantile(samples[name], 0.5), quantile(samples[name], 0.99)
        added[name] = p99 - base99
        print(
            f"{name:>10} {len(samples[name]):>5} {1000 * p50:>8.2f} {1000 * p99:>8.2f} "
            f"{1000 * (p50 - base50):>8.2f} {1000 * (p99 - base99):>8.2f}"
        )
    vap = max(added["vap"], 1e-4)
    for name in ("hook-1", "hook-100"):
        print(
            f"{name}: added p99 {1000 * added[name]:.2f} ms = {added[name] / vap:.2f}x the "
            f"ValidatingAdmissionPolicy's {1000 * added['vap']:.2f} ms (goal: <= 2x, and < 5 ms "
            "at 100 Policies)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
