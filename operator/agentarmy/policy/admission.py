"""The admission verdict on a create or an update: what the change itself breaks.

A create is judged on everything it breaks. An update is judged on what it
*adds*: an enforce-mode finding the object already had (it was admitted
before a stricter Policy existed) does not deny an unrelated edit — a label,
a scale-down, a finalizer removed by the garbage collector — it comes back as
a warning instead. The same rule the operator follows in the background:
never grow a violation, never block what only keeps it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentarmy.policy.engine import PolicySet
from agentarmy.policy.findings import Finding, Verdict
from agentarmy.policy.subjects import Subject

REPLICAS = "maxReplicasPerFleet"


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    """Everything the new object breaks."""
    denied: tuple[Finding, ...]
    """Enforce-mode findings the change introduces: any of them denies."""
    kept: tuple[Finding, ...]
    """Enforce-mode findings the object already had and the change does not worsen."""

    @property
    def allowed(self) -> bool:
        return not self.denied

    @property
    def outcome(self) -> str:
        if self.denied:
            return "deny"
        return "warn" if self.verdict.findings else "allow"

    def message(self) -> str:
        """The denial, as kubectl shows it after ``admission webhook ... denied the request:``."""
        return "; ".join(f.text() for f in self.denied)

    def warnings(self) -> list[str]:
        """Audit findings and kept violations, one ``Warning:`` line each in kubectl."""
        lines = [f"{f.text()} (audit mode: admitted)" for f in self.verdict.warnings]
        lines += [f"{f.text()} (already so before this change: admitted)" for f in self.kept]
        return lines


def _replicas_grow(finding: Finding, new: Subject, old: Subject) -> bool:
    if finding.field == "spec.autoscaling.maxReplicas":
        return (new.autoscaling_max or 0) > (old.autoscaling_max or 0)
    return (new.replicas or 0) > (old.replicas or 0)


def _introduced(finding: Finding, before: Verdict, new: Subject, old: Subject) -> bool:
    if finding.rule == REPLICAS:
        # Going down towards the limit is the fix, not a new violation.
        was_broken = any(f.rule == REPLICAS and f.field == finding.field for f in before.denials)
        return not was_broken or _replicas_grow(finding, new, old)
    return finding not in before.denials


def admit(policies: PolicySet, new: Subject, old: Subject | None = None) -> Admission:
    """Judge a create (``old`` is None) or an update of ``old`` into ``new``."""
    verdict = policies.evaluate(new)
    if old is None or not verdict.denials:
        return Admission(verdict, verdict.denials, ())
    before = policies.evaluate(old)
    denied = tuple(f for f in verdict.denials if _introduced(f, before, new, old))
    kept = tuple(f for f in verdict.denials if f not in denied)
    return Admission(verdict, denied, kept)
