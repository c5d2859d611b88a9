"""armyctl's -o json|yaml|wide against a real router process: the same object in
both formats, the wide columns, and a clear refusal where a command has no table."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.api import wire
from agentarmy.router.client import RouterClient
from agentarmy.router.testing import RouterProcess, write_token_file

pytestmark = pytest.mark.integration

ADMIN = "admin-token-output-0001"
AGENT = "agent-token-output-0001"


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    tokens = write_token_file(
        tmp_path / "tokens.yaml",
        [
            {"token": ADMIN, "name": "ops", "role": "admin"},
            {"token": AGENT, "name": "a", "role": "agent", "namespace": "ns", "fleet": "echo"},
        ],
    )
    with RouterProcess(f"sqlite:///{tmp_path}/router.db", tokens, tmp_path / "router.log") as r:
        yield r


def armyctl(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentarmy.cli.main", *args, "-n", "ns", "--router", router.url],
        env={**os.environ, "AGENTARMY_ROUTER_TOKEN": ADMIN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def acted(router: RouterProcess, *args: str) -> Any:
    """What a command that acts returns, read from -o yaml (run once: it acts)."""
    done = armyctl(router, *args, "-o", "yaml")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def shown(router: RouterProcess, *args: str) -> Any:
    """What a command that reads shows, from -o json and -o yaml (which must agree)."""
    as_json = armyctl(router, *args, "-o", "json")
    as_yaml = armyctl(router, *args, "-o", "yaml")
    assert as_json.returncode == as_yaml.returncode == 0, as_json.stderr + as_yaml.stderr
    data, again = json.loads(as_json.stdout), yaml.safe_load(as_yaml.stdout)
    for each in (data, again):
        each.pop("generatedAt", None)  # stats are stamped when made: one per call
    assert again == data
    return data


async def register_agent(url: str) -> None:
    async with RouterClient(url, AGENT) as client:
        await client.register(
            wire.RegisterAgent(namespace="ns", name="echo-0", fleet="echo", capabilities=["echo"])
        )


def test_tasks_and_agents_in_every_format(router: RouterProcess) -> None:
    submitted = acted(router, "submit", "echo", "echo", "--input", '{"n": 1}')
    task_id = submitted["task"]["id"]
    assert shown(router, "get", task_id)["input"] == {"n": 1}
    listed = shown(router, "list")
    assert [t["id"] for t in listed["tasks"]] == [task_id]

    narrow = armyctl(router, "list").stdout.splitlines()
    wide = armyctl(router, "list", "-o", "wide").stdout.splitlines()
    assert narrow[0].split()[-1] == "AGE" and narrow[1].split()[0] == task_id
    assert wide[0].split()[-3:] == ["AGENT", "PARENT", "TRACE"]
    assert wide[1].split()[-1] == listed["tasks"][0]["traceId"]

    asyncio.run(register_agent(router.url))
    stats = shown(router, "agents")
    assert [a["name"] for f in stats["fleets"] for a in f["agents"]] == ["echo-0"]
    agents_wide = armyctl(router, "agents", "-o", "wide").stdout.splitlines()
    assert agents_wide[0].split()[-2:] == ["READY", "TEMPLATE"]
    assert "TEMPLATE" not in armyctl(router, "agents").stdout

    assert shown(router, "rules") == {"namespaces": []}  # no Policy governs a fleet yet
    assert armyctl(router, "rules", "-o", "wide").stdout.split()[-2:] == ["DEPTH", "POLICIES"]
    assert shown(router, "approvals") == {"approvals": []}


def test_wide_where_there_is_no_table_is_refused_naming_the_choices(
    router: RouterProcess,
) -> None:
    refused = armyctl(router, "resume", "fleet/echo", "-o", "wide")
    assert refused.returncode == 2
    assert "argument -o/--output: invalid choice: 'wide'" in refused.stderr
    resumed = acted(router, "resume", "fleet/echo")
    assert resumed["fleet"] == "echo" and resumed["wasHalted"] is None
