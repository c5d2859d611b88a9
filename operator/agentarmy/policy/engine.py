"""Select the Policies that govern a subject and evaluate their rules.

``PolicySet`` is an immutable snapshot of Policies, compiled once. Selectors
are grouped (equal selectors are evaluated once) and matchLabels go into an
inverted index, so choosing the Policies of a subject costs per label, not per
Policy. Findings are cached per (selected Policies, rule, the facts that rule
reads): subjects that share an image or a model share that work. Build a new
set when a Policy changes; never mutate one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentarmy.api.common import LabelSelector
from agentarmy.api.policy import PolicySpec
from agentarmy.policy.findings import Finding, Verdict
from agentarmy.policy.rules import RULES, Context
from agentarmy.policy.subjects import Labels, Subject

CACHE_LIMIT = 65_536
"""Cached entries per PolicySet before the caches start over."""


@dataclass(frozen=True)
class NamedPolicy:
    """A Policy's identity and its (validated) spec."""

    namespace: str
    name: str
    spec: PolicySpec

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NamedPolicy:
        """From a Policy as the API server returns it; pydantic's ValidationError if invalid."""
        meta = obj["metadata"]
        spec = PolicySpec.model_validate(obj.get("spec") or {})
        return cls(meta["namespace"], meta["name"], spec)


@dataclass
class _Group:
    """Policies of one namespace with equal selectors."""

    selector: LabelSelector
    match_labels: Labels
    keys: tuple[str, ...]
    """Label keys the selector reads (its verdict is cached on their values)."""
    members: list[int]


class _NamespaceIndex:
    """Which Policies of one namespace select a set of labels."""

    def __init__(self, policies: list[tuple[int, NamedPolicy]]) -> None:
        groups: dict[str, _Group] = {}
        for index, policy in policies:
            selector = policy.spec.selector
            key = selector.model_dump_json()
            if key not in groups:
                keys = set(selector.matchLabels) | {r.key for r in selector.matchExpressions}
                groups[key] = _Group(
                    selector, tuple(sorted(selector.matchLabels.items())), tuple(sorted(keys)), []
                )
            groups[key].members.append(index)
        self.always: list[int] = []
        self.by_label: dict[tuple[str, str], list[_Group]] = defaultdict(list)
        self.expressions: list[_Group] = []
        for group in groups.values():
            if group.selector.matchExpressions:
                self.expressions.append(group)
            elif not group.match_labels:
                self.always += group.members
            else:
                for pair in group.match_labels:
                    self.by_label[pair].append(group)
        self._expression_verdicts: dict[tuple[int, tuple[str | None, ...]], bool] = {}

    def select(self, label_sets: tuple[Labels, ...]) -> frozenset[int]:
        chosen = set(self.always)
        for labels in label_sets:
            hits: dict[int, int] = defaultdict(int)
            for pair in labels:
                for group in self.by_label.get(pair, ()):
                    hits[id(group)] += 1
                    if hits[id(group)] == len(group.match_labels):
                        chosen.update(group.members)
            if self.expressions:
                as_dict = dict(labels)
                for number, group in enumerate(self.expressions):
                    projection = tuple(as_dict.get(k) for k in group.keys)
                    memo = (number, projection)
                    selected = self._expression_verdicts.get(memo)
                    if selected is None:
                        selected = group.selector.matches(as_dict)
                        if len(self._expression_verdicts) < CACHE_LIMIT:
                            self._expression_verdicts[memo] = selected
                    if selected:
                        chosen.update(group.members)
        return frozenset(chosen)


class PolicySet:
    """The Policies evaluation runs against; compiled once, read many times."""

    def __init__(self, policies: Iterable[NamedPolicy] = ()) -> None:
        ordered = sorted(policies, key=lambda p: (p.namespace, p.name))
        self.policies: tuple[NamedPolicy, ...] = tuple(ordered)
        self._contexts = tuple(Context(p.ref, p.spec.mode, p.spec.rules) for p in ordered)
        by_namespace: dict[str, list[tuple[int, NamedPolicy]]] = defaultdict(list)
        for i, policy in enumerate(ordered):
            by_namespace[policy.namespace].append((i, policy))
        self._namespaces = {ns: _NamespaceIndex(p) for ns, p in by_namespace.items()}
        self._selections: dict[frozenset[int], tuple[int, ...]] = {}
        self._findings: dict[tuple[tuple[int, ...], int, Hashable], tuple[Finding, ...]] = {}

    def __len__(self) -> int:
        return len(self.policies)

    def _select(self, namespace: str, label_sets: tuple[Labels, ...]) -> tuple[int, ...]:
        index = self._namespaces.get(namespace)
        if index is None:
            return ()
        chosen = index.select(label_sets)
        selected = self._selections.get(chosen)
        if selected is None:
            selected = tuple(sorted(chosen))
            if len(self._selections) < CACHE_LIMIT:
                self._selections[chosen] = selected
        return selected

    def selecting(self, namespace: str, label_sets: tuple[Labels, ...]) -> tuple[NamedPolicy, ...]:
        """The Policies that govern an object with these labels, sorted by namespace/name."""
        return tuple(self.policies[i] for i in self._select(namespace, label_sets))

    def evaluate(self, subject: Subject) -> Verdict:
        selected = self._select(subject.namespace, subject.label_sets)
        if not selected:
            return Verdict()
        findings: list[Finding] = []
        for number, (_, check, facts) in enumerate(RULES):
            key = (selected, number, facts(subject))
            found = self._findings.get(key)
            if found is None:
                found = tuple(f for i in selected for f in check(self._contexts[i], subject))
                if len(self._findings) >= CACHE_LIMIT:
                    self._findings.clear()
                self._findings[key] = found
            findings += found
        return Verdict(
            findings=tuple(findings),
            policies=tuple(self.policies[i].ref for i in selected),
            decided_by=self._decided_by(selected, subject),
        )

    def _decided_by(self, selected: tuple[int, ...], subject: Subject) -> dict[str, str]:
        if subject.kind == "Agent":
            return {}
        limits = [
            (rules.maxReplicasPerFleet, context.policy)
            for context in (self._contexts[i] for i in selected)
            if (rules := context.rules).maxReplicasPerFleet is not None
            and context.mode == "enforce"
        ]
        return {"maxReplicasPerFleet": min(limits)[1]} if limits else {}


def evaluate(subject: Subject, policies: Iterable[NamedPolicy] | PolicySet) -> Verdict:
    """The verdict of ``policies`` on ``subject`` (a one-off; keep a PolicySet to reuse)."""
    policy_set = policies if isinstance(policies, PolicySet) else PolicySet(policies)
    return policy_set.evaluate(subject)
