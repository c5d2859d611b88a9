"""Labels on what the operator creates: the one definition the operator (which
stamps them), the router (which reads an agent pod's after a TokenReview), the
pod runner (which starts the pods that carry them) and the policy library (which
selects by them) all import."""

from __future__ import annotations

DOMAIN = "agentarmy.io"
AGENT = f"{DOMAIN}/agent"
"""On Pods: the name of the owning Agent (the pod runner and the router key on it)."""
FLEET = f"{DOMAIN}/fleet"
"""On Agents and Pods: the owning Fleet (absent for standalone Agents). After a
TokenReview the router reads it (else the agent label) to decide which fleet's
tasks the pod may claim."""
ROLE = f"{DOMAIN}/role"
TEMPLATE_HASH = f"{DOMAIN}/template-hash"
"""On Agents: hash of the Fleet template they were made from (rolling updates compare it)."""
POD_HASH = f"{DOMAIN}/pod-hash"
"""On Pods: hash of the rendered pod; a different desired hash replaces the Pod."""
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "agentarmy-operator"
"""The value of MANAGED_BY on everything the operator makes."""
