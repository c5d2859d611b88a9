"""Types shared by every resource: names, durations, conditions, references.

Constraints are declared once here as pydantic metadata; the CRD generator
turns them into OpenAPI bounds, so the API server and Python agree.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

GROUP = "agentarmy.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"

DNSLabel = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN),
]
"""A Kubernetes DNS label (RFC 1123): lower-case alphanumerics and '-', at most 63."""

LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]

Duration = Annotated[
    str,
    StringConstraints(min_length=2, max_length=32, pattern=DURATION_PATTERN),
    Field(examples=["30s", "5m", "1h30m"]),
]
"""A Kubernetes-style duration such as ``30s``, ``5m`` or ``1h30m``."""

Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity, e.g. ``500m``, ``1``, ``256Mi``."""

IntOrPercent = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
            "pattern": r"^[0-9]+%?$",
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A count (``2``) or a percentage of the desired replicas (``25%``)."""

FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""Arbitrary JSON (task input and result); sizes are limited by the router."""

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds in a Kubernetes-style duration; ValueError names the bad text."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h30m")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


def parse_int_or_percent(value: int | str, total: int, *, round_up: bool) -> int:
    """Resolve ``maxSurge``-style values against ``total`` as Kubernetes does."""
    if isinstance(value, int):
        return value
    if value.endswith("%"):
        scaled = int(value[:-1]) * total
        return -(-scaled // 100) if round_up else scaled // 100
    return int(value)


class Model(BaseModel):
    """Base for every API model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=True)


class Condition(Model):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)] = Field(
        description="Condition type, e.g. Ready, Available, Progressing, Degraded."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ] = Field(description="One CamelCase word a machine can match on.")
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(
        default="", description="What happened, for a person."
    )
    lastTransitionTime: str = Field(
        description="When status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observedGeneration: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was computed for."
    )


def describe_error(err: ValidationError, prefix: str = "spec") -> str:
    """The first validation problem as ``spec.a.b: what is wrong`` for a status message."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{prefix}.{where}: {first['msg']}"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def transitioned(before: list[Condition], after: list[Condition], type_: str) -> Condition | None:
    """``after``'s condition of ``type_`` if its status moved (or it appeared True)."""
    old = next((c for c in before if c.type == type_), None)
    new = next((c for c in after if c.type == type_), None)
    if new is None or (old is None and new.status != "True"):
        return None
    return new if old is None or old.status != new.status else None


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
) -> list[Condition]:
    """Return conditions with ``type_`` set; the transition time moves only on a status change."""
    result: list[Condition] = []
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != status
    transition = now_rfc3339() if changed or previous is None else previous.lastTransitionTime
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        lastTransitionTime=transition,
        observedGeneration=generation,
    )
    replaced = False
    for condition in conditions:
        if condition.type == type_:
            result.append(updated)
            replaced = True
        else:
            result.append(condition)
    if not replaced:
        result.append(updated)
    return result


class SecretKeyRef(Model):
    """A key in a Secret of the same namespace. Values are never inlined."""

    name: DNSLabel = Field(description="Name of the Secret in the object's namespace.")
    key: Annotated[
        str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    ] = Field(description="Key within the Secret.")


class ConfigMapKeyRef(Model):
    """A key in a ConfigMap of the same namespace."""

    name: DNSLabel = Field(description="Name of the ConfigMap in the object's namespace.")
    key: Annotated[
        str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    ] = Field(description="Key within the ConfigMap.")


class LabelSelectorRequirement(Model):
    key: Annotated[str, StringConstraints(min_length=1, max_length=317)] = Field(
        description="The label key the selector applies to."
    )
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values."
    )
    values: list[LabelValue] = Field(
        default_factory=list, description="Values for In/NotIn; empty for Exists/DoesNotExist."
    )


class LabelSelector(Model):
    """A Kubernetes label selector; empty selects everything."""

    matchLabels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Labels that must all be present with these values.",
    )
    matchExpressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Set-based requirements, all of which must hold."
    )

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.matchLabels.items()):
            return False
        for req in self.matchExpressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True

    def to_string(self) -> str:
        """The selector in `kubectl -l` syntax (used for status.selector)."""
        parts = [f"{k}={v}" for k, v in sorted(self.matchLabels.items())]
        for req in self.matchExpressions:
            if req.operator in ("In", "NotIn"):
                op = "in" if req.operator == "In" else "notin"
                parts.append(f"{req.key} {op} ({','.join(req.values)})")
            elif req.operator == "Exists":
                parts.append(req.key)
            else:
                parts.append(f"!{req.key}")
        return ",".join(parts)


class ResourceRequirements(Model):
    """CPU/memory requests and limits for the agent container."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Minimum resources, e.g. {cpu: 100m, memory: 128Mi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Maximum resources, e.g. {cpu: '1', memory: 512Mi}."
    )


class ObjectMetaTemplate(Model):
    """Labels and annotations stamped on objects created from a template."""

    labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Labels to set."
    )
    annotations: dict[str, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict, max_length=64, description="Annotations to set."
    )
