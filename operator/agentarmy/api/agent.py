"""Agent: one AI agent, run as one Pod."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from agentarmy.api.common import (
    Condition,
    ConfigMapKeyRef,
    DNSLabel,
    Duration,
    LabelValue,
    Model,
    ResourceRequirements,
    SecretKeyRef,
)

DEFAULT_AGENT_IMAGE = "ghcr.io/agentarmy/agentarmy:0.1.0"

Capability = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"),
]
"""A task kind an agent takes, e.g. ``summarize`` or ``code.review``."""

ToolName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:*/-]+$")
]

ImageReference = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=512,
        pattern=r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@sha256:[a-f0-9]{64})?$",
    ),
]


class ModelPricing(Model):
    """What the provider charges, so usage has a cost (for sentinel.maxCostPerHour)."""

    inputPerMillionTokens: float = Field(ge=0, le=1_000_000, description="Per 1M prompt tokens.")
    outputPerMillionTokens: float = Field(
        ge=0, le=1_000_000, description="Per 1M completion tokens."
    )


class ModelSpec(Model):
    """Which language model the agent talks to. The API key is referenced, never inlined."""

    provider: Literal[
        "openai-compatible", "openai", "anthropic", "azure-openai", "ollama", "none"
    ] = Field(default="none", description="Model provider; 'none' for agents that need no model.")
    name: Annotated[str, StringConstraints(max_length=128)] = Field(
        default="", description="Model name as the provider knows it, e.g. gpt-4o-mini."
    )
    endpoint: Annotated[str, StringConstraints(max_length=2048, pattern=r"^(https?://\S+)?$")] = (
        Field(
            default="",
            description="Base URL of an OpenAI-compatible API; empty for the provider default.",
        )
    )
    apiKeySecretRef: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key; passed to the pod by reference."
    )
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")
    maxOutputTokens: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Upper bound on tokens per model reply."
    )
    pricing: ModelPricing | None = Field(
        default=None, description="Prices in the provider's currency; without it cost is 0."
    )


class McpServer(Model):
    """An MCP server whose tools the agent may call."""

    name: DNSLabel = Field(description="Short name, used as the tool-name prefix.")
    url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://\S+$")] = Field(
        description="Streamable HTTP endpoint of the MCP server."
    )


class ToolsSpec(Model):
    """Tools the agent may call; anything not listed is refused by the runtime."""

    allowed: list[ToolName] = Field(
        default_factory=list,
        max_length=256,
        description="Tool names the agent may call ('*' suffix matches a prefix).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    mcpServers: list[McpServer] = Field(
        default_factory=list,
        max_length=32,
        description="MCP servers the agent may reach.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


DelegateToolName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
]
"""A function name as model APIs accept it (letters, digits, ``_`` and ``-``)."""
RESERVED_TOOL_NAMES = ("handoff",)
"""Tools the llm skill offers itself; a delegate cannot take their names."""


class Delegate(Model):
    """Another fleet's capability, offered to the llm skill's model as a tool. A call
    becomes a child task on that fleet; the task waits in the router (no agent held) and
    the model's turn resumes, on any agent of the fleet, with the child's result."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.tool != 'handoff'",
                    "message": "tool handoff is the llm skill's own; choose another name",
                    "fieldPath": ".tool",
                }
            ]
        }
    }

    tool: DelegateToolName = Field(
        description="The tool's name as the model sees it, e.g. ask-reviewer. Policies' "
        "allowedTools and approvalRequiredTools judge calls by this name."
    )
    fleet: DNSLabel = Field(description="Fleet (in the agent's namespace) that does the work.")
    capability: Capability = Field(description="Capability asked of that fleet.")
    description: Annotated[str, StringConstraints(max_length=1024)] = Field(
        default="", description="What the tool does, told to the model."
    )

    @field_validator("tool")
    @classmethod
    def _not_reserved(cls, tool: str) -> str:
        if tool in RESERVED_TOOL_NAMES:
            raise ValueError(f"tool {tool} is the llm skill's own; choose another name")
        return tool


