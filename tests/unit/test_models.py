"""Pure model logic: defaults, bounds, durations, selectors, conditions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from agentarmy.api.agent import AgentSpec
from agentarmy.api.common import (
    LabelSelector,
    parse_duration,
    parse_int_or_percent,
    set_condition,
)
from agentarmy.api.fleet import FleetSpec
from agentarmy.api.policy import PolicySpec
from agentarmy.api.resources import RESOURCES
from agentarmy.api.task import TaskSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
SPEC_BY_KIND = {r.kind: r.spec for r in RESOURCES}


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in SPEC_BY_KIND:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


@pytest.mark.parametrize(
    ("name", "doc"), _example_documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_examples_parse(name: str, doc: dict[str, Any]) -> None:
    SPEC_BY_KIND[doc["kind"]].model_validate(doc["spec"])


def test_agent_defaults() -> None:
    spec = AgentSpec.model_validate({"capabilities": ["echo"]})
    assert spec.concurrency == 1
    assert spec.role == "worker"
    assert spec.model.provider == "none"
    assert spec.heartbeatInterval == "10s"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"capabilities": []}, "capabilities"),
        ({"capabilities": ["Echo!"]}, "capabilities.0"),
        ({"capabilities": ["echo"], "concurrency": 0}, "concurrency"),
        ({"capabilities": ["echo"], "heartbeatInterval": "ten seconds"}, "heartbeatInterval"),
        ({"capabilities": ["echo"], "model": {"apiKey": "sk-inline"}}, "model.apiKey"),
        ({"capabilities": ["echo"], "unknown": 1}, "unknown"),
    ],
)
def test_agent_rejects(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        AgentSpec.model_validate(spec)
    locations = {".".join(str(p) for p in e["loc"]) for e in err.value.errors()}
    assert field in locations


def test_fleet_bounds() -> None:
    template = {"spec": {"capabilities": ["echo"]}}
    assert FleetSpec.model_validate({"template": template}).replicas == 1
    with pytest.raises(ValidationError):
        FleetSpec.model_validate({"template": template, "replicas": -1})
    with pytest.raises(ValidationError):
        FleetSpec.model_validate({"template": template, "replicas": 10_001})


def test_policy_defaults_allow_everything() -> None:
    spec = PolicySpec.model_validate({})
    assert spec.mode == "enforce"
    assert spec.rules.allowedTools == []


def test_task_defaults() -> None:
    spec = TaskSpec.model_validate({"fleet": "echo", "capability": "echo"})
    assert (spec.priority, spec.maxAttempts, spec.timeout) == (50, 3, "5m")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 m", "-1s", "1d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "total", "up", "expected"),
    [
        (2, 10, True, 2),
        ("25%", 10, True, 3),
        ("25%", 10, False, 2),
        ("0%", 10, True, 0),
        ("3", 10, False, 3),
    ],
)
def test_int_or_percent(value: int | str, total: int, up: bool, expected: int) -> None:
    assert parse_int_or_percent(value, total, round_up=up) == expected


def test_label_selector() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["x", "y"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.matches({"team": "a", "tier": "x"})
    assert not selector.matches({"team": "a", "tier": "z"})
    assert not selector.matches({"team": "a", "tier": "x", "canary": "1"})
    assert selector.to_string() == "team=a,tier in (x,y),!canary"
    assert LabelSelector().matches({})


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = set_condition([], "Ready", "False", "PodPending", "waiting", 1)
    first[0].lastTransitionTime = "2020-01-01T00:00:00Z"
    same = set_condition(first, "Ready", "False", "PodPending", "still waiting", 2)
    assert same[0].lastTransitionTime == "2020-01-01T00:00:00Z"
    assert same[0].observedGeneration == 2
    flipped = set_condition(same, "Ready", "True", "PodReady", "ok", 2)
    assert flipped[0].lastTransitionTime != "2020-01-01T00:00:00Z"
    assert len(flipped) == 1
