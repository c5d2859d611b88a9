"""Helpers for the operator's integration tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from agentarmy.devcluster.operator_process import OPERATOR_NAMESPACE, OperatorProcess

__all__ = ["OPERATOR_NAMESPACE", "OperatorProcess", "apply", "get_json", "ready", "wait_for"]


def apply(cluster: Any, namespace: str, manifest: str) -> None:
    """`kubectl apply` a manifest given as text into ``namespace``."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def wait_for(
    check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.3, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def get_json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def ready(obj: dict[str, Any], type_: str = "Ready") -> bool:
    return any(
        c["type"] == type_ and c["status"] == "True"
        for c in obj.get("status", {}).get("conditions", [])
    )
