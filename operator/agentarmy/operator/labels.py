"""What the operator stamps on what it creates: labels, hashes, owner references.

The label names are defined once in ``agentarmy.api.labels`` (the router, the pod
runner and the policy library read them too); the operator's modules take them
from here together with the helpers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentarmy.api.labels import (
    AGENT,
    DOMAIN,
    FLEET,
    MANAGED_BY,
    MANAGER,
    POD_HASH,
    ROLE,
    TEMPLATE_HASH,
)

__all__ = [
    "AGENT",
    "DOMAIN",
    "FIELD_MANAGER",
    "FLEET",
    "MANAGED_BY",
    "MANAGER",
    "POD_HASH",
    "ROLE",
    "TEMPLATE_HASH",
    "owner_reference",
    "stable_hash",
]

FIELD_MANAGER = "agentarmy-operator"
"""The operator's name in server-side apply's managedFields."""


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
