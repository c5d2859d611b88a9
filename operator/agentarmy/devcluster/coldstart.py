"""A fleet that idles at zero Agents and wakes on demand, and the time from a submit to
its first result: shown by the demo, checked by the e2e test, measured by the benchmark."""

from __future__ import annotations

import json
import time

from agentarmy.api import wire
from agentarmy.api.task import TERMINAL_PHASES
from agentarmy.router.client import RouterClient


def cold_fleet(name: str, max_replicas: int = 2, stabilization: str = "5m") -> str:
    """A Fleet manifest at ``replicas: 0`` that the autoscaler owns (``minReplicas: 0``):
    idle, not stopped, so the first task wakes it."""
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Fleet",
            "metadata": {"name": name},
            "spec": {
                "replicas": 0,
                "template": {
                    "spec": {
                        "capabilities": ["echo"],
                        "concurrency": 4,
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                    }
                },
                "autoscaling": {
                    "minReplicas": 0,
                    "maxReplicas": max_replicas,
                    "targetQueueDepthPerAgent": 10,
                    "scaleDownStabilization": stabilization,
                },
            },
        }
    )


async def first_result(
    router_url: str, token: str, namespace: str, fleet: str, wait_seconds: float = 120
) -> tuple[wire.Task, float]:
    """Submit one echo task to ``fleet``; the task once ended and the seconds it took."""
    async with RouterClient(router_url, token) as client:
        started = time.monotonic()
        submitted = await client.submit(
            wire.SubmitTask(
                namespace=namespace,
                fleet=fleet,
                capability="echo",
                input={"text": "wake up"},
                timeout="60s",
            )
        )
        deadline = started + wait_seconds
        task = submitted.task
        while task.phase not in TERMINAL_PHASES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            task = await client.wait(task.id, timeout_seconds=min(60.0, max(1.0, remaining)))
        return task, time.monotonic() - started
