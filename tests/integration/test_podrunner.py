"""The pod runner against the real control plane, with real processes.

Each test starts its own runner limited to the test's namespace (``--namespace``),
so runners of other tests never run its pods. The pods run a small Python program
that records its environment, token and signals into files the test reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.models.core_v1 import Container, ServiceAccountTokenProjection
from lightkube.resources.core_v1 import Pod

from agentarmy.api import runtime_env
from agentarmy.devcluster.podenv import expand
from agentarmy.devcluster.podrunner import (
    RUNNER_LOG,
    exit_status_patch,
    pod_runner,
    start_pod_runner,
)
from agentarmy.devcluster.podvolumes import TokenFile, rewrite
from agentarmy.devcluster.processes import stop_process

pytestmark = pytest.mark.integration

T = TypeVar("T")

PROGRAM = textwrap.dedent(
    """
    import json, os, signal, sys, time
    out = os.environ["OUT_DIR"]
    name = os.environ["POD_NAME"]
    mode = os.environ.get("MODE", "sleep")

    def on_term(signum, frame):
        with open(os.path.join(out, name + ".signal"), "w") as f:
            f.write(signal.Signals(signum).name)
        if mode != "ignore-term":
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    token_file = os.environ.get("AGENTARMY_TOKEN_FILE")
    record = {
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "token": open(token_file).read() if token_file else None,
    }
    with open(os.path.join(out, name + ".json.tmp"), "w") as f:
        json.dump(record, f)
    os.replace(os.path.join(out, name + ".json.tmp"), os.path.join(out, name + ".json"))
    print("started", name, flush=True)
    if mode.startswith("exit"):
        print("failing on purpose", flush=True)
        sys.exit(int(mode[4:]))
    while True:
        time.sleep(0.2)
    """
)

RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}
TOKEN_DIR = str(Path(runtime_env.DEFAULT_TOKEN_PATH).parent)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is not running any more
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


class Pods:
    """Creates agent pods running PROGRAM in one namespace and reads what they recorded."""

    def __init__(self, cluster: Any, namespace: str, out: Path, program: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.out = out
        self.program = program
        self.client = Client(config=KubeConfig.from_file(cluster.kubeconfig))

    def create(
        self,
        name: str,
        *,
        mode: str = "sleep",
        labels: dict[str, str] | None = None,
        env: list[dict[str, Any]] | None = None,
        env_from: list[dict[str, Any]] | None = None,
        grace: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        container: dict[str, Any] = {
            "name": "agent",
            "image": "agentarmy/agent:dev",
            "command": command or [sys.executable, str(self.program)],
            "env": [
                {"name": "OUT_DIR", "value": str(self.out)},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MODE", "value": mode},
                {"name": runtime_env.TOKEN_FILE, "value": runtime_env.DEFAULT_TOKEN_PATH},
                *(env or []),
            ],
            "envFrom": env_from or [],
            "securityContext": RESTRICTED_CONTAINER,
            "volumeMounts": [
                {"name": "agentarmy-token", "mountPath": TOKEN_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {"agentarmy.io/agent": name} if labels is None else labels,
            },
            "spec": {
                "restartPolicy": "Never",
                "securityContext": RESTRICTED_POD,
                "containers": [container],
                "volumes": [
                    {
                        "name": "agentarmy-token",
                        "projected": {
                            "sources": [
                                {
                                    "serviceAccountToken": {
                                        "audience": runtime_env.TOKEN_AUDIENCE,
                                        "expirationSeconds": 600,
                                        "path": Path(runtime_env.DEFAULT_TOKEN_PATH).name,
                                    }
                                }
                            ]
                        },
                    },
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        }
        if grace is not None:
            pod["spec"]["terminationGracePeriodSeconds"] = grace
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def get(self, name: str) -> Pod:
        return self.client.get(Pod, name, namespace=self.namespace)

    def running(self, name: str) -> bool:
        status = self.get(name).status
        return status is not None and status.phase == "Running"

    def record(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """What the pod's process wrote when it started."""
        path = self.out / f"{name}.json"
        wait_for(f"pod {name}'s process to start", path.exists, timeout)
        record: dict[str, Any] = json.loads(path.read_text())
        return record

    def delete(self, name: str) -> None:
        self.cluster.kubectl("delete", "pod", name, "-n", self.namespace, "--wait=false")


