"""Select the Policies that govern a subject and evaluate their rules.

``PolicySet`` is an immutable snapshot of Policies, compiled once. Sets of
Policies are bitmasks over its sorted list. Selectors are grouped (equal
selectors are evaluated once) and judged per label key, so choosing the
Policies of a subject costs per label key, not per Policy. A rule is checked
only against the selected Policies that set it, and what it finds is kept per
(rule, the facts that rule reads) for each Policy checked: subjects that share
an image or a model share that work, and a subject that breaks nothing costs a
lookup per rule. Build a new
set when a Policy changes; never mutate one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
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


def _bits(mask: int) -> Iterator[int]:
    """The indexes of the set bits of ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class _NamespaceIndex:
    """Which Policies of one namespace select a set of labels, as a bitmask.

    Equal selectors form one group. A group fails on a label key when its
    requirements on that key (matchLabels and matchExpressions alike) reject the
    key's value, or its absence; it selects when it fails on no key. So choosing
    costs one dict lookup per label key some selector reads, whatever the number
    of Policies, and each (key, value) is judged once.
    """

    def __init__(self, policies: list[tuple[int, NamedPolicy]]) -> None:
        members: dict[str, int] = {}
        selectors: dict[str, LabelSelector] = {}
        for index, policy in policies:
            key = policy.spec.selector.model_dump_json()
            selectors.setdefault(key, policy.spec.selector)
            members[key] = members.get(key, 0) | 1 << index
        self.members = list(members.values())
        """Group -> its Policies (bits of the PolicySet's index)."""
        self.all_groups = (1 << len(self.members)) - 1
        # Per label key: each group's requirements on that key alone, as a selector.
        by_key: dict[str, list[tuple[int, LabelSelector]]] = defaultdict(list)
        for group, selector in enumerate(selectors.values()):
            keys = set(selector.matchLabels) | {r.key for r in selector.matchExpressions}
            for label in keys:
                only = LabelSelector(
                    matchLabels={k: v for k, v in selector.matchLabels.items() if k == label},
                    matchExpressions=[r for r in selector.matchExpressions if r.key == label],
                )
                by_key[label].append((group, only))
        self._requirements = dict(by_key)
        self._failing: list[tuple[str, dict[str | None, int]]] = [(k, {}) for k in sorted(by_key)]
        self._policies: dict[int, int] = {}

    def _fails(self, label: str, value: str | None) -> int:
        labels = {} if value is None else {label: value}
        mask = 0
        for group, only in self._requirements[label]:
            if not only.matches(labels):
                mask |= 1 << group
        return mask

    def select(self, label_sets: tuple[Labels, ...]) -> int:
        chosen = 0
        for labels in label_sets:
            values = dict(labels)
            failed = 0
            for label, failing in self._failing:
                value = values.get(label)
                mask = failing.get(value)
                if mask is None:
                    mask = self._fails(label, value)
                    if len(failing) < CACHE_LIMIT:
                        failing[value] = mask
                failed |= mask
            groups = self.all_groups & ~failed
            policies = self._policies.get(groups)
            if policies is None:
                policies = 0
                for group in _bits(groups):
                    policies |= self.members[group]
                if len(self._policies) < CACHE_LIMIT:
                    self._policies[groups] = policies
            chosen |= policies
        return chosen


@dataclass
class _Known:
    """What one rule finds on one set of facts, for the Policies checked so far."""

    checked: int = 0
    breaking: int = 0
    found: dict[int, tuple[Finding, ...]] = field(default_factory=dict)
    joined: dict[int, tuple[Finding, ...]] = field(default_factory=dict)
    """Findings of a set of breaking Policies, concatenated in their order."""


@dataclass(frozen=True)
class _Selection:
    indexes: tuple[int, ...]
    refs: tuple[str, ...]


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
        # Per rule: the Policies that set it (the others cannot break it).
        self._setting = tuple(
            sum(1 << i for i, p in enumerate(ordered) if rule.configured(p.spec.rules))
            for rule in RULES
        )
        self._enforced_limits = sum(
            1 << i
            for i, p in enumerate(ordered)
            if p.spec.mode == "enforce" and p.spec.rules.maxReplicasPerFleet is not None
        )
        self._selections: dict[int, _Selection] = {}
        self._facts: dict[tuple[int, Hashable], _Known] = {}
        self._deciders: dict[int, dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self.policies)

    def _select(self, namespace: str, label_sets: tuple[Labels, ...]) -> int:
        index = self._namespaces.get(namespace)
        return 0 if index is None else index.select(label_sets)

    def _selection(self, mask: int) -> _Selection:
        found = self._selections.get(mask)
        if found is None:
            indexes = tuple(_bits(mask))
            found = _Selection(indexes, tuple(self.policies[i].ref for i in indexes))
            if len(self._selections) < CACHE_LIMIT:
                self._selections[mask] = found
        return found

    def selecting(self, namespace: str, label_sets: tuple[Labels, ...]) -> tuple[NamedPolicy, ...]:
        """The Policies that govern an object with these labels, sorted by namespace/name."""
        mask = self._select(namespace, label_sets)
        return tuple(self.policies[i] for i in self._selection(mask).indexes)

    def _rule_findings(self, mask: int, number: int, subject: Subject) -> tuple[Finding, ...]:
        """What the Policies in ``mask`` (all setting rule ``number``) find, in their order."""
        rule = RULES[number]
        facts = rule.facts(subject)
        known = self._facts.get((number, facts))
        if known is None:
            if len(self._facts) >= CACHE_LIMIT:
                self._facts.clear()
            known = self._facts[(number, facts)] = _Known()
        for i in _bits(mask & ~known.checked):
            found = tuple(rule.check(self._contexts[i], subject))
            known.checked |= 1 << i
            if found:
                known.breaking |= 1 << i
                known.found[i] = found
        hits = mask & known.breaking
        if not hits:
            return ()
        joined = known.joined.get(hits)
        if joined is None:
            joined = tuple(f for i in _bits(hits) for f in known.found[i])
            if len(known.joined) < CACHE_LIMIT:
                known.joined[hits] = joined
        return joined

    def evaluate(self, subject: Subject) -> Verdict:
        selected = self._select(subject.namespace, subject.label_sets)
        if not selected:
            return Verdict()
        findings: tuple[Finding, ...] = ()
        for number, setting in enumerate(self._setting):
            mask = selected & setting
            if mask:
                findings += self._rule_findings(mask, number, subject)
        return Verdict(
            findings=findings,
            policies=self._selection(selected).refs,
            decided_by=self._decided_by(selected, subject),
        )

    def _decided_by(self, selected: int, subject: Subject) -> dict[str, str]:
        limits = selected & self._enforced_limits
        if subject.kind == "Agent" or not limits:
            return {}
        decided = self._deciders.get(limits)
        if decided is None:
            lowest = min(
                (self._contexts[i].rules.maxReplicasPerFleet or 0, self._contexts[i].policy)
                for i in _bits(limits)
            )
            decided = {"maxReplicasPerFleet": lowest[1]}
            if len(self._deciders) < CACHE_LIMIT:
                self._deciders[limits] = decided
        return dict(decided)


def evaluate(subject: Subject, policies: Iterable[NamedPolicy] | PolicySet) -> Verdict:
    """The verdict of ``policies`` on ``subject`` (a one-off; keep a PolicySet to reuse)."""
    policy_set = policies if isinstance(policies, PolicySet) else PolicySet(policies)
    return policy_set.evaluate(subject)
