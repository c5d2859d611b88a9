"""What the schema cannot check about a Policy: each problem names its field."""

from __future__ import annotations

from typing import Any

import pytest

from agentarmy.api.policy import PolicySpec
from agentarmy.policy import policy_problems
from agentarmy.policy.globs import GlobError, compile_glob, glob_match, glob_problem
from agentarmy.policy.validation import label_key_problem, spec_problems


def problems(spec: dict[str, Any]) -> list[str]:
    return policy_problems({"metadata": {"name": "p", "namespace": "n"}, "spec": spec})


def test_a_valid_policy_has_no_problems() -> None:
    spec = {
        "mode": "audit",
        "selector": {
            "matchLabels": {"app.kubernetes.io/name": "bot", "team": "a"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["gold", "silver"]},
                {"key": "example.com/canary", "operator": "DoesNotExist"},
            ],
        },
        "rules": {
            "models": {"providers": ["openai"], "names": ["gpt-4o*", "claude-[0-9]*"]},
            "allowedTools": ["github.*", "fs.read"],
            "allowedImageRegistries": ["ghcr.io/acme/", "quay.io/*"],
            "approvalRequiredTools": ["shell.*"],
            "egress": {"cidrs": ["10.0.0.0/8", "2001:db8::/32"]},
        },
    }
    assert problems(spec) == []
    assert problems({}) == []
    assert policy_problems({}) == []


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            {"models": {"names": ["gpt-[4"]}},
            "spec.rules.models.names[0]: glob \"gpt-[4\" has an unclosed '[' at position 4",
        ),
        (
            {"allowedTools": ["fs.read", "fs.[]x"]},
            "spec.rules.allowedTools[1]: glob \"fs.[]x\" has an unclosed '[' at position 3",
        ),
        (
            {"allowedImageRegistries": ["ghcr.io/[z-a]cme/"]},
            'spec.rules.allowedImageRegistries[0]: glob "ghcr.io/[z-a]cme/" has a reversed '
            "range z-a at position 8",
        ),
        (
            {"allowedTools": ["[!]"]},
            "spec.rules.allowedTools[0]: glob \"[!]\" has an unclosed '[' at position 0",
        ),
    ],
)
def test_bad_globs(rules: dict[str, Any], expected: str) -> None:
    assert problems({"rules": rules}) == [expected]


def test_bad_cidr() -> None:
    found = problems({"rules": {"egress": {"cidrs": ["10.0.0.0/8", "10.0.0.1/8", "300.1.2.3/8"]}}})
    assert len(found) == 2
    assert found[0].startswith('spec.rules.egress.cidrs[1]: "10.0.0.1/8" is not a CIDR: ')
    assert found[1].startswith('spec.rules.egress.cidrs[2]: "300.1.2.3/8" is not a CIDR: ')


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (
            {"matchLabels": {"bad key": "x"}},
            'spec.selector.matchLabels: "bad key" is not a valid label key',
        ),
        (
            {"matchLabels": {"Example.com/app": "x"}},
            'spec.selector.matchLabels: "Example.com/app" is not a valid label key',
        ),
        (
            {"matchLabels": {"x" * 64: "x"}},
            f'spec.selector.matchLabels: "{"x" * 64}" is not a valid label key',
        ),
        (
            {"matchExpressions": [{"key": "-app", "operator": "Exists"}]},
            'spec.selector.matchExpressions[0].key: "-app" is not a valid label key',
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "In"}]},
            "spec.selector.matchExpressions[0].values: must be non-empty when operator is In",
        ),
        (
            {
                "matchExpressions": [
                    {"key": "a", "operator": "Exists"},
                    {"key": "app", "operator": "NotIn", "values": []},
                ]
            },
            "spec.selector.matchExpressions[1].values: must be non-empty when operator is NotIn",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
            "spec.selector.matchExpressions[0].values: must be empty when operator is Exists",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "DoesNotExist", "values": ["x"]}]},
            "spec.selector.matchExpressions[0].values: must be empty when operator is DoesNotExist",
        ),
    ],
)
def test_bad_selectors(selector: dict[str, Any], expected: str) -> None:
    found = problems({"selector": selector})
    assert len(found) == 1 and found[0].startswith(expected), found


def test_schema_errors_name_the_field() -> None:
    found = problems(
        {
            "mode": "strict",
            "rules": {"maxReplicasPerFleet": -1, "allowedTools": ["has space"], "nope": 1},
        }
    )
    assert [p.split(":")[0] for p in found] == [
        "spec.mode",
        "spec.rules.allowedTools[0]",
        "spec.rules.maxReplicasPerFleet",
        "spec.rules.nope",
    ]
    assert policy_problems({"spec": ["not", "a", "mapping"]})[0].startswith("spec: ")


def test_every_problem_is_reported_not_only_the_first() -> None:
    spec = PolicySpec.model_validate(
        {
            "selector": {"matchLabels": {"a b": "x"}},
            "rules": {"allowedTools": ["[x"], "approvalRequiredTools": ["ok"]},
        }
    )
    assert [p.split(":")[0] for p in spec_problems(spec)] == [
        "spec.selector.matchLabels",
        "spec.rules.allowedTools[0]",
    ]


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("app", True),
        ("app.kubernetes.io/name", True),
        ("a", True),
        ("A_b-c.d", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("example.com/" + "x" * 63, True),
        ("-app", False),
        ("app-", False),
        ("", False),
        ("/app", False),
        ("Example.com/app", False),
        ("a/b/c", False),
        ("a" * 254 + "/app", False),
    ],
)
def test_label_keys(key: str, valid: bool) -> None:
    assert (label_key_problem(key) is None) is valid


# --- the glob dialect --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "is empty"),
        ("gpt-*", None),
        ("a?c", None),
        ("[abc]", None),
        ("[a-z]x", None),
        ("[!a-z]", None),
        ("[]]", None),  # "]" first in a class is a member
        ("[!]]", None),  # ... also after "!"
        ("[!]a]", None),
        ("[", "has an unclosed '[' at position 0"),
        ("x[ab", "has an unclosed '[' at position 1"),
        ("[]", "has an unclosed '[' at position 0"),
        ("[!]", "has an unclosed '[' at position 0"),
        ("[!", "has an unclosed '[' at position 0"),
        ("ab[z-a]", "has a reversed range z-a at position 2"),
    ],
)
def test_glob_problem(pattern: str, problem: str | None) -> None:
    assert glob_problem(pattern) == problem
    if problem is None:
        compile_glob(pattern)
    else:
        with pytest.raises(GlobError, match="glob"):
            compile_glob(pattern)


@pytest.mark.parametrize(
    ("name", "pattern", "hit"),
    [
        ("gpt-4o", "gpt-*", True),
        ("gpt-4o", "gpt-4o", True),
        ("gpt-4o", "GPT-*", False),
        ("a]", "[!]]]", True),  # one character but "]", then "]"
        ("]]", "[!]]]", False),
        ("]", "[]]", True),
        ("b", "[!]]", True),
        ("]", "[!]]", False),
        ("[x", "[x", False),  # invalid patterns match nothing
        ("x", "x[", False),
        ("a.b", "a?b", True),
        ("a/b", "a*", True),
    ],
)
def test_glob_match(name: str, pattern: str, hit: bool) -> None:
    assert glob_match(name, pattern) is hit
