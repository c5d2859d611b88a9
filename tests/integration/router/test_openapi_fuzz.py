"""Schemathesis against the published OpenAPI document of a real router process.

It must find no 5xx, and (stricter) no response that breaks the document and no
schema-valid request refused / schema-invalid request accepted (all checks).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentarmy.router.testing import NatsServer, RouterProcess, write_token_file

ADMIN_TOKEN = "admin-token-fuzz-000001"
AGENT_TOKEN = "agent-token-fuzz-000001"


@pytest.fixture(params=["sqlite", "nats"])
def router(
    request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer
) -> Iterator[RouterProcess]:
    tokens = write_token_file(
        tmp_path / "tokens.yaml",
        [
            {"token": ADMIN_TOKEN, "name": "admin", "role": "admin"},
            {
                "token": AGENT_TOKEN,
                "name": "fa",
                "role": "agent",
                "namespace": "default",
                "fleet": "fa",
            },
        ],
    )
    store = (
        f"sqlite:///{tmp_path}/router.db"
        if request.param == "sqlite"
        else (f"{nats_server.url}?prefix=fuzz{tmp_path.name[-6:].replace('-', '')}")
    )
    with RouterProcess(store, tokens, tmp_path / "router.log") as process:
        yield process


def schemathesis(router: RouterProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{router.url}/openapi.json",
        "-H",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--seed",
        "7",
        "--request-timeout",
        "70",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=540)


def test_fuzzing_finds_no_server_errors(router: RouterProcess) -> None:
    runs = [
        # Everything but the long-poll wait (whose real, linked ids would make it wait).
        schemathesis(router, ADMIN_TOKEN, "-n", "25", "--exclude-path-regex", "/wait$"),
        schemathesis(
            router,
            ADMIN_TOKEN,
            "-n",
            "25",
            "--include-path-regex",
            "/wait$",
            "--phases",
            "examples,coverage,fuzzing",
        ),
        schemathesis(
            router,
            AGENT_TOKEN,
            "-n",
            "25",
            "--include-path-regex",
            "^/v1/agents",
            "--phases",
            "examples,coverage,fuzzing",
        ),
    ]
    for run in runs:
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert " passed" in run.stdout and "generated" in run.stdout
    log = router.log_file.read_text()
    assert '"level":"error"' not in log, log[-4000:]
