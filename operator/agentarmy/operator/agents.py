"""Agent reconciler: each Agent owns exactly one Pod, and says how it is.

Level-based: everything is recomputed from the cached Agent and Pod on each
pass, so a restart at any moment converges to the same state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError
from pydantic import ValidationError

from agentarmy.api import conditions as c
from agentarmy.api.agent import AgentSpec, AgentStatus
from agentarmy.api.common import describe_error, set_condition
from agentarmy.operator import compliance, labels
from agentarmy.operator.cache import AgentView, Cache, PodView
from agentarmy.operator.decisions import announce
from agentarmy.operator.expectations import Expectations
from agentarmy.operator.kube import Kube, involved
from agentarmy.operator.pods import PodContext, render_pod
from agentarmy.operator.workqueue import Key
from agentarmy.policy import agent_subject

log = logging.getLogger("agentarmy.operator.agent")

# A freshly created Pod usually turns Ready within seconds: look again then and
# write one status that carries the outcome, instead of a "Pending" first.
FIRST_LOOK_SECONDS = 3.0
WAIT_FOR_POD_GONE_SECONDS = 1.0
FIRST_STATUS_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Observation:
    """What this pass saw and did, for the status."""

    pod: PodView | None
    desired_hash: str
    replaced_exited: PodView | None = None
    replacing_outdated: bool = False
    policy: compliance.Compliance | None = None
    """The Policy verdict on the spec (None when the spec does not validate)."""


def agent_status(
    agent: AgentView, spec_error: str, seen: Observation, create_error: str = ""
) -> AgentStatus:
    current = AgentStatus.model_validate(agent.status or {})
    gen = agent.generation
    conds = list(current.conditions)
    restarts = current.podRestarts + (1 if seen.replaced_exited else 0)
    pod = seen.pod
    if spec_error:
        conds = set_condition(conds, c.READY, "False", c.INVALID_SPEC, spec_error, gen)
        conds = set_condition(conds, c.DEGRADED, "True", c.INVALID_SPEC, spec_error, gen)
        conds = set_condition(conds, c.PROGRESSING, "False", c.INVALID_SPEC, spec_error, gen)
        phase = "Failed"
    elif create_error:
        conds = set_condition(conds, c.READY, "False", c.POD_CREATE_FAILED, create_error, gen)
        conds = set_condition(conds, c.DEGRADED, "True", c.POD_CREATE_FAILED, create_error, gen)
        conds = set_condition(conds, c.PROGRESSING, "True", c.POD_CREATE_FAILED, "retrying", gen)
        phase = "Degraded"
    elif seen.replaced_exited is not None:
        exited = seen.replaced_exited
        why = f"agent process exited (code {exited.exit_code}, {exited.exit_reason or 'no reason'})"
        conds = set_condition(conds, c.READY, "False", c.AGENT_EXITED, why, gen)
        conds = set_condition(
            conds, c.DEGRADED, "True", c.AGENT_EXITED, why + "; pod replaced", gen
        )
        conds = set_condition(
            conds, c.PROGRESSING, "True", c.REPLACING_POD, "creating a new pod", gen
        )
        phase = "Degraded"
    elif pod is None and seen.policy is not None and seen.policy.blocked:
        why = "no Pod is created: " + "; ".join(f.text() for f in seen.policy.verdict.denials)
        conds = set_condition(conds, c.READY, "False", c.BLOCKED_BY_POLICY, why, gen)
        conds = set_condition(conds, c.DEGRADED, "True", c.BLOCKED_BY_POLICY, why, gen)
        conds = set_condition(conds, c.PROGRESSING, "False", c.BLOCKED_BY_POLICY, why, gen)
        phase = "Failed"
    elif pod is None or pod.deleting or seen.replacing_outdated:
        reason = (
            c.UPDATING_POD if seen.replacing_outdated or (pod and pod.deleting) else c.CREATING_POD
        )
        conds = set_condition(conds, c.READY, "False", reason, "pod is being (re)created", gen)
        conds = set_condition(conds, c.PROGRESSING, "True", reason, "pod is being (re)created", gen)
        phase = "Starting" if reason == c.UPDATING_POD else "Pending"
    elif pod.ready and pod.phase == "Running":
        conds = set_condition(
            conds, c.READY, "True", c.POD_READY, "agent pod is running and ready", gen
        )
        conds = set_condition(
            conds, c.PROGRESSING, "False", c.RECONCILED, "pod matches the spec", gen
        )
        conds = set_condition(conds, c.DEGRADED, "False", c.AGENT_RUNNING, "agent is healthy", gen)
        phase = "Running"
    else:
        reason = c.POD_PENDING if pod.phase == "Pending" else c.POD_NOT_READY
        conds = set_condition(conds, c.READY, "False", reason, f"pod phase {pod.phase}", gen)
        conds = set_condition(conds, c.PROGRESSING, "True", reason, "waiting for the pod", gen)
        phase = "Pending" if pod.phase == "Pending" else "Starting"
    if not any(x.type == c.DEGRADED for x in conds):
        conds = set_condition(conds, c.DEGRADED, "False", c.AGENT_RUNNING, "no failure seen", gen)
    if seen.policy is not None:
        conds = seen.policy.condition(conds, gen)
    return current.model_copy(
        update={
            "phase": phase,
            "conditions": conds,
            "observedGeneration": gen,
            "podName": agent.name,
            "templateHash": seen.desired_hash,
            "podRestarts": restarts,
        }
    )


class AgentReconciler:
    def __init__(self, cache: Cache, kube: Kube, ctx: PodContext) -> None:
        self.cache = cache
        self.kube = kube
        self.ctx = ctx
        self.expectations = Expectations()

    def desired_pod(self, agent: AgentView, spec: AgentSpec) -> dict[str, Any]:
        return render_pod(
            agent.name, agent.namespace, agent.uid, dict(agent.labels), spec, self.ctx
        )

    def check_policy(self, agent: AgentView, spec: AgentSpec) -> compliance.Compliance:
        subject = agent_subject(agent.namespace, agent.name, agent.labels, spec)
        verdict = self.cache.policy_set().evaluate(subject)
        return compliance.Compliance(verdict, subject, compliance.AGENT_CONSEQUENCE)

    async def reconcile(self, key: Key) -> float | None:
        namespace, name = key
        agent = self.cache.agent(namespace, name)
        if agent is None or agent.deleting:
            return None  # the garbage collector removes the Pod through its owner reference
        try:
            spec = AgentSpec.model_validate(agent.spec)
        except ValidationError as err:
            await self._write_status(
                agent, agent_status(agent, describe_error(err), Observation(None, ""))
            )
            return None
        policy = self.check_policy(agent, spec)
        desired = self.desired_pod(agent, spec)
        desired_hash = desired["metadata"]["labels"][labels.POD_HASH]
        pod = self.cache.pod(namespace, name)
        who = involved("Agent", namespace, name, agent.uid)

        async def write(seen: PodView | None, create_error: str = "", **what: Any) -> None:
            observed = Observation(seen, desired_hash, policy=policy, **what)
            status = agent_status(agent, "", observed, create_error=create_error)
            await self._write_status(agent, status, policy)

        if pod is None:
            if policy.blocked:
                # No Pod for a spec an enforce-mode Policy forbids (see compliance.py).
                await write(None)
                return None
            if self.expectations.pending(key, set()):
                return FIRST_LOOK_SECONDS  # created a moment ago; the watch is behind
            try:
                await self.kube.create(desired)
            except ApiError as err:
                await write(None, create_error=f"cannot create pod: {err.status.message}")
                raise
            self.expectations.expect(key, [name])
            log.info("created pod", extra={"namespace": namespace, "agent": name})
            if not agent.status.get("observedGeneration"):
                return FIRST_LOOK_SECONDS  # the first status write waits for the outcome
            await write(None)
            return FIRST_LOOK_SECONDS
        self.expectations.pending(key, {name})  # seen: forget the expectation
        if pod.deleting:
            return WAIT_FOR_POD_GONE_SECONDS
        if pod.exited:
            await self.kube.delete("Pod", namespace, name)
            then = "not replaced: a Policy forbids its spec" if policy.blocked else "replacing it"
            await self.kube.event(
                who,
                "Warning",
                c.AGENT_EXITED,
                f"agent process exited with code {pod.exit_code}; {then}",
            )
            await write(pod, replaced_exited=pod)
            return WAIT_FOR_POD_GONE_SECONDS
        if pod.pod_hash != desired_hash and not policy.blocked:
            await self.kube.delete("Pod", namespace, name)
            await self.kube.event(
                who, "Normal", "PodReplaced", "agent spec changed; replacing its pod"
            )
            await write(pod, replacing_outdated=True)
            return WAIT_FOR_POD_GONE_SECONDS
        if not pod.ready and not agent.status.get("observedGeneration"):
            # A new agent: its first status should say Ready, not "pending" and
            # then "ready" a moment later. Wait a little for that news.
            wait = FIRST_STATUS_GRACE_SECONDS - pod.age_seconds(datetime.now(UTC))
            if wait > 0:
                return wait
        await write(pod)
        return None

    async def _write_status(
        self,
        agent: AgentView,
        status: AgentStatus,
        policy: compliance.Compliance | None = None,
    ) -> None:
        """Patch status only when it carries news; a changed Policy verdict is also an
        Event and a decision line, once the status that carries it is written."""
        new = status.model_dump(mode="json", exclude_none=True)
        current = AgentStatus.model_validate(agent.status or {})
        old = current.model_dump(mode="json", exclude_none=True)
        if new == old:
            return
        await self.kube.patch_status(
            "Agent", agent.namespace, agent.name, new, agent.resource_version
        )
        condition = compliance.changed(current.conditions, status.conditions)
        if condition is not None and policy is not None:
            who = involved("Agent", agent.namespace, agent.name, agent.uid)
            await announce(self.kube, who, condition, policy)
