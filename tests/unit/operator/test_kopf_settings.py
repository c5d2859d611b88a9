"""The kopf settings chosen on purpose: the pod watch is filtered on the server."""

from __future__ import annotations

import kopf

from agentarmy.api import labels
from agentarmy.operator.settings import kopf_settings


def test_only_agent_pods_the_operator_made_are_watched() -> None:
    selectors = kopf_settings().watching.label_selectors
    pods = kopf.Resource("", "v1", "pods", kind="Pod")
    assert selectors.collect(pods) == [f"{labels.AGENT},{labels.MANAGED_BY}={labels.MANAGER}"]
    agents = kopf.Resource("agentarmy.io", "v1alpha1", "agents", kind="Agent")
    assert selectors.collect(agents) == []  # our own kinds are watched whole


def test_one_replica_leads_by_our_lease_not_kopf_peering() -> None:
    settings = kopf_settings()
    assert settings.peering.standalone and not settings.peering.mandatory
    assert not settings.posting.enabled
