"""What a Policy is evaluated on: the facts of an Agent, a Fleet or a scale change.

A subject is small and hashable: the labels Policies select it by and the few
fields the rules read, so verdicts on equal facts can be cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agentarmy.api import labels
from agentarmy.api.agent import AgentSpec
from agentarmy.api.fleet import FleetSpec
from agentarmy.policy.images import normalize_image

FLEET_LABEL = labels.FLEET
"""The label every Agent of a Fleet carries (the operator sets it)."""
MANAGED_BY = (labels.MANAGED_BY, labels.MANAGER)
"""The label the operator also puts on every Agent it makes from a Fleet."""

Labels = tuple[tuple[str, str], ...]
SubjectKind = Literal["Agent", "Fleet", "Scale"]


def frozen_labels(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class AgentFacts:
    """What the static rules read of one Agent spec (an Agent's, or a Fleet's template)."""

    prefix: str
    """Where the Agent spec sits in the object: ``spec`` or ``spec.template.spec``."""
    image: str
    """As written in the spec."""
    provider: str
    model: str
    tools: tuple[str, ...]
    limits: frozenset[str]
    delegates: tuple[str, ...] = ()
    """Tool names of the Agent's delegates (other fleets offered to its model as tools)."""

    @classmethod
    def of(cls, spec: AgentSpec, prefix: str) -> AgentFacts:
        return cls(
            prefix=prefix,
            image=spec.image,
            provider=spec.model.provider,
            model=spec.model.name,
            tools=tuple(spec.tools.allowed),
            limits=frozenset(spec.resources.limits),
            delegates=tuple(d.tool for d in spec.delegates),
        )

    @property
    def normalized_image(self) -> str:
        return normalize_image(self.image)


@dataclass(frozen=True)
class Subject:
    kind: SubjectKind
    namespace: str
    name: str
    label_sets: tuple[Labels, ...]
    """A Policy governs the subject when its selector matches any of these."""
    agent: AgentFacts | None = None
    replicas: int | None = None
    autoscaling_max: int | None = None

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


def agent_subject(namespace: str, name: str, labels: Mapping[str, str], spec: AgentSpec) -> Subject:
    return Subject("Agent", namespace, name, (frozen_labels(labels),), AgentFacts.of(spec, "spec"))


def fleet_agent_labels(name: str, template_labels: Mapping[str, str]) -> dict[str, str]:
    """The labels the Agents of Fleet ``name`` carry (all but the template hash, which
    changes with every edit and which no Policy should select on)."""
    return {**template_labels, FLEET_LABEL: name, MANAGED_BY[0]: MANAGED_BY[1]}


def fleet_subject(namespace: str, name: str, labels: Mapping[str, str], spec: FleetSpec) -> Subject:
    """A Fleet is governed by Policies that select it or the Agents it makes."""
    agent_labels = fleet_agent_labels(name, spec.template.metadata.labels)
    return Subject(
        "Fleet",
        namespace,
        name,
        (frozen_labels(labels), frozen_labels(agent_labels)),
        AgentFacts.of(spec.template.spec, "spec.template.spec"),
        replicas=spec.replicas,
        autoscaling_max=(
            spec.autoscaling.maxReplicas
            if spec.autoscaling is not None and spec.autoscaling.enabled
            else None
        ),
    )


def scale_subject(
    namespace: str, name: str, labels: Mapping[str, str], spec: FleetSpec, replicas: int
) -> Subject:
    """A change of a Fleet's replicas through ``fleets/scale`` (``kubectl scale``, an HPA)."""
    agent_labels = fleet_agent_labels(name, spec.template.metadata.labels)
    return Subject(
        "Scale",
        namespace,
        name,
        (frozen_labels(labels), frozen_labels(agent_labels)),
        replicas=replicas,
    )
