"""The effective runtime rules of a fleet: every selecting Policy combined, strictest wins."""

from __future__ import annotations

import json
from typing import Any

from agentarmy.api.agent import PolicyOverrides
from agentarmy.api.rules import FleetRules
from agentarmy.policy import (
    EffectiveRules,
    NamedPolicy,
    PolicySet,
    RuntimeRules,
    ToolDecision,
    effective_rules,
)
from agentarmy.policy.effective import OVERRIDES, Egress, Limit, TokenBudget
from agentarmy.policy.findings import Finding
from tests.unit.policy.builders import a_fleet, policy


def rules_for(
    policies: list[NamedPolicy],
    labels: dict[str, str] | None = None,
    overrides: PolicyOverrides | None = None,
    **fleet: Any,
) -> EffectiveRules:
    subject = a_fleet(labels, **fleet)
    return effective_rules(PolicySet(policies), subject.namespace, subject.label_sets, overrides)


def enforced(policies: list[NamedPolicy], **kwargs: Any) -> RuntimeRules:
    return rules_for(policies, **kwargs).enforced


def test_no_policies_no_rules() -> None:
    assert rules_for([]) == EffectiveRules()
    rules = enforced([])
    assert rules.max_replicas is None and rules.egress is None and rules.allowed_tools == ()
    assert rules.tool_call("anything") == ToolDecision(allowed=True)


def test_max_replicas_is_the_lowest_with_its_policy() -> None:
    policies = [
        policy("a", maxReplicasPerFleet=8),
        policy("b", maxReplicasPerFleet=3),
        policy("c", maxReplicasPerFleet=5),
        policy("d"),
    ]
    rules = enforced(policies)
    assert rules.max_replicas == Limit(3, "team-a/b")
    assert rules.policies == ("team-a/a", "team-a/b", "team-a/c", "team-a/d")


def test_rate_limit_takes_the_lowest_rate_and_burst_separately() -> None:
    policies = [
        policy("a", taskRateLimit={"tasksPerMinute": 60, "burst": 10}),
        policy("b", taskRateLimit={"tasksPerMinute": 30}),  # burst 0: same as the rate
        policy("c", taskRateLimit={"tasksPerMinute": 120, "burst": 200}),
    ]
    rules = enforced(policies)
    assert rules.tasks_per_minute == Limit(30, "team-a/b")
    assert rules.burst == Limit(10, "team-a/a")


def test_overrides_only_tighten() -> None:
    policies = [policy("a", taskRateLimit={"tasksPerMinute": 60})]
    looser = enforced(policies, overrides=PolicyOverrides(tasksPerMinute=100))
    assert looser.tasks_per_minute == Limit(60, "team-a/a")
    tighter = enforced(policies, overrides=PolicyOverrides(tasksPerMinute=20))
    assert tighter.tasks_per_minute == Limit(20, OVERRIDES)


def test_token_budgets_all_apply() -> None:
    policies = [
        policy("a", tokenBudget={"tokens": 50_000, "window": "1h"}),
        policy("b", tokenBudget={"tokens": 10_000, "window": "5m"}),
    ]
    rules = enforced(policies, overrides=PolicyOverrides(tokensPerHour=20_000))
    assert rules.token_budgets == (
        TokenBudget(10_000, 300.0, "team-a/b"),
        TokenBudget(20_000, 3600.0, OVERRIDES),
        TokenBudget(50_000, 3600.0, "team-a/a"),
    )


def test_allowed_tools_intersect() -> None:
    policies = [
        policy("a", allowedTools=["github.*", "fs.read"]),
        policy("b", allowedTools=["github.issues.*", "web.search"]),
        policy("c"),  # lists no tools: allows any
    ]
    rules = enforced(policies)
    assert rules.allowed_tools == (
        ("team-a/a", ("fs.read", "github.*")),
        ("team-a/b", ("github.issues.*", "web.search")),
    )
    assert rules.tool_call("github.issues.list").allowed
    decision = rules.tool_call("github.repos.delete")
    assert decision == ToolDecision(
        allowed=False,
        finding=Finding(
            "team-a/b",
            "allowedTools",
            "tool",
            "enforce",
            'tool "github.repos.delete" is not allowed by github.issues.*, web.search',
        ),
    )
    assert rules.tool_call("fs.read").finding is not None
    assert rules.tool_call("fs.read").finding.policy == "team-a/b"  # type: ignore[union-attr]
    assert rules.tool_call("web.search").finding.policy == "team-a/a"  # type: ignore[union-attr]