@pytest.fixture
def pods(cluster: Any, namespace: str) -> Iterator[Pods]:
    # the pods meet the restricted Pod Security Standard: the namespace enforces it
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    # Not under /tmp: the pods mount an emptyDir there, and the runner rightly points
    # every path under /tmp at it, so the program would not find its files.
    workspace = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="podrunner-test-"))
    out = workspace / "out"
    out.mkdir()
    program = workspace / "agent_program.py"
    program.write_text(PROGRAM)
    pods = Pods(cluster, namespace, out, program)
    yield pods
    pods.client.close()
    shutil.rmtree(workspace, ignore_errors=True)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def runner(cluster: Any, namespace: str, log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    with pod_runner(cluster.kubeconfig, log_dir, "--namespace", namespace) as process:
        yield process


def runner_events(log_dir: Path, name: str) -> list[str]:
    lines = (log_dir / RUNNER_LOG).read_text().splitlines()
    return [entry["msg"] for entry in map(json.loads, lines) if entry.get("name") == name]


def token_review(cluster: Any, token: str) -> dict[str, Any]:
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [runtime_env.TOKEN_AUDIENCE]},
    }
    answer = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
    status: dict[str, Any] = json.loads(answer.stdout)["status"]
    return status


def test_env_refs_are_resolved_and_the_token_is_real_and_bound(
    cluster: Any, namespace: str, pods: Pods, runner: subprocess.Popen[bytes], log_dir: Path
) -> None:
    secret_value = "sk-very-secret-4711"
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "model-key",
        "-n",
        namespace,
        f"--from-literal=apiKey={secret_value}",
        "--from-literal=other=two",
    )
    cluster.kubectl(
        "create",
        "configmap",
        "model",
        "-n",
        namespace,
        "--from-literal=name=tiny-llm",
        "--from-literal=temperature=0.2",
    )
    pods.create(
        "envy",
        env=[
            {
                "name": "API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "model-key", "key": "apiKey"}},
            },
            {"name": "MODEL", "valueFrom": {"configMapKeyRef": {"name": "model", "key": "name"}}},
            {
                "name": "ABSENT",
                "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}},
            },
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {
                "name": "ROLE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['agentarmy.io/agent']"}},
            },
            {"name": "GREETING", "value": "model=$(MODEL) literal=$$(MODEL)"},
        ],
        env_from=[
            {"configMapRef": {"name": "model"}, "prefix": "CM_"},
            {"secretRef": {"name": "model-key"}},
        ],
    )
    record = pods.record("envy")
    env = record["env"]
    pod = pods.get("envy")
    assert pod.metadata is not None and pod.spec is not None

    assert env["API_KEY"] == secret_value
    assert env["MODEL"] == "tiny-llm"
    assert "ABSENT" not in env
    assert env["NODE"] == pod.spec.nodeName and env["NODE"].startswith("kwok-node-")
    assert env["ROLE"] == "envy"
    assert env["GREETING"] == "model=tiny-llm literal=$(MODEL)"
    assert env["CM_temperature"] == "0.2" and env["other"] == "two"
    # the venv comes first on PATH; the token path and /tmp point at per-pod directories
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    token_file = Path(env[runtime_env.TOKEN_FILE])
    assert token_file.name == "token" and not str(token_file).startswith(TOKEN_DIR)
    assert Path(env["TMPDIR"]).parent == token_file.parent.parent
    assert Path(record["cwd"]) == token_file.parent.parent.parent

    review = token_review(cluster, record["token"])
    assert review["authenticated"] is True, review
    assert review["audiences"] == [runtime_env.TOKEN_AUDIENCE]
    assert review["user"]["username"] == f"system:serviceaccount:{namespace}:default"
    assert review["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["envy"]
    assert review["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [pod.metadata.uid]
    assert secret_value not in (log_dir / RUNNER_LOG).read_text()


def test_deleting_the_pod_sigterms_the_process_and_cleans_up(
    pods: Pods, runner: subprocess.Popen[bytes]
) -> None:
    pods.create("doomed")
    record = pods.record("doomed")
    pod_dir = Path(record["cwd"])
    assert pod_dir.is_dir()
    deleted_at = time.monotonic()
    pods.delete("doomed")
    signal_file = pods.out / "doomed.signal"
    wait_for("the process to record SIGTERM", signal_file.exists, timeout=10)
    assert time.monotonic() - deleted_at < 10  # well inside the 30 s grace period
    assert signal_file.read_text() == "SIGTERM"
    wait_for("the process to end", lambda: not alive(record["pid"]), timeout=5)
    wait_for("the per-pod directory to go", lambda: not pod_dir.exists(), timeout=5)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    pods: Pods, runner: subprocess.Popen[bytes]
) -> None:
    pods.create("stubborn", mode="ignore-term", grace=2)
    pid = pods.record("stubborn")["pid"]
    deleted_at = time.monotonic()
    pods.delete("stubborn")
    wait_for("SIGTERM", (pods.out / "stubborn.signal").exists, timeout=5)
    wait_for("SIGKILL after the grace period", lambda: not alive(pid), timeout=8)
    # kwok removes the pod at once with grace 0; the runner still honours the 2 s
    assert time.monotonic() - deleted_at >= 1.8


def test_exits_are_reported_in_pod_status_and_not_restarted(
    pods: Pods, runner: subprocess.Popen[bytes], log_dir: Path
) -> None:
    pods.create("crasher", mode="exit3")
    pods.create("finisher", mode="exit0")

    def phase(name: str) -> str | None:
        status = pods.get(name).status
        terminal = status is not None and status.phase in ("Succeeded", "Failed")
        return status.phase if terminal and status is not None else None

    assert wait_for("crasher to fail", lambda: phase("crasher")) == "Failed"
    assert wait_for("finisher to succeed", lambda: phase("finisher")) == "Succeeded"
    status = pods.get("crasher").status
    assert status is not None and status.containerStatuses and status.conditions
    state = status.containerStatuses[0].state
    assert state is not None and state.running is None and state.terminated is not None
    assert state.terminated.exitCode == 3
    assert state.terminated.reason == "Error"
    assert state.terminated.startedAt is not None and state.terminated.finishedAt is not None
    ready = {c.type: c.status for c in status.conditions}
    assert ready["Ready"] == "False" and ready["ContainersReady"] == "False"
    finished = pods.get("finisher").status
    assert finished is not None and finished.containerStatuses
    terminated = finished.containerStatuses[0].state.terminated  # type: ignore[union-attr]
    assert terminated is not None and (terminated.exitCode, terminated.reason) == (0, "Completed")
    # the program wrote to its log; nobody started it a second time
    assert "failing on purpose" in (log_dir / f"{pods.namespace}_crasher.log").read_text()
    assert runner_events(log_dir, "crasher").count("started") == 1


def test_a_missing_secret_holds_the_start_until_it_exists(
    cluster: Any, namespace: str, pods: Pods, runner: subprocess.Popen[bytes], log_dir: Path
) -> None:
    key_ref = {"secretKeyRef": {"name": "late", "key": "token"}}
    pods.create("patient", env=[{"name": "LATE", "valueFrom": key_ref}])
    wait_for(
        "the runner to hold the start",
        lambda: "cannot start yet" in runner_events(log_dir, "patient"),
    )
    assert not (pods.out / "patient.json").exists()
    cluster.kubectl(
        "create", "secret", "generic", "late", "-n", namespace, "--from-literal=token=t0k"
    )
    assert pods.record("patient")["env"]["LATE"] == "t0k"


def test_a_command_that_cannot_run_is_a_start_error(
    pods: Pods, runner: subprocess.Popen[bytes]
) -> None:
    pods.create("broken", command=[str(pods.out / "no-such-program")])

    def terminated() -> Any:
        status = pods.get("broken").status
        if status is None or status.phase != "Failed" or not status.containerStatuses:
            return None
        return status.containerStatuses[0].state.terminated  # type: ignore[union-attr]

    state = wait_for("the start error in the pod status", terminated)
    assert (state.exitCode, state.reason) == (128, "StartError")


def test_a_pod_without_the_agent_label_is_never_run(
    pods: Pods, runner: subprocess.Popen[bytes], log_dir: Path
) -> None:
    pods.create("plain", labels={"app": "plain"})
    wait_for("kwok to make the plain pod Running", lambda: pods.running("plain"))
    pods.create("agent")  # created later; once it runs, the runner has seen both
    pods.record("agent")
    time.sleep(0.5)  # a runner that ran every pod would have started both by now
    assert not (pods.out / "plain.json").exists()
    assert not (log_dir / f"{pods.namespace}_plain.log").exists()
    assert runner_events(log_dir, "plain") == []


def test_a_pod_running_before_the_runner_started_is_adopted(
    cluster: Any, namespace: str, pods: Pods, log_dir: Path
) -> None:
    pods.create("early")
    wait_for("kwok to make the pod Running", lambda: pods.running("early"))
    with pod_runner(cluster.kubeconfig, log_dir, "--namespace", namespace):
        record = pods.record("early")
        assert record["env"]["POD_NAME"] == "early"
    # stopping the runner stops its children
    wait_for("the child to stop with the runner", lambda: not alive(record["pid"]), timeout=5)
    assert (pods.out / "early.signal").read_text() == "SIGTERM"


def test_children_die_when_the_runner_is_sigkilled(
    cluster: Any, namespace: str, pods: Pods, log_dir: Path, tmp_path: Path
) -> None:
    # a SIGKILLed runner cannot remove its work dir: keep it where pytest cleans up
    options = ("--namespace", namespace, f"--work-dir={tmp_path / 'work'}")
    process = start_pod_runner(cluster.kubeconfig, log_dir, *options)
    try:
        pods.create("orphan")
        pid = pods.record("orphan")["pid"]
        process.send_signal(signal.SIGKILL)
        wait_for("the child to die with the runner", lambda: not alive(pid), timeout=5)
    finally:
        stop_process(process)


def test_max_processes_makes_pods_wait_for_a_slot(
    cluster: Any, namespace: str, pods: Pods, log_dir: Path
) -> None:
    options = ("--namespace", namespace, "--max-processes", "1")
    with pod_runner(cluster.kubeconfig, log_dir, *options):
        pods.create("first")
        pods.record("first")
        pods.create("second")
        wait_for("second to be Running", lambda: pods.running("second"))
        wait_for(
            "second to wait",
            lambda: "waiting for a process slot" in runner_events(log_dir, "second"),
        )
        assert not (pods.out / "second.json").exists()
        pods.delete("first")
        assert pods.record("second")["env"]["POD_NAME"] == "second"


async def test_the_token_is_refreshed_before_it_expires(
    cluster: Any, pods: Pods, tmp_path: Path
) -> None:
    pods.create("fresh", labels={"app": "not-an-agent"})  # a pod to bind to; nobody runs it
    pod = pods.get("fresh")
    client = AsyncClient(config=KubeConfig.from_file(cluster.kubeconfig))
    source = ServiceAccountTokenProjection(
        path="token", audience=runtime_env.TOKEN_AUDIENCE, expirationSeconds=600
    )
    token = TokenFile(client, pod, source, tmp_path / "token", refresh_at=0.002)  # ~1.2 s
    try:
        await token.write()
        assert 590 <= token.lifetime <= 601
        first = token.path.read_text()
        refresher = asyncio.create_task(token.keep_fresh())
        changed = asyncio.to_thread(
            wait_for, "a new token", lambda: token.path.read_text() != first
        )
        await changed
        refresher.cancel()
        second = token.path.read_text()
    finally:
        await client.close()
    assert second != first
    assert token_review(cluster, second)["authenticated"] is True


# -- the pure parts --------------------------------------------------------------


def test_expansion_and_mount_rewriting() -> None:
    env = {"A": "1", "DIR": "/data/x"}
    assert expand("$(A)-$(B)-$$(A)-$", env) == "1-$(B)-$(A)-$"
    mounts = [("/var/run/secrets/agentarmy.io", Path("/l/tok")), ("/var", Path("/l/var"))]
    assert rewrite("/var/run/secrets/agentarmy.io/token", mounts) == "/l/tok/token"
    assert rewrite("/var/run/secrets/agentarmy.io", mounts) == "/l/tok"
    assert rewrite("/variable", mounts) == "/variable"
    assert rewrite("/var/agentarmy-absent/log", mounts) == "/l/var/agentarmy-absent/log"
    # A path that exists here (e.g. the interpreter in a checkout under /tmp) stays.
    assert rewrite("/var/tmp", mounts) == "/var/tmp"


def test_exit_status_for_a_signal() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    patch = exit_status_patch(Container(name="agent", image="x"), -9, now, now)
    terminated = patch["status"]["containerStatuses"][0]["state"]["terminated"]
    assert patch["status"]["phase"] == "Failed"
    assert (terminated["exitCode"], terminated["signal"], terminated["reason"]) == (137, 9, "Error")
    assert terminated["finishedAt"] == "2030-01-02T03:04:05Z"
