"""The static rules of a Policy, as an ordered table: rule name -> check.

Each check reads one Policy's rules and one subject's facts and yields a
finding for each thing it breaks. Runtime rules (rate limit, token budget,
approvals, sentinel, egress) have no check here: they combine into the
effective rules (effective.py) that the router and the operator enforce.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from agentarmy.api.policy import PolicyRules
from agentarmy.policy.findings import Finding, Mode
from agentarmy.policy.globs import any_match, covers
from agentarmy.policy.images import under
from agentarmy.policy.subjects import Subject


@dataclass(frozen=True)
class Context:
    """The Policy a check runs for."""

    policy: str
    mode: Mode
    rules: PolicyRules

    def finding(self, rule: str, field: str, message: str) -> Finding:
        return Finding(self.policy, rule, field, self.mode, message)


Check = Callable[[Context, Subject], Iterator[Finding]]
Facts = Callable[[Subject], Hashable]
"""The part of a subject one rule reads: equal facts, equal findings (the engine caches on it)."""


def _listed(values: list[str]) -> str:
    return ", ".join(values)


def check_models(ctx: Context, subject: Subject) -> Iterator[Finding]:
    rule, agent = ctx.rules.models, subject.agent
    if rule is None or agent is None or agent.provider == "none":
        return  # an agent without a model calls none
    if rule.providers and agent.provider not in rule.providers:
        yield ctx.finding(
            "models",
            f"{agent.prefix}.model.provider",
            f'{agent.prefix}.model.provider "{agent.provider}" is not one of '
            f"{_listed(rule.providers)}",
        )
    if rule.names and not any_match(agent.model, rule.names):
        yield ctx.finding(
            "models",
            f"{agent.prefix}.model.name",
            f'{agent.prefix}.model.name "{agent.model}" matches none of {_listed(rule.names)}',
        )


def check_tools(ctx: Context, subject: Subject) -> Iterator[Finding]:
    allowed, agent = ctx.rules.allowedTools, subject.agent
    if not allowed or agent is None:
        return
    named = [(f"{agent.prefix}.tools.allowed[{i}]", t) for i, t in enumerate(agent.tools)]
    named += [(f"{agent.prefix}.delegates[{i}].tool", t) for i, t in enumerate(agent.delegates)]
    for field, tool in named:
        if not any(covers(pattern, tool) for pattern in allowed):
            yield ctx.finding(
                "allowedTools", field, f'{field} "{tool}" is not allowed by {_listed(allowed)}'
            )


def check_images(ctx: Context, subject: Subject) -> Iterator[Finding]:
    registries, agent = ctx.rules.allowedImageRegistries, subject.agent
    if not registries or agent is None:
        return
    image = agent.normalized_image
    if any(under(image, entry) for entry in registries):
        return
    shown = f'"{agent.image}"' + (f" ({image})" if image != agent.image else "")
    yield ctx.finding(
        "allowedImageRegistries",
        f"{agent.prefix}.image",
        f"{agent.prefix}.image {shown} is not under {_listed(registries)}",
    )


def check_replicas(ctx: Context, subject: Subject) -> Iterator[Finding]:
    limit = ctx.rules.maxReplicasPerFleet
    if limit is None:
        return
    if subject.replicas is not None and subject.replicas > limit:
        yield ctx.finding(
            "maxReplicasPerFleet",
            "spec.replicas",
            f"spec.replicas {subject.replicas} is above the limit of {limit}",
        )
    if subject.autoscaling_max is not None and subject.autoscaling_max > limit:
        yield ctx.finding(
            "maxReplicasPerFleet",
            "spec.autoscaling.maxReplicas",
            f"spec.autoscaling.maxReplicas {subject.autoscaling_max} is above the limit of {limit}",
        )


def check_resource_limits(ctx: Context, subject: Subject) -> Iterator[Finding]:
    required, agent = ctx.rules.requireResourceLimits, subject.agent
    if not required or agent is None:
        return
    for resource in required:
        if resource not in agent.limits:
            field = f"{agent.prefix}.resources.limits.{resource}"
            yield ctx.finding(
                "requireResourceLimits", field, f"{field} must be set (the policy requires it)"
            )


def _model(s: Subject) -> Hashable:
    return None if s.agent is None else (s.agent.prefix, s.agent.provider, s.agent.model)


def _tools(s: Subject) -> Hashable:
    return None if s.agent is None else (s.agent.prefix, s.agent.tools, s.agent.delegates)


def _image(s: Subject) -> Hashable:
    return None if s.agent is None else (s.agent.prefix, s.agent.image)


def _replicas(s: Subject) -> Hashable:
    return (s.replicas, s.autoscaling_max)


def _limits(s: Subject) -> Hashable:
    return None if s.agent is None else (s.agent.prefix, s.agent.limits)


class Rule(NamedTuple):
    name: str
    check: Check
    facts: Facts
    configured: Callable[[PolicyRules], bool]
    """Whether a Policy sets this rule at all (one that does not never breaks it)."""


RULES: tuple[Rule, ...] = (
    Rule("models", check_models, _model, lambda r: r.models is not None),
    Rule("allowedTools", check_tools, _tools, lambda r: bool(r.allowedTools)),
    Rule("allowedImageRegistries", check_images, _image, lambda r: bool(r.allowedImageRegistries)),
    Rule(
        "maxReplicasPerFleet",
        check_replicas,
        _replicas,
        lambda r: r.maxReplicasPerFleet is not None,
    ),
    Rule(
        "requireResourceLimits",
        check_resource_limits,
        _limits,
        lambda r: bool(r.requireResourceLimits),
    ),
)
"""Every static rule, in the order its findings are reported."""
