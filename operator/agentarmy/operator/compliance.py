"""What a Policy verdict means for an object that already exists.

Admission keeps violations out; this is for what admission could not see: an
object admitted before a stricter Policy existed. The verdict becomes the
``PolicyCompliant`` condition. Enforce-mode findings stop what would grow the
violation and never remove what runs:

- an Agent whose spec breaks a rule keeps its running Pod, but gets no new
  Pod (none created, none replaced after an exit or a spec change);
- a Fleet whose template breaks a rule gets no new Agents from it;
- a Fleet above ``maxReplicasPerFleet`` is not scaled up past the limit (by
  its reconciler or the autoscaler); the Agents it has keep running.

Audit-mode findings only report.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentarmy.api import conditions as c
from agentarmy.api.common import Condition, set_condition
from agentarmy.policy import Subject, Verdict

MESSAGE_LIMIT = 4096

AGENT_CONSEQUENCE = "its running Pod is left alone, but no new Pod is created for this spec"
FLEET_CONSEQUENCE = "no new Agents are created from this template"


@dataclass(frozen=True)
class Compliance:
    """A verdict as the operator acts on it."""

    verdict: Verdict
    subject: Subject
    consequence: str
    replica_limit: int | None = None
    """The enforced maxReplicasPerFleet (the lowest of the selecting Policies), if any."""

    @property
    def blocked(self) -> bool:
        """An enforce-mode rule about the agent spec itself is broken."""
        return any(f.rule != "maxReplicasPerFleet" for f in self.verdict.denials)

    @property
    def reason(self) -> str:
        if self.verdict.denials:
            return c.POLICY_VIOLATION
        return c.AUDIT_VIOLATION if self.verdict.findings else c.COMPLIANT

    @property
    def message(self) -> str:
        verdict = self.verdict
        if not verdict.findings:
            return "no rule of a selecting Policy is broken"
        broken = "; ".join(
            f.text() + ("" if f.mode == "enforce" else " (audit)") for f in verdict.findings
        )
        then = []
        if self.blocked:
            then.append(self.consequence)
        if any(f.rule == "maxReplicasPerFleet" for f in verdict.denials):
            then.append(f"not scaled up past {self.replica_limit}; its Agents keep running")
        text = broken + (f". Enforced: {'; '.join(then)}" if then else "")
        return text[:MESSAGE_LIMIT]

    def condition(self, conditions: list[Condition], generation: int) -> list[Condition]:
        status = "True" if self.reason == c.COMPLIANT else "False"
        return set_condition(
            conditions, c.POLICY_COMPLIANT, status, self.reason, self.message, generation
        )


def changed(before: list[Condition], after: list[Condition]) -> Condition | None:
    """The PolicyCompliant condition of ``after`` when it differs from ``before``'s.

    A first verdict that finds nothing broken is no news: a new Agent costs no Event."""
    old = next((x for x in before if x.type == c.POLICY_COMPLIANT), None)
    new = next((x for x in after if x.type == c.POLICY_COMPLIANT), None)
    if new is None or (old is None and new.status == "True"):
        return None
    if old is not None and (old.status, old.reason, old.message) == (
        new.status,
        new.reason,
        new.message,
    ):
        return None
    return new
