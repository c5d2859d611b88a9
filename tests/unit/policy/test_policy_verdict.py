"""Audit and enforce, the verdict's outcome, and which Policy decided a limit."""

from __future__ import annotations

from typing import Any

from agentarmy.policy import Finding, NamedPolicy, PolicySet, Verdict, evaluate
from agentarmy.policy.findings import ALLOW
from tests.unit.policy.builders import a_fleet, a_scale, an_agent, policy

REGISTRY: dict[str, Any] = {"allowedImageRegistries": ["ghcr.io/acme/"]}


def test_no_policies_allow() -> None:
    verdict = evaluate(an_agent(image="evil.io/x"), [])
    assert verdict == ALLOW
    assert (verdict.outcome, verdict.allowed, verdict.message()) == ("allow", True, "")


def test_selected_but_compliant_allows_and_lists_the_policy() -> None:
    verdict = evaluate(an_agent(), [policy(**REGISTRY)])
    assert verdict.outcome == "allow" and verdict.allowed
    assert verdict.policies == ("team-a/baseline",)


def test_enforce_finding_denies() -> None:
    verdict = evaluate(an_agent(image="evil.io/x"), [policy(**REGISTRY)])
    assert verdict.outcome == "deny" and not verdict.allowed
    assert verdict.denials == verdict.findings and verdict.warnings == ()
    assert verdict.message() == (
        'policy team-a/baseline, rule allowedImageRegistries: spec.image "evil.io/x" '
        "is not under ghcr.io/acme/"
    )


def test_audit_finding_warns() -> None:
    verdict = evaluate(an_agent(image="evil.io/x"), [policy(mode="audit", **REGISTRY)])
    assert verdict.outcome == "warn" and verdict.allowed
    assert verdict.denials == () and len(verdict.warnings) == 1
    assert verdict.warnings[0].mode == "audit"
    assert verdict.message() == ""


def test_enforce_and_audit_together() -> None:
    strict = policy("strict", **REGISTRY)
    watch = policy("watch", mode="audit", requireResourceLimits=["cpu"])
    verdict = evaluate(an_agent(image="evil.io/x"), [strict, watch])
    assert verdict.outcome == "deny"
    assert [f.policy for f in verdict.denials] == ["team-a/strict"]
    assert [f.policy for f in verdict.warnings] == ["team-a/watch"]
    assert "team-a/watch" not in verdict.message()


def test_every_enforce_finding_denies_and_is_named() -> None:
    p1 = policy("p1", **REGISTRY)
    p2 = policy("p2", allowedTools=["fs.read"])
    verdict = evaluate(an_agent(image="evil.io/x", tools=["fs.write"]), [p1, p2])
    assert len(verdict.denials) == 2
    assert verdict.message().count("policy team-a/") == 2
    assert "rule allowedTools" in verdict.message()
    assert "rule allowedImageRegistries" in verdict.message()


def test_finding_as_dict() -> None:
    finding = evaluate(an_agent(image="evil.io/x"), [policy(**REGISTRY)]).findings[0]
    assert finding.as_dict() == {
        "policy": "team-a/baseline",
        "rule": "allowedImageRegistries",
        "field": "spec.image",
        "mode": "enforce",
        "message": 'spec.image "evil.io/x" is not under ghcr.io/acme/',
    }


def test_named_policy_from_object() -> None:
    obj = {
        "metadata": {"namespace": "team-a", "name": "caps"},
        "spec": {"rules": {"maxReplicasPerFleet": 2}},
    }
    named = NamedPolicy.from_object(obj)
    assert named.ref == "team-a/caps" and named.spec.mode == "enforce"
    assert named.spec.rules.maxReplicasPerFleet == 2
    assert NamedPolicy.from_object({"metadata": {"namespace": "n", "name": "x"}}).spec.rules


# --- several Policies: the strictest limit, and who set it --------------------------------


def caps(*limits: tuple[str, int, str]) -> list[NamedPolicy]:
    return [policy(name, mode=mode, maxReplicasPerFleet=n) for name, n, mode in limits]


def test_decided_by_names_the_lowest_enforced_limit() -> None:
    policies = caps(("loose", 10, "enforce"), ("tight", 3, "enforce"), ("mid", 5, "enforce"))
    verdict = evaluate(a_fleet(replicas=4), policies)
    assert verdict.decided_by == {"maxReplicasPerFleet": "team-a/tight"}
    assert [f.policy for f in verdict.denials] == ["team-a/tight"]
    assert verdict.outcome == "deny"


def test_decided_by_is_reported_even_when_within_the_limit() -> None:
    verdict = evaluate(a_fleet(replicas=1), caps(("a", 10, "enforce"), ("b", 3, "enforce")))
    assert verdict.outcome == "allow"
    assert verdict.decided_by == {"maxReplicasPerFleet": "team-a/b"}


def test_decided_by_on_a_tie_is_the_first_by_name() -> None:
    verdict = evaluate(a_fleet(replicas=9), caps(("b", 3, "enforce"), ("a", 3, "enforce")))
    assert verdict.decided_by == {"maxReplicasPerFleet": "team-a/a"}
    assert len(verdict.denials) == 2


def test_audit_limits_do_not_decide() -> None:
    policies = caps(("watch", 1, "audit"), ("rule", 4, "enforce"))
    verdict = evaluate(a_fleet(replicas=3), policies)
    assert verdict.decided_by == {"maxReplicasPerFleet": "team-a/rule"}
    assert verdict.outcome == "warn"
    only_audit = evaluate(a_fleet(replicas=3), caps(("watch", 1, "audit")))
    assert only_audit.decided_by == {}


def test_decided_by_for_a_scale_change_not_for_an_agent() -> None:
    policies = caps(("a", 5, "enforce"), ("b", 2, "enforce"))
    assert evaluate(a_scale(3), policies).decided_by == {"maxReplicasPerFleet": "team-a/b"}
    assert evaluate(an_agent(), policies).decided_by == {}
    assert evaluate(a_fleet(), [policy(**REGISTRY)]).decided_by == {}


def test_decided_by_only_among_selecting_policies() -> None:
    policies = [
        policy("other", selector={"matchLabels": {"app": "y"}}, maxReplicasPerFleet=1),
        policy("mine", selector={"matchLabels": {"app": "x"}}, maxReplicasPerFleet=4),
    ]
    verdict = evaluate(a_fleet({"app": "x"}, replicas=2), policies)
    assert verdict.decided_by == {"maxReplicasPerFleet": "team-a/mine"}
    assert verdict.outcome == "allow"


def test_policy_set_evaluate_equals_evaluate() -> None:
    policies = [policy("a", **REGISTRY), policy("b", maxReplicasPerFleet=1)]
    subject = a_fleet(replicas=2, image="evil.io/x")
    shared = PolicySet(policies)
    assert shared.evaluate(subject) == evaluate(subject, policies) == evaluate(subject, shared)
    assert shared.evaluate(subject).decided_by == evaluate(subject, policies).decided_by


def test_verdict_defaults() -> None:
    verdict = Verdict(findings=(Finding("n/p", "models", "spec.model.name", "audit", "m"),))
    assert verdict.outcome == "warn" and verdict.policies == () and verdict.decided_by == {}
