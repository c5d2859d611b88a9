"""Properties over random Policies and subjects.

- Adding a Policy never loosens a verdict or the effective runtime rules.
- The compiled PolicySet (selector index, shared caches) agrees with a naive
  evaluation: every Policy's selector matched on its own, every rule checked.
"""

from __future__ import annotations

from collections import Counter
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentarmy.policy import (
    NamedPolicy,
    PolicySet,
    Subject,
    Verdict,
    effective_rules,
    engine,
    evaluate,
)
from agentarmy.policy.effective import Limit, RuntimeRules
from agentarmy.policy.findings import Finding
from agentarmy.policy.rules import RULES, Context
from tests.unit.policy.strategies import TOOLS, policy_lists, subjects

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEVERITY = {"allow": 0, "warn": 1, "deny": 2}
PROBE_TOOLS = (*TOOLS, "github.merge", "shell.exec", "fs.write", "gxssues")


def naive(subject: Subject, policies: list[NamedPolicy]) -> Verdict:
    """The verdict by definition: no index, no cache."""
    chosen = sorted(
        (
            p
            for p in policies
            if p.namespace == subject.namespace
            and any(p.spec.selector.matches(dict(labels)) for labels in subject.label_sets)
        ),
        key=lambda p: (p.namespace, p.name),
    )
    findings = [
        finding
        for check in (rule.check for rule in RULES)
        for p in chosen
        for finding in check(Context(p.ref, p.spec.mode, p.spec.rules), subject)
    ]
    limits = [
        (p.spec.rules.maxReplicasPerFleet, p.ref)
        for p in chosen
        if p.spec.rules.maxReplicasPerFleet is not None and p.spec.mode == "enforce"
    ]
    decided = {"maxReplicasPerFleet": min(limits)[1]} if limits and subject.kind != "Agent" else {}
    return Verdict(tuple(findings), tuple(p.ref for p in chosen), decided)


def same(left: Verdict, right: Verdict) -> bool:
    return (left.findings, left.policies, left.decided_by) == (
        right.findings,
        right.policies,
        right.decided_by,
    )


def well_formed(verdict: Verdict, policies: list[NamedPolicy]) -> None:
    modes = {p.ref: p.spec.mode for p in policies}
    for finding in verdict.findings:
        assert isinstance(finding, Finding)
        assert finding.policy in verdict.policies
        assert finding.mode == modes[finding.policy]
        assert finding.message.startswith(finding.field)
        assert finding.text().startswith(f"policy {finding.policy}, rule {finding.rule}: ")
    assert verdict.denials + verdict.warnings == tuple(
        sorted(verdict.findings, key=lambda f: f.mode == "audit")
    )


def at_most(after: Limit | None, before: Limit | None) -> bool:
    """``after`` is no looser than ``before`` (None: no limit)."""
    return before is None or (after is not None and after.value <= before.value)


def runtime_rules(policies: list[NamedPolicy], subject: Subject) -> RuntimeRules:
    return effective_rules(PolicySet(policies), subject.namespace, subject.label_sets).enforced


# --- adding a Policy never loosens ---------------------------------------------------------


@PROPERTY
@given(policy_lists(), subjects())
def test_adding_a_policy_never_loosens_a_verdict(
    drawn: tuple[list[NamedPolicy], NamedPolicy], subject: Subject
) -> None:
    policies, extra = drawn
    before = evaluate(subject, policies)
    after = evaluate(subject, [*policies, extra])
    alone = evaluate(subject, [extra])
    well_formed(after, [*policies, extra])

    # Every finding stays, and the new ones are exactly the extra Policy's own.
    assert Counter(after.findings) == Counter(before.findings) + Counter(alone.findings)
    assert not Counter(before.findings) - Counter(after.findings)
    assert set(before.policies) <= set(after.policies)
    if not before.allowed:
        assert not after.allowed
    assert SEVERITY[after.outcome] >= SEVERITY[before.outcome]

    limit_before = before.decided_by.get("maxReplicasPerFleet")
    limit_after = after.decided_by.get("maxReplicasPerFleet")
    if limit_before is not None:
        assert limit_after is not None
        by_ref = {p.ref: p.spec.rules.maxReplicasPerFleet for p in [*policies, extra]}
        assert by_ref[limit_after] <= by_ref[limit_before]  # type: ignore[operator]


@PROPERTY
@given(policy_lists(), subjects())
def test_adding_a_policy_never_loosens_the_runtime_rules(
    drawn: tuple[list[NamedPolicy], NamedPolicy], subject: Subject
) -> None:
    policies, extra = drawn
    before = runtime_rules(policies, subject)
    after = runtime_rules([*policies, extra], subject)

    for limit in (
        "max_replicas",
        "tasks_per_minute",
        "burst",
        "max_error_rate",
        "max_tokens_per_hour",
        "max_cost_per_hour",
    ):
        assert at_most(getattr(after, limit), getattr(before, limit)), limit
    if before.max_error_rate is not None and after.max_error_rate is not None:
        assert at_most(after.min_tasks, before.min_tasks)
        assert at_most(after.window_seconds, before.window_seconds)
    assert set(before.token_budgets) <= set(after.token_budgets)
    assert set(before.allowed_tools) <= set(after.allowed_tools)
    assert set(before.approval_tools) <= set(after.approval_tools)
    if before.egress is not None:
        assert after.egress is not None
        assert set(after.egress.ports) <= set(before.egress.ports)
        assert after.egress.allow_dns <= before.egress.allow_dns
        for cidr in after.egress.cidrs:
            assert _within_any(cidr, before.egress.cidrs), (cidr, before.egress.cidrs)
    for tool in PROBE_TOOLS:
        was, now = before.tool_call(tool), after.tool_call(tool)
        if not was.allowed:
            assert not now.allowed
        if was.allowed and now.allowed:
            assert set(was.approval_by) <= set(now.approval_by)


def _within_any(cidr: str, cidrs: tuple[str, ...]) -> bool:
    import ipaddress

    inner = ipaddress.ip_network(cidr)
    return any(
        inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
        for outer in (ipaddress.ip_network(c) for c in cidrs)
    )


# --- the compiled set agrees with the definition ------------------------------------------


@PROPERTY
@given(policy_lists(max_size=6), st.lists(subjects(), min_size=1, max_size=8))
def test_a_shared_policy_set_agrees_with_fresh_ones_and_the_definition(
    drawn: tuple[list[NamedPolicy], NamedPolicy], many: list[Subject]
) -> None:
    policies = [*drawn[0], drawn[1]]
    shared = PolicySet(policies)
    with patch.object(engine, "CACHE_LIMIT", 3):
        # Caches that fill up: they start over (findings) or stop growing (selections).
        cramped = PolicySet(policies)
        cramped_verdicts = [cramped.evaluate(s) for s in [*many, *many]]
    # Twice through, so the second pass reads every cache the first one filled.
    for subject, in_cramped in zip([*many, *many], cramped_verdicts, strict=True):
        cached = shared.evaluate(subject)
        fresh = PolicySet(policies).evaluate(subject)
        by_definition = naive(subject, policies)
        assert same(cached, fresh), subject
        assert same(cached, by_definition), subject
        assert same(in_cramped, by_definition), subject
        chosen = shared.selecting(subject.namespace, subject.label_sets)
        assert tuple(p.ref for p in chosen) == by_definition.policies
