"""What the operator does with a Policy verdict on objects that already exist: pure parts."""

from __future__ import annotations

from typing import Any

import pytest

from agentarmy.api import conditions as c
from agentarmy.api.agent import AgentSpec
from agentarmy.api.fleet import FleetSpec
from agentarmy.api.policy import PolicySpec
from agentarmy.operator import autoscale, compliance, rollout
from agentarmy.operator.agents import Observation, agent_status
from agentarmy.operator.cache import AgentView, PolicyView
from agentarmy.operator.policies import Report, Seen, policy_status, status_from
from agentarmy.policy import NamedPolicy, PolicySet, agent_subject, fleet_subject

NS = "team-a"


def policy(name: str = "baseline", mode: str = "enforce", **rules: Any) -> NamedPolicy:
    return NamedPolicy(NS, name, PolicySpec.model_validate({"mode": mode, "rules": rules}))


def agent_spec(image: str = "ghcr.io/acme/agent:1") -> AgentSpec:
    return AgentSpec.model_validate({"capabilities": ["echo"], "image": image})


def fleet_spec(replicas: int = 3, image: str = "ghcr.io/acme/agent:1") -> FleetSpec:
    return FleetSpec.model_validate(
        {"replicas": replicas, "template": {"spec": {"capabilities": ["echo"], "image": image}}}
    )


def agent_compliance(*policies: NamedPolicy, image: str = "evil.io/x") -> compliance.Compliance:
    subject = agent_subject(NS, "a", {}, agent_spec(image))
    verdict = PolicySet(policies).evaluate(subject)
    return compliance.Compliance(verdict, subject, compliance.AGENT_CONSEQUENCE)


def view(status: dict[str, Any] | None = None) -> AgentView:
    return AgentView(NS, "a", "u", "1", 1, "", False, {}, "", False, "", {}, status or {})


@pytest.mark.parametrize(
    ("policies", "status", "reason", "blocked"),
    [
        ((), "True", c.COMPLIANT, False),
        ((policy(allowedImageRegistries=["ghcr.io/acme/"]),), "False", c.POLICY_VIOLATION, True),
        (
            (policy(mode="audit", allowedImageRegistries=["ghcr.io/acme/"]),),
            "False",
            c.AUDIT_VIOLATION,
            False,
        ),
        ((policy(allowedImageRegistries=["evil.io/"]),), "True", c.COMPLIANT, False),
    ],
)
def test_verdict_becomes_policy_compliant(
    policies: tuple[NamedPolicy, ...], status: str, reason: str, blocked: bool
) -> None:
    found = agent_compliance(*policies)
    condition = found.condition([], 4)[0]
    assert (condition.type, condition.status, condition.reason) == (
        c.POLICY_COMPLIANT,
        status,
        reason,
    )
    assert condition.observedGeneration == 4
    assert found.blocked is blocked


def test_message_names_policy_rule_field_and_what_is_enforced() -> None:
    message = agent_compliance(policy(allowedImageRegistries=["ghcr.io/acme/"])).message
    assert message.startswith(
        'policy team-a/baseline, rule allowedImageRegistries: spec.image "evil.io/x" is not under'
    )
    assert compliance.AGENT_CONSEQUENCE in message


def test_same_verdict_is_no_change_and_a_new_one_is() -> None:
    denied = agent_compliance(policy(allowedImageRegistries=["ghcr.io/acme/"]))
    before = denied.condition([], 1)
    assert compliance.changed(before, denied.condition(before, 1)) is None
    after = agent_compliance().condition(before, 1)
    changed = compliance.changed(before, after)
    assert changed is not None and changed.status == "True"


def test_blocked_agent_without_pod_gets_no_pod_and_says_why() -> None:
    found = agent_compliance(policy(allowedImageRegistries=["ghcr.io/acme/"]))
    status = agent_status(view(), "", Observation(None, "h", policy=found))
    reasons = {x.type: (x.status, x.reason) for x in status.conditions}
    assert reasons[c.READY] == ("False", c.BLOCKED_BY_POLICY)
    assert reasons[c.POLICY_COMPLIANT] == ("False", c.POLICY_VIOLATION)
    assert status.phase == "Failed"


@pytest.mark.parametrize(
    ("replicas", "existing", "limit", "planned"),
    [
        (3, 0, None, 3),
        (3, 0, 5, 3),
        (8, 2, 5, 5),  # grows only up to the limit
        (8, 7, 5, 7),  # above the limit already: nothing removed, nothing added
        (10, 12, 5, 10),  # scaling down still works
    ],
)
def test_replica_limit_holds_growth_only(
    replicas: int, existing: int, limit: int | None, planned: int
) -> None:
    assert rollout.within_policy(fleet_spec(replicas), existing, limit).replicas == planned


