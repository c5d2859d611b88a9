"""`hack/demo --exit` as a user runs it: the set-up says whether the binaries were built or
found in the cache, then every step of the demo passes with its evidence shown, and the
summary lists each step as passed. About a minute with the binaries cached."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from agentarmy.devcluster.demo import STEPS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_hack_demo_exit_passes_every_step_with_its_evidence() -> None:
    started = time.monotonic()
    run = subprocess.run(
        [str(REPO / "hack" / "demo"), "--exit"],
        capture_output=True,
        text=True,
        timeout=900,  # a cold build of the binaries is announced and ticks, but takes minutes
        check=False,
        cwd=REPO,
    )
    took = time.monotonic() - started
    out = run.stdout
    assert run.returncode == 0, out[-5000:] + run.stderr[-3000:]
    assert re.search(r"^kubernetes v\S+ \((built|cached, checked)\): /", out, re.M), out[:2000]

    summary = out.rpartition("==> summary")[2]
    for number, step in enumerate(STEPS, 1):
        assert re.search(rf"^  PASS  {number}\. {step.name} +\S", summary, re.M), summary
    assert f"{len(STEPS)}/{len(STEPS)} steps passed" in summary

    # Each step's own evidence, as the demo printed it.
    image = 'spec.template.spec.image "evil.io/agent:1" is not under ghcr.io/agentarmy/'
    assert f"denied the request: policy demo/baseline, rule allowedImageRegistries: {image}" in out
    assert "denied the request: policy demo/baseline, rule maxReplicasPerFleet" in out
    assert "[##########..........] 50/100" in out and "100/100 tasks succeeded" in out
    assert "status.canary: Aborted" in out
    assert re.search(r"reason RolloutAborted: template \w+ failed \d+ of \d+ tasks", out)
    halted = r"Halted=True [\d.]+s after the router halted it, ErrorRateAboveBound: halted by"
    assert re.search(halted + " policy demo/payments-guard, sentinel.maxErrorRate", out)
    assert "a task submitted while halted, 2 s later: Queued" in out
    assert "resumed by admin:local-admin" in out
    assert "after the resume that task ran: Succeeded (" in out
    assert "woke from zero: scaled from 0 to 1 agents" in out
    assert len(re.findall(r"^ +t-\w+ +workers +wordcount +Succeeded ", out, re.M)) == 3
    print(f"hack/demo --exit took {took:.0f}s")
