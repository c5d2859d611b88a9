"""Policy decisions as one JSON log line and one counter increment each.

Admission logs every verdict it returns; the background check logs a verdict
when it changes (a reconcile that finds the same verdict again is no decision).
"""

from __future__ import annotations

import logging
from typing import Literal

from agentarmy.api.common import Condition
from agentarmy.logs import log_fields
from agentarmy.operator import metrics
from agentarmy.operator.compliance import Compliance
from agentarmy.operator.kube import Kube
from agentarmy.policy import Admission, Subject, Verdict

decision_log = logging.getLogger("agentarmy.operator.decisions")

Source = Literal["admission", "background"]


def record_verdict(
    source: Source,
    subject: Subject,
    verdict: Verdict,
    operation: str = "",
    admission: Admission | None = None,
) -> None:
    """``admission`` (when given) decides the outcome: an update may keep old findings."""
    outcome = verdict.outcome if admission is None else admission.outcome
    denied = verdict.denials if admission is None else admission.denied
    rules = sorted({f.rule for f in verdict.findings}) or [""]
    for rule in rules:
        metrics.POLICY_VERDICTS.labels(source, outcome, rule).inc()
    first = denied[0] if denied else (verdict.findings or (None,))[0]
    log_fields(
        decision_log,
        "policy verdict",
        {
            "event": "policy-verdict",
            "source": source,
            "operation": operation,
            "kind": subject.kind,
            "namespace": subject.namespace,
            "object": subject.name,
            "verdict": outcome,
            "policy": first.policy if first else "",
            "rule": first.rule if first else "",
            "reason": first.message if first else "",
            "findings": [f.as_dict() for f in verdict.findings],
            "policies": list(verdict.policies),
        },
    )


async def announce(
    kube: Kube, involved: dict[str, str], condition: Condition, policy: Compliance
) -> None:
    """A background verdict that changed: a decision line, a counter and an Event."""
    record_verdict("background", policy.subject, policy.verdict)
    type_ = "Normal" if condition.status == "True" else "Warning"
    await kube.event(involved, type_, condition.reason, condition.message)


def record_policy_check(namespace: str, name: str, operation: str, problems: list[str]) -> None:
    """Admission's verdict on a Policy object itself (valid or not)."""
    outcome = "deny" if problems else "allow"
    metrics.POLICY_VERDICTS.labels("admission", outcome, "policySpec" if problems else "").inc()
    log_fields(
        decision_log,
        "policy verdict",
        {
            "event": "policy-verdict",
            "source": "admission",
            "operation": operation,
            "kind": "Policy",
            "namespace": namespace,
            "object": name,
            "verdict": outcome,
            "reason": "; ".join(problems),
        },
    )