class EnvVarSource(Model):
    """Where an environment variable's value comes from (one of the two)."""

    secretKeyRef: SecretKeyRef | None = Field(default=None, description="A key of a Secret.")
    configMapKeyRef: ConfigMapKeyRef | None = Field(
        default=None, description="A key of a ConfigMap."
    )


class EnvVar(Model):
    """An environment variable for the agent container."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.value) != has(self.valueFrom)",
                    "message": "set exactly one of value or valueFrom",
                },
                {
                    "rule": "!has(self.valueFrom) || "
                    "(has(self.valueFrom.secretKeyRef) != has(self.valueFrom.configMapKeyRef))",
                    "message": "valueFrom needs exactly one of secretKeyRef or configMapKeyRef",
                    "fieldPath": ".valueFrom",
                },
            ]
        }
    }

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    ] = Field(description="Variable name (a C identifier).")
    value: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        default=None, description="Literal value. Never put secrets here: use valueFrom."
    )
    valueFrom: EnvVarSource | None = Field(
        default=None, description="Value from a Secret or ConfigMap."
    )


class PolicyOverrides(Model):
    """Per-agent limits; they can only tighten what the selecting Policies allow."""

    tasksPerMinute: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Task rate cap."
    )
    tokensPerHour: int | None = Field(
        default=None, ge=1, description="Model token budget per hour."
    )
    approvalRequiredTools: list[ToolName] = Field(
        default_factory=list,
        description="Extra tools that need human approval before each call.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class AgentSpec(Model):
    """What an agent is and what it may do."""

    role: LabelValue = Field(
        default="worker",
        min_length=1,
        description="The agent's role, e.g. researcher or reviewer (also a pod label).",
    )
    capabilities: list[Capability] = Field(
        min_length=1,
        max_length=64,
        description="Task kinds this agent takes; the router only assigns matching tasks.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    skills: dict[Capability, Annotated[str, StringConstraints(min_length=1, max_length=63)]] = (
        Field(
            default_factory=dict,
            description="Skill plugin per capability; a capability without an entry uses the skill of the same name.",
        )
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="Language model settings.")
    tools: ToolsSpec = Field(default_factory=ToolsSpec, description="Tools the agent may call.")
    delegates: list[Delegate] = Field(
        default_factory=list,
        max_length=32,
        description="Other fleets' capabilities the llm skill offers its model as tools; "
        "a call becomes a child task and the model resumes with its result.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["tool"]},
    )
    image: ImageReference = Field(default=DEFAULT_AGENT_IMAGE, description="Agent runtime image.")
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the image."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="CPU and memory for the agent container."
    )
    concurrency: int = Field(default=1, ge=1, le=256, description="Tasks the agent runs at once.")
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment variables.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    serviceAccountName: DNSLabel | None = Field(
        default=None,
        description="ServiceAccount for the pod; its token authenticates the agent to the router.",
    )
    heartbeatInterval: Duration = Field(
        default="10s", description="How often the agent renews its leases and reports liveness."
    )
    policyOverrides: PolicyOverrides = Field(
        default_factory=PolicyOverrides, description="Per-agent limits tighter than Policy."
    )


AgentPhase = Literal["Pending", "Starting", "Running", "Degraded", "Failed", "Terminating"]


class AgentStatus(Model):
    """What the operator and the router observed about the agent."""

    phase: AgentPhase = Field(default="Pending", description="Coarse lifecycle phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing and Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observedGeneration: int = Field(default=0, ge=0, description="Generation last reconciled.")
    podName: str = Field(default="", description="Name of the agent's Pod.")
    templateHash: str = Field(default="", description="Hash of the spec the Pod was built from.")
    podRestarts: int = Field(
        default=0, ge=0, description="Times the operator replaced a failed Pod."
    )
    tasksSucceeded: int = Field(
        default=0, ge=0, description="Tasks completed (from the router, coarse)."
    )
    tasksFailed: int = Field(default=0, ge=0, description="Tasks failed (from the router, coarse).")
    lastHeartbeatTime: str = Field(
        default="",
        description="Last heartbeat the router saw (RFC 3339, coarse).",
    )