def test_approvals_unite() -> None:
    policies = [
        policy("a", approvalRequiredTools=["github.merge", "shell.*"]),
        policy("b", approvalRequiredTools=["shell.*", "payments.*"]),
    ]
    overrides = PolicyOverrides(approvalRequiredTools=["fs.delete"])
    rules = enforced(policies, overrides=overrides)
    assert rules.approval_tools == (
        ("fs.delete", OVERRIDES),
        ("github.merge", "team-a/a"),
        ("payments.*", "team-a/b"),
        ("shell.*", "team-a/a"),
        ("shell.*", "team-a/b"),
    )
    decision = rules.tool_call("shell.exec")
    assert decision.allowed and decision.needs_approval
    assert decision.approval_by == ("team-a/a", "team-a/b")
    assert rules.tool_call("fs.delete").approval_by == (OVERRIDES,)
    assert not rules.tool_call("fs.read").needs_approval


def test_a_refused_tool_needs_no_approval() -> None:
    rules = enforced(
        [policy("a", allowedTools=["fs.*"], approvalRequiredTools=["shell.*", "fs.delete"])]
    )
    refused = rules.tool_call("shell.exec")
    assert not refused.allowed and refused.approval_by == ()
    allowed = rules.tool_call("fs.delete")
    assert allowed.allowed and allowed.approval_by == ("team-a/a",)


def test_sentinel_bounds_take_the_strictest() -> None:
    policies = [
        policy("a", sentinel={"maxErrorRate": 0.5, "minTasks": 10, "window": "10m"}),
        policy("b", sentinel={"maxErrorRate": 0.2, "minTasks": 50, "window": "1m"}),
        policy("c", sentinel={"maxTokensPerHour": 1000, "maxCostPerHour": 2.5}),
        policy("d", sentinel={"maxTokensPerHour": 500, "maxCostPerHour": 9}),
    ]
    rules = enforced(policies)
    assert rules.max_error_rate == Limit(0.2, "team-a/b")
    assert rules.min_tasks == Limit(10, "team-a/a")
    assert rules.window_seconds == Limit(60.0, "team-a/b")
    assert rules.max_tokens_per_hour == Limit(500, "team-a/d")
    assert rules.max_cost_per_hour == Limit(2.5, "team-a/c")


def test_sentinel_min_tasks_and_window_count_only_with_an_error_rate() -> None:
    rules = enforced([policy("c", sentinel={"maxCostPerHour": 1, "minTasks": 1, "window": "1s"})])
    assert rules.max_error_rate is None
    assert rules.min_tasks is None and rules.window_seconds is None
    assert rules.max_cost_per_hour == Limit(1, "team-a/c")


def test_egress_of_one_policy() -> None:
    rules = enforced([policy("a", egress={"cidrs": ["10.0.0.0/8", "10.0.0.0/8"]})])
    assert rules.egress == Egress(("10.0.0.0/8",), (443,), True, ("team-a/a",))


def test_egress_intersects() -> None:
    policies = [
        policy(
            "a",
            egress={
                "cidrs": ["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"],
                "ports": [443, 8443],
            },
        ),
        policy(
            "b",
            egress={
                "cidrs": ["10.1.0.0/16", "192.168.0.0/16", "172.16.0.0/12", "2001:db8:1::/48"],
                "ports": [443, 80],
                "allowDNS": False,
            },
        ),
    ]
    rules = enforced(policies)
    assert rules.egress == Egress(
        cidrs=("10.1.0.0/16", "192.168.1.0/24", "2001:db8:1::/48"),
        ports=(443,),
        allow_dns=False,
        policies=("team-a/a", "team-a/b"),
    )


