"""Policy evaluation: one pure library (no I/O) used by admission, the operator and the router.

- ``evaluate(subject, policies)`` / ``PolicySet.evaluate``: the verdict on an
  Agent, a Fleet or a scale change, one Finding per broken rule.
- ``admit(policies, new, old)``: the admission verdict on a create or an update
  (an update is denied only for what it adds).
- ``effective_rules``: the runtime rules in force for a fleet (rate limit,
  token budget, tools, approvals, sentinel bounds, egress), strictest wins.
- ``policy_problems``: what the schema cannot check about a Policy itself.

See docs/policy.md for the flow through the system.
"""

from agentarmy.policy.admission import Admission, admit
from agentarmy.policy.effective import EffectiveRules, RuntimeRules, ToolDecision, effective_rules
from agentarmy.policy.engine import NamedPolicy, PolicySet, evaluate
from agentarmy.policy.findings import Finding, Verdict
from agentarmy.policy.subjects import Subject, agent_subject, fleet_subject, scale_subject
from agentarmy.policy.validation import policy_problems

__all__ = [
    "Admission",
    "EffectiveRules",
    "Finding",
    "NamedPolicy",
    "PolicySet",
    "RuntimeRules",
    "Subject",
    "ToolDecision",
    "Verdict",
    "admit",
    "agent_subject",
    "effective_rules",
    "evaluate",
    "fleet_subject",
    "policy_problems",
    "scale_subject",
]
