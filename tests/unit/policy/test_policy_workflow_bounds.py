"""Workflow bounds from Policies: maxTaskDepth and maxChildrenPerWait, strictest wins,
carried to the router in FleetRules; and delegate tools judged at admission."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentarmy.api import wire
from agentarmy.api.agent import AgentSpec
from agentarmy.api.policy import PolicyRules
from agentarmy.api.rules import RuleLimit
from agentarmy.policy import NamedPolicy, PolicySet, agent_subject, effective_rules, evaluate
from agentarmy.policy.effective import Limit, RuntimeRules
from tests.unit.policy.builders import NS, a_fleet, policy


def enforced(*policies: NamedPolicy) -> RuntimeRules:
    subject = a_fleet()
    return effective_rules(PolicySet(policies), subject.namespace, subject.label_sets).enforced


def test_the_lowest_bound_wins_and_names_its_policy() -> None:
    rules = enforced(
        policy("wide", maxTaskDepth=4, maxChildrenPerWait=500),
        policy("narrow", maxTaskDepth=2, maxChildrenPerWait=800),
        policy("silent"),
    )
    assert rules.max_task_depth == Limit(2, "team-a/narrow")
    assert rules.max_children_per_wait == Limit(500, "team-a/wide")


def test_depth_zero_binds_and_is_carried_to_the_router() -> None:
    rules = enforced(policy("flat", maxTaskDepth=0))
    assert rules.binds_at_runtime
    pushed = rules.to_wire("f")
    assert pushed.maxTaskDepth == RuleLimit(value=0, policy="team-a/flat")
    assert pushed.maxChildrenPerWait is None


def test_a_fan_out_bound_alone_binds_at_runtime() -> None:
    rules = enforced(policy("p", maxChildrenPerWait=3))
    assert rules.binds_at_runtime
    assert rules.to_wire("f").maxChildrenPerWait == RuleLimit(value=3, policy="team-a/p")


def test_audit_policies_do_not_bound_the_enforced_rules() -> None:
    rules = enforced(policy("a", mode="audit", maxTaskDepth=1))
    assert rules.max_task_depth is None and not rules.binds_at_runtime


@pytest.mark.parametrize(
    ("rule", "value"),
    [
        ("maxTaskDepth", -1),
        ("maxTaskDepth", wire.MAX_DEPTH + 1),
        ("maxChildrenPerWait", 0),
        ("maxChildrenPerWait", wire.MAX_CHILDREN + 1),
    ],
)
def test_out_of_range_bounds_are_refused_naming_the_field(rule: str, value: int) -> None:
    with pytest.raises(ValidationError) as error:
        PolicyRules.model_validate({rule: value})
    assert error.value.errors()[0]["loc"] == (rule,)


def test_admission_judges_delegate_tool_names_like_allowed_tools() -> None:
    spec = AgentSpec.model_validate(
        {
            "capabilities": ["chat"],
            "tools": {"allowed": ["ask-reviewer"]},
            "delegates": [
                {"tool": "ask-reviewer", "fleet": "reviewers", "capability": "review"},
                {"tool": "ask-payments", "fleet": "payments", "capability": "refund"},
            ],
        }
    )
    subject = agent_subject(NS, "lead", {}, spec)
    verdict = evaluate(subject, [policy("tools", allowedTools=["ask-reviewer", "echo"])])
    (finding,) = verdict.findings
    assert (finding.policy, finding.rule) == ("team-a/tools", "allowedTools")
    assert finding.field == "spec.delegates[1].tool" and '"ask-payments"' in finding.message