def test_egress_disjoint_allows_nothing() -> None:
    policies = [
        policy("a", egress={"cidrs": ["10.0.0.0/8"], "ports": [443]}),
        policy("b", egress={"cidrs": ["172.16.0.0/12"], "ports": [80]}),
    ]
    egress = enforced(policies).egress
    assert egress is not None and egress.cidrs == () and egress.ports == ()


def test_audit_policies_are_combined_apart() -> None:
    policies = [
        policy("rule", maxReplicasPerFleet=10, allowedTools=["fs.*"]),
        policy("watch", mode="audit", maxReplicasPerFleet=2, allowedTools=["fs.read"]),
    ]
    rules = rules_for(policies, overrides=PolicyOverrides(tasksPerMinute=5))
    assert rules.enforced.mode == "enforce" and rules.audited.mode == "audit"
    assert rules.enforced.policies == ("team-a/rule",)
    assert rules.audited.policies == ("team-a/watch",)
    assert rules.enforced.max_replicas == Limit(10, "team-a/rule")
    assert rules.audited.max_replicas == Limit(2, "team-a/watch")
    assert rules.enforced.tool_call("fs.write").allowed
    audit_decision = rules.audited.tool_call("fs.write")
    assert not audit_decision.allowed
    assert audit_decision.finding is not None and audit_decision.finding.mode == "audit"
    assert rules.enforced.tasks_per_minute == Limit(5, OVERRIDES)
    assert rules.audited.tasks_per_minute is None  # overrides bind; they are not audited


def test_only_selecting_policies_of_the_namespace_count() -> None:
    policies = [
        policy("mine", selector={"matchLabels": {"app": "x"}}, maxReplicasPerFleet=5),
        policy("not-mine", selector={"matchLabels": {"app": "y"}}, maxReplicasPerFleet=1),
        policy("elsewhere", namespace="team-b", maxReplicasPerFleet=1),
        policy("by-template", selector={"matchLabels": {"role": "r"}}, maxReplicasPerFleet=4),
    ]
    rules = enforced(policies, labels={"app": "x"}, template_labels={"role": "r"})
    assert rules.policies == ("team-a/by-template", "team-a/mine")
    assert rules.max_replicas == Limit(4, "team-a/by-template")


def test_the_router_gets_the_enforced_runtime_rules_on_the_wire() -> None:
    policies = [
        policy(
            "a",
            maxReplicasPerFleet=3,
            taskRateLimit={"tasksPerMinute": 60},
            tokenBudget={"tokens": 100},
            allowedTools=["fs.*"],
            approvalRequiredTools=["fs.delete"],
            sentinel={"maxErrorRate": 0.1},
            egress={"cidrs": ["10.0.0.0/8"]},
        ),
        policy("w", mode="audit", taskRateLimit={"tasksPerMinute": 1}),
    ]
    effective = rules_for(policies)
    assert effective.enforced.binds_at_runtime
    wire_rules = effective.enforced.to_wire("f")
    data = json.loads(wire_rules.model_dump_json())
    assert FleetRules.model_validate(data) == wire_rules
    assert data["fleet"] == "f"
    assert data["tasksPerMinute"] == {"value": 60, "policy": "team-a/a"}
    assert data["burst"] == {"value": 60, "policy": "team-a/a"}
    assert data["tokenBudgets"] == [{"tokens": 100, "windowSeconds": 3600.0, "policy": "team-a/a"}]
    assert data["allowedTools"] == [{"policy": "team-a/a", "globs": ["fs.*"]}]
    assert data["approvalTools"] == [{"tool": "fs.delete", "policy": "team-a/a"}]
    assert data["sentinel"]["maxErrorRate"] == {"value": 0.1, "policy": "team-a/a"}
    assert data["sentinel"]["minTasks"] == {"value": 20, "policy": "team-a/a"}


def test_rules_that_only_admission_enforces_do_not_bind_at_runtime() -> None:
    effective = rules_for([policy("a", maxReplicasPerFleet=3, egress={"cidrs": ["10.0.0.0/8"]})])
    assert not effective.enforced.binds_at_runtime
