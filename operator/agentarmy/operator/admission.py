"""AdmissionReview in, AdmissionReview out: Policy verdicts at the API server's door.

Every operator replica answers (leader or not). The verdict itself comes from
``agentarmy.policy``; this module only turns a request into subjects and the
verdict into a response: denial with the finding's sentence, audit findings as
``warnings`` (kubectl prints them as ``Warning:`` lines).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentarmy.api.agent import AgentSpec
from agentarmy.api.common import GROUP, describe_error
from agentarmy.api.fleet import FleetSpec
from agentarmy.operator import metrics
from agentarmy.operator.decisions import record_policy_check, record_verdict
from agentarmy.policy import PolicySet, Subject, admit, agent_subject, fleet_subject, scale_subject
from agentarmy.policy.validation import policy_problems

Body = Mapping[str, Any]
FleetLookup = Callable[[str, str], Awaitable[Body | None]]
"""(namespace, name) -> the stored Fleet, or None if it does not exist."""
PolicySets = Callable[[str], PolicySet]


class BadReview(ValueError):
    """The request is not an AdmissionReview we can read."""


@dataclass(frozen=True)
class Answer:
    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()
    verdict: str = "allow"

    def review(self, uid: str) -> dict[str, Any]:
        response: dict[str, Any] = {"uid": uid, "allowed": self.allowed}
        if not self.allowed:
            response["status"] = {"code": 403, "reason": "Forbidden", "message": self.message}
        if self.warnings:
            response["warnings"] = list(self.warnings)
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }


ALLOW = Answer(True)


def _deny(message: str) -> Answer:
    return Answer(False, message, verdict="deny")


def _meta(obj: Body) -> tuple[str, Mapping[str, str]]:
    meta = obj.get("metadata") or {}
    return meta.get("name", ""), meta.get("labels") or {}


def _subject(kind: str, namespace: str, obj: Body) -> Subject:
    """A subject from a stored or submitted object; ValidationError if its spec is invalid."""
    name, labels = _meta(obj)
    if kind == "Agent":
        return agent_subject(
            namespace, name, labels, AgentSpec.model_validate(obj.get("spec") or {})
        )
    return fleet_subject(namespace, name, labels, FleetSpec.model_validate(obj.get("spec") or {}))


def _judge(policies: PolicySet, new: Subject, old: Subject | None, operation: str) -> Answer:
    admission = admit(policies, new, old)
    record_verdict("admission", new, admission.verdict, operation, admission)
    warnings = tuple(admission.warnings())
    if admission.allowed:
        return Answer(True, warnings=warnings, verdict=admission.outcome)
    return Answer(False, admission.message(), warnings, "deny")


def _spec_changed(obj: Body, old: Body | None) -> bool:
    return old is None or obj.get("spec") != old.get("spec")


def judge_object(
    kind: str, namespace: str, operation: str, obj: Body, old: Body | None, policies: PolicySet
) -> Answer:
    """An Agent or Fleet create or update."""
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return ALLOW  # on its way out: finalizers and owners must be free to let go
    try:
        new = _subject(kind, namespace, obj)
    except ValidationError as err:
        # The schema comes from the same models; what it cannot express lands here.
        return _deny(describe_error(err)) if _spec_changed(obj, old) else ALLOW
    before: Subject | None = None
    if old is not None:
        try:
            before = _subject(kind, namespace, old)
        except ValidationError:
            before = None
    return _judge(policies, new, before, operation)


async def judge_scale(
    namespace: str, obj: Body, old: Body | None, policies: PolicySet, fleets: FleetLookup
) -> Answer:
    """``fleets/scale``: ``kubectl scale`` and an HPA change replicas without a Fleet body."""
    name, _ = _meta(obj)
    replicas = int((obj.get("spec") or {}).get("replicas") or 0)
    fleet = await fleets(namespace, name)
    if fleet is None:
        return ALLOW  # nothing to scale; the API server answers 404 itself
    _, labels = _meta(fleet)
    try:
        spec = FleetSpec.model_validate(fleet.get("spec") or {})
    except ValidationError:
        return ALLOW  # judged when its spec is next written
    new = scale_subject(namespace, name, labels, spec, replicas)
    before = None
    if old is not None:
        old_replicas = int((old.get("spec") or {}).get("replicas") or 0)
        before = scale_subject(namespace, name, labels, spec, old_replicas)
    return _judge(policies, new, before, "UPDATE")


def judge_policy(namespace: str, operation: str, obj: Body) -> Answer:
    """What the schema cannot check about a Policy: globs, selectors, CIDRs."""
    problems = policy_problems(obj)
    record_policy_check(namespace, _meta(obj)[0], operation, problems)
    if not problems:
        return ALLOW
    name, _ = _meta(obj)
    return _deny(f"Policy {name} is invalid: " + "; ".join(problems))


async def answer(review: Body, policy_sets: PolicySets, fleets: FleetLookup) -> dict[str, Any]:
    """The AdmissionReview response to ``review``; BadReview if it cannot be read."""
    started = time.perf_counter()
    request = review.get("request")
    if not isinstance(request, Mapping) or not request.get("uid"):
        raise BadReview("not an admission.k8s.io/v1 AdmissionReview with a request.uid")
    resource = request.get("resource") or {}
    plural, sub = resource.get("resource", ""), request.get("subResource") or ""
    namespace, operation = request.get("namespace") or "", request.get("operation", "")
    obj, old = request.get("object") or {}, request.get("oldObject")
    result = ALLOW
    if resource.get("group") != GROUP or operation not in ("CREATE", "UPDATE"):
        result = ALLOW
    elif plural == "policies" and not sub:
        result = judge_policy(namespace, operation, obj)
    elif plural == "fleets" and sub == "scale":
        result = await judge_scale(namespace, obj, old, policy_sets(namespace), fleets)
    elif plural in ("agents", "fleets") and not sub:
        kind = "Agent" if plural == "agents" else "Fleet"
        result = judge_object(kind, namespace, operation, obj, old, policy_sets(namespace))
    label = f"{plural}/{sub}" if sub else plural
    metrics.ADMISSION_SECONDS.labels(label, result.verdict).observe(time.perf_counter() - started)
    return result.review(str(request["uid"]))
