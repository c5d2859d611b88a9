"""The static ValidatingWebhookConfiguration, as the devcluster installs it.

The chart (helm/agentarmy/templates/webhook.yaml) and manifests/base
(webhook.yaml) write the same configuration in YAML; a unit test holds the
three together. Static on purpose: no replica rewrites it, so two replicas
never fight over ``caBundle`` and a replica that exits never removes it.
"""

from __future__ import annotations

import base64
from typing import Any

from agentarmy.api.common import GROUP
from agentarmy.operator import labels
from agentarmy.operator.webhook import PATH

CONFIGURATION_NAME = "agentarmy-policy"
SERVICE_NAME = "agentarmy-webhook"
WEBHOOK_NAME = "policy.agentarmy.io"
TIMEOUT_SECONDS = 5
"""A hung operator fails the write in 5 s rather than the API server's 10."""
RESOURCES = ("agents", "fleets", "fleets/scale", "policies")


def namespace_selector(operator_namespace: str) -> dict[str, Any]:
    """Never kube-system, never the operator's own namespace: a broken operator can
    block neither the cluster nor its own recovery."""
    return {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": sorted({"kube-system", operator_namespace}),
            }
        ]
    }


def webhook_configuration(
    operator_namespace: str, ca_bundle: bytes, port: int = 443
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": CONFIGURATION_NAME,
            "labels": {labels.MANAGED_BY: labels.MANAGER},
        },
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": TIMEOUT_SECONDS,
                "namespaceSelector": namespace_selector(operator_namespace),
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": list(RESOURCES),
                        "scope": "Namespaced",
                    }
                ],
                "clientConfig": {
                    "service": {
                        "namespace": operator_namespace,
                        "name": SERVICE_NAME,
                        "path": PATH,
                        "port": port,
                    },
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                },
            }
        ],
    }
