"""One descriptor per kind: its identity, models and how kubectl shows it.

The identity (group, version, kind, plural) is kept apart from the schema, as
lightkube does; the CRD generator reads both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agentarmy.api.agent import AgentSpec, AgentStatus
from agentarmy.api.common import GROUP, VERSION
from agentarmy.api.fleet import FleetSpec, FleetStatus
from agentarmy.api.policy import PolicySpec, PolicyStatus
from agentarmy.api.task import TaskSpec, TaskStatus

CATEGORY = "agentarmy"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


def _condition(type_: str) -> str:
    return f'.status.conditions[?(@.type=="{type_}")].status'


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[PrinterColumn, ...]
    description: str
    scale: bool = False
    # CEL rules on the whole object (they may read metadata.name).
    object_rules: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def group(self) -> str:
        return GROUP

    @property
    def version(self) -> str:
        return VERSION

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


AGENT = Resource(
    kind="Agent",
    plural="agents",
    short_names=("agt",),
    spec=AgentSpec,
    status=AgentStatus,
    description="One AI agent, run by the operator as one Pod.",
    columns=(
        PrinterColumn("Role", ".spec.role"),
        PrinterColumn("Model", ".spec.model.name"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Ready", _condition("Ready")),
        PrinterColumn("Succeeded", ".status.tasksSucceeded", "integer", "Tasks succeeded", 1),
        PrinterColumn("Failed", ".status.tasksFailed", "integer", "Tasks failed", 1),
        PrinterColumn("Pod", ".status.podName", priority=1),
        AGE,
    ),
    object_rules=(
        {
            "rule": "self.metadata.name.size() <= 63",
            "message": "metadata.name must be at most 63 characters (it names the agent's Pod "
            "and appears in label values)",
        },
    ),
)

FLEET = Resource(
    kind="Fleet",
    plural="fleets",
    short_names=("flt",),
    spec=FleetSpec,
    status=FleetStatus,
    description="N Agents from one template, rolled out and scaled like a ReplicaSet.",
    scale=True,
    columns=(
        PrinterColumn("Desired", ".spec.replicas", "integer", "Desired Agents"),
        PrinterColumn("Current", ".status.replicas", "integer", "Existing Agents"),
        PrinterColumn("Ready", ".status.readyReplicas", "integer", "Ready Agents"),
        PrinterColumn("Up-to-date", ".status.updatedReplicas", "integer", "Agents on the template"),
        PrinterColumn("Available", _condition("Available")),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Halted", _condition("Halted")),
        PrinterColumn("Queue", ".status.queueDepth", "integer", "Queued tasks", 1),
        PrinterColumn("Strategy", ".spec.strategy.type", priority=1),
        PrinterColumn("Canary", ".status.canary.phase", description="Canary phase", priority=1),
        PrinterColumn("Weight", ".status.canary.weight", "integer", "Canary percent", 1),
        AGE,
    ),
    object_rules=(
        {
            "rule": "self.metadata.name.size() <= 52",
            "message": "metadata.name must be at most 52 characters, so the names of its "
            "Agents (fleet name + suffix) stay valid DNS labels",
        },
    ),
)

POLICY = Resource(
    kind="Policy",
    plural="policies",
    short_names=("pol", "agentpolicy"),
    spec=PolicySpec,
    status=PolicyStatus,
    description="Governance for the Agents and Fleets it selects in its namespace.",
    columns=(
        PrinterColumn("Mode", ".spec.mode"),
        PrinterColumn("Ready", _condition("Ready")),
        PrinterColumn("Fleets", ".status.matchedFleets", "integer", "Fleets governed"),
        PrinterColumn("Agents", ".status.matchedAgents", "integer", "Agents governed"),
        PrinterColumn("Violations", ".status.violations", "integer", "Rules broken now"),
        AGE,
    ),
)

TASK = Resource(
    kind="Task",
    plural="tasks",
    short_names=("tsk",),
    spec=TaskSpec,
    status=TaskStatus,
    description="A declarative task mirrored to the router; status shows its outcome.",
    columns=(
        PrinterColumn("Fleet", ".spec.fleet"),
        PrinterColumn("Capability", ".spec.capability"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Attempts", ".status.attempts", "integer"),
        PrinterColumn("Agent", ".status.agent", priority=1),
        PrinterColumn("Task-ID", ".status.taskId", priority=1),
        AGE,
    ),
)

RESOURCES: tuple[Resource, ...] = (AGENT, FLEET, POLICY, TASK)
