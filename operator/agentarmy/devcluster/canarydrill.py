"""A canary drill, for the demo, the e2e tests and the benchmark: a Fleet whose new
template can be made to fail every task, and test tasks submitted to it at a steady pace
in the background, every id kept, so none can be lost unseen while a rollout comes and
goes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any

from agentarmy.api import wire
from agentarmy.devcluster.stack import Stack
from agentarmy.router.client import RouterClient

BROKEN_ENV = "TEST_SKILL_FAIL"
"""The test skill fails every task of an Agent whose env sets this (a broken template)."""


def canary_fleet(
    name: str,
    version: str,
    broken: bool = False,
    replicas: int = 4,
    steps: list[dict[str, Any]] | None = None,
    max_error_rate: float = 0.2,
    min_tasks: int = 6,
    resources: dict[str, Any] | None = None,
) -> str:
    """A Fleet of ``test`` agents rolled out by a Canary strategy; each ``version`` is a
    new template, and a ``broken`` one's agents fail every task."""
    env = [{"name": "VERSION", "value": version}]
    if broken:
        env.append({"name": BROKEN_ENV, "value": f"version {version} is broken"})
    template: dict[str, Any] = {"capabilities": ["test"], "env": env}
    if resources:
        template["resources"] = resources
    return json.dumps(
        {
            "apiVersion": "agentarmy.io/v1alpha1",
            "kind": "Fleet",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "template": {"spec": template},
                "strategy": {
                    "type": "Canary",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                    "canary": {
                        "steps": steps
                        or [{"weight": 25, "pause": "30s"}, {"weight": 50, "pause": "30s"}],
                        "maxErrorRate": max_error_rate,
                        "minTasks": min_tasks,
                    },
                },
            },
        }
    )


class Traffic:
    def __init__(self, stack: Stack, fleet: str, per_second: float = 8.0) -> None:
        self.stack, self.fleet, self.interval = stack, fleet, 1 / per_second
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with RouterClient(self.stack.router_url, self.stack.client_token) as client:
            while not self._stop.is_set():
                submitted = await client.submit(
                    wire.SubmitTask(
                        namespace=self.stack.namespace,
                        fleet=self.fleet,
                        capability="test",
                        input={"sleep": 0.05},
                        maxAttempts=8,  # a failed attempt on a bad template is retried
                    )
                )
                self.ids.append(submitted.task.id)
                await asyncio.sleep(self.interval)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def phases(self) -> Counter[str]:
        """How every submitted task ended (waits up to a minute for each)."""

        async def read() -> Counter[str]:
            async with RouterClient(self.stack.router_url, self.stack.client_token) as client:
                return Counter([(await client.wait(i, 60)).phase for i in self.ids])

        return asyncio.run(read())
