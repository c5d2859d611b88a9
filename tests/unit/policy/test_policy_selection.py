"""Which Policies govern a subject: Kubernetes label-selector semantics, per namespace."""

from __future__ import annotations

from typing import Any

import pytest

from agentarmy.policy import PolicySet, evaluate
from agentarmy.policy.subjects import FLEET_LABEL, MANAGED_BY
from tests.unit.policy.builders import a_fleet, a_scale, an_agent, policy


def selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Policy with ``selector`` governs an Agent with ``labels`` (and says so)."""
    p = policy(selector=selector, maxReplicasPerFleet=0, allowedImageRegistries=["quay.io/"])
    verdict = evaluate(an_agent(labels), [p])
    assert verdict.policies in ((), ("team-a/baseline",))
    assert bool(verdict.findings) == bool(verdict.policies)
    return bool(verdict.policies)


def test_empty_selector_selects_everything() -> None:
    assert selected({}, {})
    assert selected({}, {"app": "x"})


@pytest.mark.parametrize(
    ("labels", "hit"),
    [
        ({"team": "a", "tier": "gold"}, True),
        ({"team": "a", "tier": "gold", "extra": "1"}, True),
        ({"team": "a"}, False),
        ({"team": "a", "tier": "silver"}, False),
        ({}, False),
    ],
)
def test_match_labels_all_must_hold(labels: dict[str, str], hit: bool) -> None:
    assert selected({"matchLabels": {"team": "a", "tier": "gold"}}, labels) is hit


def test_match_label_with_empty_value() -> None:
    assert selected({"matchLabels": {"flag": ""}}, {"flag": ""})
    assert not selected({"matchLabels": {"flag": ""}}, {})


@pytest.mark.parametrize(
    ("operator", "values", "labels", "hit"),
    [
        ("In", ["a", "b"], {"team": "a"}, True),
        ("In", ["a", "b"], {"team": "c"}, False),
        ("In", ["a", "b"], {}, False),
        ("NotIn", ["a", "b"], {"team": "c"}, True),
        ("NotIn", ["a", "b"], {"team": "a"}, False),
        ("NotIn", ["a", "b"], {}, True),  # a missing key is not in the set
        ("Exists", [], {"team": ""}, True),
        ("Exists", [], {"other": "a"}, False),
        ("DoesNotExist", [], {}, True),
        ("DoesNotExist", [], {"team": "a"}, False),
    ],
)
def test_match_expressions(
    operator: str, values: list[str], labels: dict[str, str], hit: bool
) -> None:
    selector = {"matchExpressions": [{"key": "team", "operator": operator, "values": values}]}
    assert selected(selector, labels) is hit


def test_match_labels_and_expressions_all_must_hold() -> None:
    selector = {
        "matchLabels": {"app": "bot"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["gold"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert selected(selector, {"app": "bot", "tier": "gold"})
    assert not selected(selector, {"app": "bot", "tier": "gold", "canary": "1"})
    assert not selected(selector, {"app": "web", "tier": "gold"})
    assert not selected(selector, {"app": "bot"})


def test_other_namespaces_are_never_selected() -> None:
    mine = policy("mine", namespace="team-a", allowedImageRegistries=["quay.io/"])
    theirs = policy("theirs", namespace="team-b", maxReplicasPerFleet=0)
    policies = PolicySet([mine, theirs])
    verdict = policies.evaluate(a_fleet(replicas=3, namespace="team-a"))
    assert verdict.policies == ("team-a/mine",)
    assert [f.policy for f in verdict.findings] == ["team-a/mine"]
    verdict = policies.evaluate(an_agent(namespace="team-c"))
    assert verdict.policies == () and verdict.outcome == "allow"


def test_a_fleet_is_selected_by_its_own_labels() -> None:
    p = policy(selector={"matchLabels": {"owner": "ops"}}, maxReplicasPerFleet=1)
    verdict = evaluate(a_fleet({"owner": "ops"}, replicas=2), [p])
    assert verdict.policies == ("team-a/baseline",) and verdict.outcome == "deny"


def test_a_fleet_is_selected_by_its_template_labels() -> None:
    p = policy(selector={"matchLabels": {"role": "researcher"}}, maxReplicasPerFleet=1)
    fleet = a_fleet({"owner": "ops"}, replicas=2, template_labels={"role": "researcher"})
    assert evaluate(fleet, [p]).outcome == "deny"
    scale = a_scale(2, {"owner": "ops"}, template_labels={"role": "researcher"})
    assert evaluate(scale, [p]).outcome == "deny"
    other = a_fleet({"role": "x"}, replicas=2, template_labels={"role": "writer"})
    assert evaluate(other, [p]).policies == ()


def test_a_fleet_is_selected_by_the_fleet_label_its_agents_carry() -> None:
    p = policy(selector={"matchLabels": {FLEET_LABEL: "f1"}}, maxReplicasPerFleet=1)
    assert evaluate(a_fleet(name="f1", replicas=2), [p]).outcome == "deny"
    assert evaluate(a_fleet(name="f2", replicas=2), [p]).outcome == "allow"


def test_a_fleet_is_selected_by_the_managed_by_label_its_agents_carry() -> None:
    """A Policy written for the operator's Agents also governs the Fleet that would make
    them; otherwise admission would pass the Fleet and then refuse its Agents."""
    label, value = MANAGED_BY
    p = policy(selector={"matchLabels": {label: value}}, maxReplicasPerFleet=1)
    assert evaluate(a_fleet(name="f1", replicas=2), [p]).outcome == "deny"


def test_labels_of_the_fleet_and_of_its_template_are_not_merged() -> None:
    """Each label set is matched on its own, as the objects carry them."""
    p = policy(selector={"matchLabels": {"owner": "ops", "role": "researcher"}})
    fleet = a_fleet({"owner": "ops"}, template_labels={"role": "researcher"})
    assert evaluate(fleet, [p]).policies == ()
    expressions = policy(
        selector={
            "matchExpressions": [
                {"key": "owner", "operator": "Exists"},
                {"key": "role", "operator": "Exists"},
            ]
        }
    )
    assert evaluate(fleet, [expressions]).policies == ()


def test_selecting_lists_policies_sorted() -> None:
    policies = PolicySet(
        [
            policy("zeta"),
            policy("alpha", selector={"matchLabels": {"app": "x"}}),
            policy("mid", selector={"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
            policy("never", selector={"matchLabels": {"app": "y"}}),
        ]
    )
    labels = (tuple(sorted({"app": "x"}.items())),)
    assert [p.name for p in policies.selecting("team-a", labels)] == ["alpha", "mid", "zeta"]
    assert policies.selecting("elsewhere", labels) == ()
    assert len(policies) == 4


def test_equal_selectors_share_a_group_and_both_select() -> None:
    a = policy("a", selector={"matchLabels": {"app": "x"}}, maxReplicasPerFleet=3)
    b = policy("b", selector={"matchLabels": {"app": "x"}}, maxReplicasPerFleet=2)
    verdict = evaluate(a_fleet({"app": "x"}, replicas=4), [a, b])
    assert verdict.policies == ("team-a/a", "team-a/b")
    assert len(verdict.findings) == 2
