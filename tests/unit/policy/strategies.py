"""Hypothesis strategies for Policies and subjects, over small alphabets so that
selectors hit, rules bite and caches are shared often."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from agentarmy.api.policy import PolicySpec
from agentarmy.policy import NamedPolicy, Subject
from agentarmy.policy.subjects import FLEET_LABEL
from tests.unit.policy.builders import a_fleet, a_scale, an_agent

NAMESPACES = ("team-a", "team-b")
LABEL_KEYS = ("app", "team", "tier", FLEET_LABEL)
LABEL_VALUES = ("a", "b", "f1")
POLICY_NAMES = ("p0", "p1", "p2", "p3", "p4", "p5", "p6", "q", "zz")
FLEET_NAMES = ("f1", "f2")

PROVIDERS = ("openai", "anthropic", "ollama", "none")
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3", "llama3", "")
MODEL_GLOBS = ("gpt-4o*", "claude-?", "claude-*", "llama3", "*")
TOOLS = ("github.issues", "github.*", "fs.read", "fs.*", "web.search", "*", "git*hub.x")
TOOL_GLOBS = ("github.*", "fs.read", "fs.*", "*", "web.search", "g*.?ssues", "[fg]*")
IMAGES = (
    "busybox",
    "python:3.11",
    "ghcr.io/acme/agent:1",
    "ghcr.io/acmeevil/agent:1",
    "docker.io/acme/x",
    "docker.io/acme:2",
    "acme/agent",
    "quay.io/org/img@sha256:" + "a" * 64,
    "localhost:5000/x",
)
REGISTRY_ENTRIES = (
    "ghcr.io/acme/",
    "ghcr.io/acme",
    "docker.io/library/",
    "docker.io/acme",
    "quay.io/*",
    "localhost:5000",
    "acme/",
)
CIDRS = ("10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16", "172.16.0.0/12", "2001:db8::/32")


def _subset(values: tuple[Any, ...], max_size: int = 3) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(values), max_size=max_size, unique=True)


labels = st.dictionaries(
    st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), min_size=1, max_size=4
)


@st.composite
def requirements(draw: st.DrawFn) -> dict[str, Any]:
    operator = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
    values = (
        draw(st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True))
        if operator in ("In", "NotIn")
        else []
    )
    return {"key": draw(st.sampled_from(LABEL_KEYS)), "operator": operator, "values": values}


selectors = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(
            st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2
        ),
        "matchExpressions": st.lists(requirements(), max_size=2),
    },
)

rules = st.fixed_dictionaries(
    {},
    optional={
        "models": st.fixed_dictionaries(
            {},
            optional={
                "providers": _subset(PROVIDERS[:3], 2),
                "names": _subset(MODEL_GLOBS, 2),
            },
        ),
        "allowedTools": _subset(TOOL_GLOBS),
        "allowedImageRegistries": _subset(REGISTRY_ENTRIES, 2),
        "maxReplicasPerFleet": st.integers(0, 8),
        "requireResourceLimits": _subset(("cpu", "memory"), 2),
        "taskRateLimit": st.fixed_dictionaries(
            {"tasksPerMinute": st.integers(1, 100)}, optional={"burst": st.integers(0, 50)}
        ),
        "tokenBudget": st.fixed_dictionaries(
            {"tokens": st.integers(1, 1000)}, optional={"window": st.sampled_from(("1m", "1h"))}
        ),
        "approvalRequiredTools": _subset(("github.merge", "shell.*", "fs.*"), 2),
        "sentinel": st.fixed_dictionaries(
            {},
            optional={
                "maxErrorRate": st.sampled_from((0.0, 0.1, 0.5, 1.0)),
                "minTasks": st.integers(1, 50),
                "window": st.sampled_from(("30s", "5m")),
                "maxTokensPerHour": st.integers(1, 1000),
                "maxCostPerHour": st.sampled_from((0.5, 2.0, 10.0)),
            },
        ),
        "egress": st.fixed_dictionaries(
            {},
            optional={
                "cidrs": _subset(CIDRS),
                "ports": _subset((80, 443, 8443)),
                "allowDNS": st.booleans(),
            },
        ),
    },
)


def policy_spec(mode: str, selector: dict[str, Any], rules_: dict[str, Any]) -> PolicySpec:
    return PolicySpec.model_validate({"mode": mode, "selector": selector, "rules": rules_})


specs = st.builds(policy_spec, st.sampled_from(("enforce", "audit")), selectors, rules)


@st.composite
def policy_lists(draw: st.DrawFn, max_size: int = 5) -> tuple[list[NamedPolicy], NamedPolicy]:
    """Policies P (distinct names) and one more, q, named apart from all of P."""
    names = draw(
        st.lists(st.sampled_from(POLICY_NAMES), min_size=1, max_size=max_size + 1, unique=True)
    )
    made = [
        NamedPolicy(
            draw(st.sampled_from(NAMESPACES)) if draw(st.integers(0, 4)) == 0 else "team-a",
            name,
            draw(specs),
        )
        for name in names
    ]
    return made[:-1], made[-1]


@st.composite
def subjects(draw: st.DrawFn) -> Subject:
    kind = draw(st.sampled_from(("Agent", "Fleet", "Scale")))
    namespace = "team-b" if draw(st.integers(0, 5)) == 0 else "team-a"
    agent: dict[str, Any] = {
        "image": draw(st.sampled_from(IMAGES)),
        "provider": draw(st.sampled_from(PROVIDERS)),
        "model": draw(st.sampled_from(MODELS)),
        "tools": draw(_subset(TOOLS)),
        "limits": {r: "1" for r in draw(_subset(("cpu", "memory"), 2))},
    }
    own_labels = draw(labels)
    if kind == "Agent":
        return an_agent(own_labels, namespace, draw(st.sampled_from(("a1", "a2"))), **agent)
    name = draw(st.sampled_from(FLEET_NAMES))
    fleet: dict[str, Any] = {
        "template_labels": draw(labels),
        "replicas": draw(st.integers(0, 10)),
        **agent,
    }
    if draw(st.booleans()):
        fleet["autoscaling_max"] = draw(st.integers(1, 12))
        fleet["autoscaling_enabled"] = draw(st.booleans())
    if kind == "Fleet":
        return a_fleet(own_labels, namespace, name, **fleet)
    return a_scale(draw(st.integers(0, 12)), own_labels, namespace, name, **fleet)
