"""The admission webhook on the local control plane, configured as on a real cluster.

The ValidatingWebhookConfiguration is the static one the chart ships; it points
at the Service ``agentarmy-webhook`` in the operator's namespace. Here that
Service is of type ExternalName with ``localhost``: the API server resolves an
ExternalName webhook service to ``externalName:port`` and checks the serving
certificate against ``agentarmy-webhook.<namespace>.svc``, exactly the name the
chart's certificate carries. Operator replicas on this host share the port
(SO_REUSEPORT), as pods share a Service. The certificate is signed by the
devcluster's CA, whose certificate is the ``caBundle``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentarmy.api import labels
from agentarmy.devcluster.cluster import DevCluster, ExistingCluster
from agentarmy.devcluster.pki import CertificateAuthority, CertPair
from agentarmy.devcluster.processes import free_port
from agentarmy.operator.webhookconfig import (
    CONFIGURATION_NAME,
    SERVICE_NAME,
    webhook_configuration,
)


class AdmissionUnavailable(RuntimeError):
    """The cluster cannot call a webhook served on this host."""


@dataclass(frozen=True)
class LocalAdmission:
    namespace: str
    port: int
    cert: CertPair

    def operator_env(self, reload_seconds: float = 1.0) -> dict[str, str]:
        """What an operator replica needs to serve this webhook."""
        return {
            "AGENTARMY_WEBHOOK_CERT_FILE": str(self.cert.cert),
            "AGENTARMY_WEBHOOK_KEY_FILE": str(self.cert.key),
            "AGENTARMY_WEBHOOK_ADDRESS": "127.0.0.1",
            "AGENTARMY_WEBHOOK_PORT": str(self.port),
            "AGENTARMY_WEBHOOK_RELOAD_SECONDS": str(reload_seconds),
        }


def service_dns_names(namespace: str) -> tuple[str, ...]:
    service = f"{SERVICE_NAME}.{namespace}.svc"
    return (service, f"{service}.cluster.local")


def issue_serving_certificate(pki: Path, namespace: str, name: str = "webhook") -> CertPair:
    """A serving certificate for the webhook Service, from the cluster CA.

    Written beside and then moved over the files in use, so a replica that reloads
    mid-rotation reads an old or a new file, never a half-written one."""
    ca = CertificateAuthority.load(pki)
    fresh = ca.issue(
        f"{name}-next", SERVICE_NAME, dns_names=service_dns_names(namespace), server=True
    )
    pair = CertPair(pki / f"{name}.crt", pki / f"{name}.key")
    os.replace(fresh.key, pair.key)
    os.replace(fresh.cert, pair.cert)
    return pair


def _service(namespace: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE_NAME,
            "namespace": namespace,
            "labels": {labels.MANAGED_BY: labels.MANAGER},
        },
        "spec": {
            "type": "ExternalName",
            "externalName": "localhost",
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
    }


def install_admission(cluster: DevCluster | ExistingCluster, namespace: str) -> LocalAdmission:
    """Issue the certificate and apply the Service and the webhook configuration.

    From then on every Agent, Fleet and Policy write outside kube-system and
    ``namespace`` needs a replica serving ``operator_env()``: it fails closed."""
    if not isinstance(cluster, DevCluster):
        raise AdmissionUnavailable(
            "the admission tests serve the webhook from this host, which a cluster named by "
            "AGENTARMY_KUBECONFIG cannot reach; install the chart there instead (helm/agentarmy)"
        )
    port = free_port()
    cert = issue_serving_certificate(cluster.pki, namespace)
    documents = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        _service(namespace, port),
        webhook_configuration(namespace, cluster.ca_file.read_bytes(), port),
    ]
    cluster.apply(documents)
    return LocalAdmission(namespace, port, cert)


def remove_admission(cluster: DevCluster | ExistingCluster, namespace: str) -> None:
    cluster.kubectl(
        "delete",
        "validatingwebhookconfiguration",
        CONFIGURATION_NAME,
        "--ignore-not-found",
        check=False,
    )
    cluster.kubectl(
        "delete", "service", SERVICE_NAME, "-n", namespace, "--ignore-not-found", check=False
    )
