"""Render a Fleet's egress NetworkPolicy. Pure: same rules in, same object out.

``rules.egress`` of every enforce-mode Policy that selects a Fleet combine
(``agentarmy.policy.effective_rules``: CIDRs and ports intersect, DNS only if
all allow it) into one ``networking.k8s.io/v1`` NetworkPolicy, ``<fleet>-egress``.
It selects the Fleet's agent Pods and, since it has the ``Egress`` policy type,
denies all their egress except what its rules allow:

- the router, always (see ``RouterPeer``): an agent cut off from the router
  can neither claim tasks nor report results, and the fleet stops working;
- DNS (UDP and TCP 53) to the kube-dns Pods in kube-system, when ``allowDNS``;
- the allowed CIDRs on the allowed TCP ports.

Ingress is untouched. Audit-mode Policies render nothing: they only report.
A NetworkPolicy is enforced by the cluster's network plugin; without one
(the devcluster, kwok) it is only an object.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agentarmy.api.common import API_VERSION
from agentarmy.operator import labels
from agentarmy.policy.effective import Egress

API = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
SUFFIX = "-egress"
POLICIES_ANNOTATION = f"{labels.DOMAIN}/policies"
"""The enforce-mode Policies (``namespace/name``) whose egress rules were combined."""

DNS_NAMESPACE = "kube-system"
DNS_POD_LABELS = {"k8s-app": "kube-dns"}
"""CoreDNS and kube-dns Pods carry this label in kubeadm, kind, EKS, GKE and AKS."""
DNS_PORT = 53

ROUTER_POD_LABELS = {"app.kubernetes.io/name": "agentarmy-router"}
"""The router Pods' label in manifests/base/router.yaml and the Helm chart."""
ROUTER_PORT = 8080
"""The router container's port (``--listen=0.0.0.0:8080``). A NetworkPolicy sees
the Pod's port after the Service has translated it, never the Service port."""

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set on every namespace by the API server (immutable): selects a namespace by name."""


def policy_name(fleet: str) -> str:
    """``<fleet>-egress``: Fleet names are at most 52 characters, so this stays a DNS label."""
    return fleet + SUFFIX


@dataclass(frozen=True)
class RouterPeer:
    """Where agents reach the router, as a NetworkPolicy can name it.

    Agents reach the router at ``AGENTARMY_ROUTER_URL``, by default the
    ``agentarmy-router`` Service in the operator's namespace (both install paths
    put the router there). NetworkPolicies match the Pods behind a Service, not
    its name or ClusterIP, so the router is allowed as "its Pods in that
    namespace, on its container port". When the URL names an IP address
    instead (a router outside the cluster), that address is allowed too. A
    router at a host name outside the cluster cannot be named here: allow its
    CIDR in the Policy.
    """

    namespace: str
    url: str = ""

    def peers(self) -> list[dict[str, Any]]:
        rules = [
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}
                        },
                        "podSelector": {"matchLabels": dict(ROUTER_POD_LABELS)},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": ROUTER_PORT}],
            }
        ]
        address = _ip_address(self.url)
        if address is not None and not address.is_loopback:
            parts = urlsplit(self.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            rules.append(
                {
                    "to": [{"ipBlock": {"cidr": str(ipaddress.ip_network(address))}}],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
            )
        return rules


def _ip_address(url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        host = urlsplit(url).hostname
        return ipaddress.ip_address(host) if host else None
    except ValueError:
        return None


def _dns_rule() -> dict[str, Any]:
    return {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: DNS_NAMESPACE}},
                "podSelector": {"matchLabels": dict(DNS_POD_LABELS)},
            }
        ],
        "ports": [
            {"protocol": "UDP", "port": DNS_PORT},
            {"protocol": "TCP", "port": DNS_PORT},
        ],
    }


def _canonical(cidrs: tuple[str, ...]) -> list[str]:
    """As the API server would store them: host bits cleared, IPv6 compressed, deduplicated."""
    networks = {ipaddress.ip_network(c, strict=False) for c in cidrs}
    return [str(n) for n in sorted(networks, key=lambda n: (n.version, n))]


def egress_rules(egress: Egress, router: RouterPeer) -> list[dict[str, Any]]:
    """The NetworkPolicy's ``spec.egress``: router, DNS, then the allow-list."""
    rules = router.peers()
    if egress.allow_dns:
        rules.append(_dns_rule())
    cidrs = _canonical(egress.cidrs)
    # No ports means every port to a NetworkPolicy, but nothing to an allow-list whose
    # ports intersect to none: then the CIDRs get no rule at all.
    if cidrs and egress.ports:
        rules.append(
            {
                "to": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs],
                "ports": [{"protocol": "TCP", "port": port} for port in sorted(set(egress.ports))],
            }
        )
    return rules


def pod_selector(fleet: str) -> dict[str, Any]:
    """The Fleet's agent Pods, as the operator labels them (pods.render_pod)."""
    return {"matchLabels": {labels.FLEET: fleet, labels.MANAGED_BY: labels.MANAGER}}


def render_network_policy(
    fleet: str, namespace: str, uid: str, egress: Egress, router: RouterPeer
) -> dict[str, Any]:
    """The NetworkPolicy for Fleet ``namespace/fleet``, owned by it (deletion cascades)."""
    return {
        "apiVersion": API,
        "kind": KIND,
        "metadata": {
            "name": policy_name(fleet),
            "namespace": namespace,
            "labels": {labels.FLEET: fleet, labels.MANAGED_BY: labels.MANAGER},
            "annotations": {POLICIES_ANNOTATION: ",".join(egress.policies)},
            "ownerReferences": [labels.owner_reference(API_VERSION, "Fleet", fleet, uid)],
        },
        "spec": {
            "podSelector": pod_selector(fleet),
            "policyTypes": ["Egress"],
            "egress": egress_rules(egress, router),
        },
    }


__all__ = ["RouterPeer", "policy_name", "render_network_policy"]
