"""Fleet: N agents from one template, like a ReplicaSet for agents."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentarmy.api.agent import AgentSpec
from agentarmy.api.common import (
    Condition,
    Duration,
    IntOrPercent,
    LabelSelector,
    Model,
    ObjectMetaTemplate,
)

MAX_REPLICAS = 10_000


class AgentTemplate(Model):
    """The Agents a Fleet creates."""

    metadata: ObjectMetaTemplate = Field(
        default_factory=ObjectMetaTemplate, description="Labels and annotations for each Agent."
    )
    spec: AgentSpec = Field(description="Spec of each Agent.")


class RollingUpdate(Model):
    """How many Agents may be missing or extra while a new template rolls out."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.maxUnavailable) && has(self.maxSurge) && "
                    "string(self.maxUnavailable) in ['0', '0%'] && "
                    "string(self.maxSurge) in ['0', '0%'])",
                    "message": "rollingUpdate.maxUnavailable and rollingUpdate.maxSurge "
                    "must not both be zero, or the rollout could never progress",
                    "fieldPath": ".maxUnavailable",
                },
            ]
        }
    }

    maxUnavailable: IntOrPercent = Field(
        default="25%", description="Agents that may be unready during the update (count or %)."
    )
    maxSurge: IntOrPercent = Field(
        default="25%", description="Agents that may exist above replicas during the update."
    )


class CanaryStep(Model):
    """One step of a canary rollout."""

    weight: int = Field(ge=1, le=100, description="Percent of replicas on the new template.")
    pause: Duration = Field(default="1m", description="How long to watch before the next step.")


class Canary(Model):
    """Shift traffic to the new template in steps; roll back when it errs too often."""

    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=10), CanaryStep(weight=50)],
        min_length=1,
        max_length=20,
        description="Weights to go through before 100%.",
    )
    maxErrorRate: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Roll back when the new template's task error rate exceeds this (0..1).",
    )
    minTasks: int = Field(
        default=20, ge=1, description="Tasks the canary must finish before its error rate counts."
    )


class RolloutStrategy(Model):
    """How a template change reaches the Agents."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.type != 'Canary' || has(self.canary)",
                    "message": "strategy.canary is required when strategy.type is Canary",
                    "fieldPath": ".canary",
                    "reason": "FieldValueRequired",
                },
            ]
        }
    }

    type: Literal["RollingUpdate", "Canary"] = Field(
        default="RollingUpdate", description="RollingUpdate or Canary."
    )
    rollingUpdate: RollingUpdate = Field(
        default_factory=RollingUpdate,
        description="Bounds for RollingUpdate (and each canary step).",
    )
    canary: Canary | None = Field(default=None, description="Canary steps and rollback bound.")


class Autoscaling(Model):
    """Scale replicas on the fleet's queue depth."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
                    "fieldPath": ".minReplicas",
                },
            ]
        }
    }

    enabled: bool = Field(default=True, description="Whether the operator scales this fleet.")
    minReplicas: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="Lower bound.")
    maxReplicas: int = Field(ge=1, le=MAX_REPLICAS, description="Upper bound.")
    targetQueueDepthPerAgent: int = Field(
        default=10, ge=1, description="Queued tasks per agent the autoscaler aims for."
    )
    scaleDownStabilization: Duration = Field(
        default="5m", description="How long demand must stay low before scaling down."
    )


class FleetSpec(Model):
    """Desired agents of a fleet."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.selector) || !has(self.selector.matchLabels) || "
                    "self.selector.matchLabels.all(k, has(self.template.metadata) && "
                    "has(self.template.metadata.labels) && k in self.template.metadata.labels && "
                    "self.template.metadata.labels[k] == self.selector.matchLabels[k])",
                    "message": "selector.matchLabels must match template.metadata.labels",
                    "fieldPath": ".selector",
                },
                {
                    "rule": "!has(self.autoscaling) || !self.autoscaling.enabled || "
                    "(self.replicas >= self.autoscaling.minReplicas && "
                    "self.replicas <= self.autoscaling.maxReplicas) || self.replicas == 0",
                    "message": "replicas must lie within autoscaling.minReplicas..maxReplicas "
                    "(or be 0 to stop the fleet)",
                    "fieldPath": ".replicas",
                },
            ]
        }
    }

    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="Number of Agents.")
    selector: LabelSelector | None = Field(
        default=None,
        description="Extra label selector for the fleet's Agents (the fleet label is always added).",
    )
    template: AgentTemplate = Field(description="Template for each Agent.")
    strategy: RolloutStrategy = Field(
        default_factory=RolloutStrategy, description="How template changes roll out."
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale replicas on queue depth between min and max."
    )
    minReadySeconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="Seconds an Agent must be Ready to count as available.",
    )


FleetPhase = Literal["Pending", "Progressing", "Available", "Degraded", "Halted"]

CanaryPhase = Literal[
    "Progressing", "Paused", "WaitingForTasks", "Promoting", "Promoted", "Aborted"
]


class CanaryStatus(Model):
    """Where a canary rollout stands. Kept in status so an operator restart resumes it at the
    same step; the router's per-template task counts are the evidence."""

    phase: CanaryPhase = Field(description="What the rollout is doing now.")
    templateHash: str = Field(description="The template under test (spec.template's hash).")
    stableTemplateHash: str = Field(
        description="The template that served before; restored in full when the canary aborts."
    )
    step: int = Field(ge=0, description="Index into strategy.canary.steps; len(steps) promotes.")
    weight: int = Field(ge=0, le=100, description="Percent of Agents on the new template.")
    stepStartedAt: str = Field(
        default="", description="When this step's Agents were all available (its pause starts)."
    )
    baselineTasks: int = Field(
        default=0, ge=0, description="The router's count for the template when the canary began."
    )
    baselineFailures: int = Field(default=0, ge=0, description="Its failures at that time.")
    tasks: int = Field(default=0, ge=0, description="Tasks the new template finished since.")
    failures: int = Field(default=0, ge=0, description="Of those, how many failed.")
    errorRate: str = Field(
        default="", description="failures/tasks as a percentage, once minTasks have finished."
    )
    retry: str = Field(
        default="",
        description="The agentarmy.io/rollout-retry annotation this attempt started from.",
    )
    message: str = Field(default="", description="What the rollout waits for, or why it stopped.")


class FleetStatus(Model):
    """Observed state of a fleet, in ReplicaSet terms."""

    phase: FleetPhase = Field(default="Pending", description="Coarse summary of the conditions.")
    replicas: int = Field(default=0, ge=0, description="Agents that exist.")
    readyReplicas: int = Field(default=0, ge=0, description="Agents whose pod is Ready.")
    updatedReplicas: int = Field(default=0, ge=0, description="Agents on the current template.")
    availableReplicas: int = Field(
        default=0, ge=0, description="Ready Agents, for at least minReadySeconds."
    )
    selector: str = Field(
        default="", description="Label selector of the Agents (scale subresource)."
    )
    currentTemplateHash: str = Field(default="", description="Hash of spec.template.")
    observedGeneration: int = Field(default=0, ge=0, description="Generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Available, Progressing, Reconciling, Stalled, PolicyCompliant and Halted.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    queueDepth: int = Field(default=0, ge=0, description="Queued tasks for this fleet (coarse).")
    stableTemplateHash: str = Field(
        default="", description="The last template every Agent ran (what a canary returns to)."
    )
    canary: CanaryStatus | None = Field(
        default=None, description="The last canary rollout: step, weight, tasks and error rate."
    )