def test_forbidden_template_creates_nothing_and_removes_only_excess() -> None:
    members = [rollout.Member(f"f-x-{i}", "old", True, True, f"2026-01-0{i + 1}") for i in range(4)]
    decision = rollout.Plan(("f-new-0",), ("f-x-0",))
    assert rollout.without_new_agents(decision, 4, members) == rollout.Plan((), ())
    assert rollout.without_new_agents(decision, 3, members) == rollout.Plan((), ("f-x-3",))


@pytest.mark.parametrize(
    ("target", "current", "limit", "result"),
    [(9, 3, None, 9), (9, 3, 5, 5), (4, 3, 5, 4), (9, 7, 5, 7), (2, 7, 5, 2)],
)
def test_autoscaler_never_grows_past_the_limit(
    target: int, current: int, limit: int | None, result: int
) -> None:
    assert autoscale.within_limit(target, current, limit) == result


def test_policy_status_counts_matches_and_lists_violations() -> None:
    strict = policy(allowedImageRegistries=["ghcr.io/acme/"], maxReplicasPerFleet=2)
    meta = {"namespace": NS, "name": "baseline", "uid": "u", "generation": 3}
    spec = strict.spec.model_dump(mode="json")
    seen = [
        Seen("Fleet", fleet_subject(NS, "web", {}, fleet_spec(3, "evil.io/x")), "2026-01-02"),
        Seen("Fleet", fleet_subject(NS, "ok", {}, fleet_spec(1)), ""),
        Seen("Agent", agent_subject(NS, "solo", {}, agent_spec("evil.io/y")), "2026-01-03"),
    ]
    status = policy_status(PolicyView.of(meta, spec, {}), seen)
    assert (status.matchedFleets, status.matchedAgents, status.violations) == (2, 1, 3)
    assert [(v.kind, v.name, v.rule) for v in status.recentViolations] == [
        ("Agent", "solo", "allowedImageRegistries"),
        ("Fleet", "web", "allowedImageRegistries"),
        ("Fleet", "web", "maxReplicasPerFleet"),
    ]
    ready = next(x for x in status.conditions if x.type == c.READY)
    assert (ready.status, ready.reason, ready.observedGeneration) == ("True", c.POLICY_ACTIVE, 3)


def test_policy_status_of_an_invalid_policy_is_not_ready() -> None:
    meta = {"namespace": NS, "name": "bad", "uid": "u", "generation": 1}
    view_ = PolicyView.of(meta, {"rules": {"allowedTools": ["[oops"]}}, {})
    status = policy_status(view_, [])
    ready = next(x for x in status.conditions if x.type == c.READY)
    assert (ready.status, ready.reason) == ("False", c.INVALID_SPEC)
    assert "spec.rules.allowedTools[0]" in ready.message


def test_a_first_verdict_is_news_only_when_something_is_broken() -> None:
    """A new compliant Agent costs no Event; a new violating one gets one."""
    assert compliance.changed([], agent_compliance().condition([], 1)) is None
    denied = agent_compliance(policy(allowedImageRegistries=["ghcr.io/acme/"]))
    first = compliance.changed([], denied.condition([], 1))
    assert first is not None and first.reason == c.POLICY_VIOLATION


def test_one_namespace_report_gives_each_policy_the_status_it_has_alone() -> None:
    """The reconciler evaluates a namespace once for all its Policies; that must not mix
    one Policy's matches or findings into another's."""
    policies = [
        policy("images", allowedImageRegistries=["ghcr.io/acme/"]),
        policy("limit", maxReplicasPerFleet=2),
        NamedPolicy(
            NS,
            "team-b",
            PolicySpec.model_validate(
                {"selector": {"matchLabels": {"team": "b"}}, "rules": {"maxReplicasPerFleet": 1}}
            ),
        ),
    ]
    seen = [
        Seen("Fleet", fleet_subject(NS, "web", {"team": "b"}, fleet_spec(3, "evil.io/x")), "1"),
        Seen("Fleet", fleet_subject(NS, "ok", {}, fleet_spec(1)), ""),
        Seen("Agent", agent_subject(NS, "solo", {"team": "b"}, agent_spec("evil.io/y")), "2"),
    ]
    report = Report.of(PolicySet(policies), seen)
    for p in policies:
        meta = {"namespace": NS, "name": p.name, "uid": p.name, "generation": 1}
        view_ = PolicyView.of(meta, p.spec.model_dump(mode="json"), {})
        together, alone = status_from(view_, report), policy_status(view_, seen)
        drop = {"conditions": {"__all__": {"lastTransitionTime"}}}
        assert together.model_dump(exclude=drop) == alone.model_dump(exclude=drop)
        assert together.violations == alone.violations
    assert report.fleets[f"{NS}/team-b"] == 1 and report.agents[f"{NS}/team-b"] == 1
