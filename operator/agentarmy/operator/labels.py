"""Labels, annotations and hashes the operator stamps on what it creates."""

from __future__ import annotations

import hashlib
import json
from typing import Any

DOMAIN = "agentarmy.io"
AGENT = f"{DOMAIN}/agent"
"""On Pods: the name of the owning Agent (the pod runner and the router key on it)."""
FLEET = f"{DOMAIN}/fleet"
"""On Agents and Pods: the owning Fleet (absent for standalone Agents)."""
ROLE = f"{DOMAIN}/role"
TEMPLATE_HASH = f"{DOMAIN}/template-hash"
"""On Agents: hash of the Fleet template they were made from (rolling updates compare it)."""
POD_HASH = f"{DOMAIN}/pod-hash"
"""On Pods: hash of the rendered pod; a different desired hash replaces the Pod."""
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "agentarmy-operator"
FIELD_MANAGER = "agentarmy-operator"


def stable_hash(value: Any, length: int = 10) -> str:
    """A short hash of JSON-able data, stable across processes and key order."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return digest[:length]


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
