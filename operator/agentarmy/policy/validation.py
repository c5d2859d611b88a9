"""What the CRD schema cannot check about a Policy: globs that compile,
selectors that parse the way the API server parses them, CIDRs that exist."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from agentarmy.api.common import LabelSelector
from agentarmy.api.policy import PolicySpec
from agentarmy.policy.globs import glob_problem

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY = re.compile(rf"^(({_PREFIX})/)?{_NAME}$")


def label_key_problem(key: str) -> str | None:
    prefix, _, _ = key.rpartition("/")
    if not LABEL_KEY.match(key) or len(prefix) > 253:
        return (
            f'"{key}" is not a valid label key (an optional DNS prefix and "/", then at most '
            "63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric)"
        )
    return None


def selector_problems(selector: LabelSelector, path: str) -> list[str]:
    problems: list[str] = []
    for key in selector.matchLabels:
        problem = label_key_problem(key)
        if problem:
            problems.append(f"{path}.matchLabels: {problem}")
    for i, req in enumerate(selector.matchExpressions):
        where = f"{path}.matchExpressions[{i}]"
        problem = label_key_problem(req.key)
        if problem:
            problems.append(f"{where}.key: {problem}")
        if req.operator in ("In", "NotIn") and not req.values:
            problems.append(f"{where}.values: must be non-empty when operator is {req.operator}")
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            problems.append(f"{where}.values: must be empty when operator is {req.operator}")
    return problems


def _globs(values: list[str], path: str) -> list[str]:
    problems = []
    for i, pattern in enumerate(values):
        problem = glob_problem(pattern)
        if problem:
            problems.append(f'{path}[{i}]: glob "{pattern}" {problem}')
    return problems


def spec_problems(spec: PolicySpec) -> list[str]:
    """Every problem of a schema-valid spec, each naming its field."""
    rules = spec.rules
    problems = selector_problems(spec.selector, "spec.selector")
    if rules.models is not None:
        problems += _globs(rules.models.names, "spec.rules.models.names")
    problems += _globs(rules.allowedTools, "spec.rules.allowedTools")
    problems += _globs(rules.allowedImageRegistries, "spec.rules.allowedImageRegistries")
    problems += _globs(rules.approvalRequiredTools, "spec.rules.approvalRequiredTools")
    if rules.egress is not None:
        for i, cidr in enumerate(rules.egress.cidrs):
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as err:
                problems.append(f'spec.rules.egress.cidrs[{i}]: "{cidr}" is not a CIDR: {err}')
    return problems


def _path(root: str, loc: tuple[int | str, ...]) -> str:
    """``spec`` + ``("rules", "allowedTools", 0)`` -> ``spec.rules.allowedTools[0]``."""
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def policy_problems(obj: Mapping[str, Any]) -> list[str]:
    """Problems of a Policy object as submitted (empty when it is valid)."""
    try:
        spec = PolicySpec.model_validate(obj.get("spec") or {})
    except ValidationError as err:
        return [f"{_path('spec', e['loc'])}: {e['msg']}" for e in err.errors()]
    return spec_problems(spec)
