"""A real local control plane on loopback: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok for simulated nodes.

Certificates, ServiceAccount signing keys (so the TokenRequest API works),
RBAC + Node authorization and the admission plugins webhooks need are all on.
Every process binds 127.0.0.1 on a free port (picked again if another process
takes it before the component binds it). ``stop()`` ends what ``start()``
began; children of an attached cluster also die with the Python process that
started them (PR_SET_PDEATHSIG), so an interrupted test run leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentarmy.devcluster import binaries
from agentarmy.devcluster.binaries import BinaryError
from agentarmy.devcluster.pki import CertificateAuthority, service_account_keys
from agentarmy.devcluster.processes import (
    PORT_ATTEMPTS,
    die_with_parent,
    free_port,
    listens,
    log_size,
    lost_port_race,
    stop_process,
)

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
WORKDIR_PREFIX = "agentarmy-devcluster-"


class ClusterError(RuntimeError):
    """The control plane could not start; the message says why and what to do."""


def require_free_port(port: int, what: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ClusterError(
                f"port {port} for {what} is already taken on 127.0.0.1: stop whatever listens "
                "there (`ss -ltnp`) or choose another port"
            ) from None
    return port


@dataclass
class Component:
    name: str
    build_args: Callable[[], list[str]]  # read the ports afresh at each launch
    log: Path
    ports: tuple[str, ...] = ()  # the Ports fields it binds that may be picked again
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where this launch's output starts in the log
    launches: int = 0

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0
    kwok: int = 0

    def allocate(self) -> tuple[str, ...]:
        """Pick a free port for every field not set; returns the fields it picked."""
        if self.apiserver:
            require_free_port(self.apiserver, "kube-apiserver")
        picked = tuple(name for name in PORT_FIELDS if not getattr(self, name))
        self.pick_again(picked)
        return picked

    def pick_again(self, names: tuple[str, ...]) -> None:
        for name in names:
            setattr(self, name, free_port())


PORT_FIELDS = ("etcd_client", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok")


class KubectlAccess:
    """kubectl and CRD installation against the cluster in ``self.kubeconfig``."""

    @property
    def kubeconfig(self) -> Path:
        raise NotImplementedError

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.kubeconfig, *args, input=input, check=check, timeout=timeout)

    def apply(self, documents: list[dict[str, Any]], *args: str) -> None:
        """`kubectl apply` objects given as dicts."""
        text = "---\n".join(yaml.safe_dump(d) for d in documents)
        self.kubectl("apply", *args, "-f", "-", input=text)

    def install_crds(self, crd_dir: Path, timeout: float = 60) -> None:
        install_crds(self.kubeconfig, crd_dir, timeout)


class ExistingCluster(KubectlAccess):
    """A cluster someone else runs (e.g. kind), named by a kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self._kubeconfig = kubeconfig
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
        self.server: str = cluster["cluster"]["server"]

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig


@dataclass
class DevCluster(KubectlAccess):
    """A control plane in ``workdir`` (a fresh temp dir unless given)."""

    nodes: int = 3
    pods_per_node: int = 1100
    workdir: Path | None = None
    detached: bool = False
    ports: Ports = field(default_factory=Ports)
    components: list[Component] = field(default_factory=list)
    _owns_workdir: bool = False
    _picked_ports: tuple[str, ...] = ()  # the ones a lost bind race may change

    # -- paths -----------------------------------------------------------------
    @property
    def pki(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def admin_cert_file(self) -> Path:
        return self.pki / "admin.crt"

    @property
    def admin_key_file(self) -> Path:
        return self.pki / "admin.key"

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> None:
        binaries.ensure(("etcd", "kwok", "kubernetes"))
        if self.workdir is None:
            remove_stale_workdirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            (self.workdir / "owner.pid").write_text(str(os.getpid()))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.pki.mkdir(exist_ok=True)
        self._picked_ports = self.ports.allocate()
        deadline = time.monotonic() + timeout
        try:
            self._write_pki()
            self._launch("etcd", self._etcd_args, ("etcd_client", "etcd_peer"))
            self._wait_for("etcd", self._etcd_healthy, deadline)
            self._launch("kube-apiserver", self._apiserver_args, ("apiserver",))
            self._wait_for("kube-apiserver", lambda: self._get("/readyz") == 200, deadline)
            self._launch(
                "kube-controller-manager", self._controller_manager_args, ("controller_manager",)
            )
            self._launch("kube-scheduler", self._scheduler_args, ("scheduler",))
            self._launch("kwok", self._kwok_args, ("kwok",))
            self._wait_for("every component to listen on its ports", self._all_listen, deadline)
            self._create_nodes()
            self._wait_for("nodes Ready", self._nodes_ready, deadline)
            self._wait_for("default ServiceAccount", self._default_service_account, deadline)
            self._write_state()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for component in reversed(self.components):
            stop_process(component.process, grace=10.0, group=True)
        self.components.clear()
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------
    def _write_pki(self) -> None:
        ca = CertificateAuthority(self.pki)
        ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", SERVICE_IP),
        )
        ca.issue("admin", "agentarmy-admin", organization="system:masters", client=True)
        ca.issue("controller-manager", "system:kube-controller-manager", client=True)
        ca.issue("scheduler", "system:kube-scheduler", client=True)
        ca.issue("kwok", "kwok-controller", organization="system:masters", client=True)
        service_account_keys(self.pki)
        self._write_kubeconfigs()

    def _write_kubeconfigs(self) -> None:
        """Every user's kubeconfig, naming the API server's current port."""
        for user in ("admin", "controller-manager", "scheduler", "kwok"):
            self._write_kubeconfig(self.pki / f"{user}.kubeconfig", user)
        shutil.copy(self.pki / "admin.kubeconfig", self.kubeconfig)
        self.kubeconfig.chmod(0o600)

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "agentarmy-dev",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.pki / f"{user}.crt"),
                        "client-key": str(self.pki / f"{user}.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "agentarmy-dev",
                    "context": {"cluster": "agentarmy-dev", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "agentarmy-dev",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _etcd_args(self) -> list[str]:
        assert self.workdir is not None
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [
            str(binaries.kube_binary("etcd")),
            "--name=devcluster",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=devcluster={peer}",
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=8589934592",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=5m",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p = self.pki
        return [
            str(binaries.kube_binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.apiserver}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,ServiceAccount,PodSecurity,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=false",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_args(self) -> list[str]:
        p = self.pki
        kubeconfig = str(p / "controller-manager.kubeconfig")
        return [
            str(binaries.kube_binary("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--root-ca-file={p / 'ca.crt'}",
            f"--service-account-private-key-file={p / 'sa.key'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        kubeconfig = str(self.pki / "scheduler.kubeconfig")
        return [
            str(binaries.kube_binary("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            "--leader-elect=false",
            "--v=1",
        ]

    def _kwok_args(self) -> list[str]:
        stages = binaries.kwok_stages()
        configs = [f"--config={stages / s}" for s in KWOK_STAGES]
        return [
            str(binaries.kube_binary("kwok")),
            f"--kubeconfig={self.pki / 'kwok.kubeconfig'}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
            "--node-ip=127.0.0.1",
            "--cidr=10.244.0.0/16",
            # Node heartbeats go through Leases; without them the node lifecycle
            # controller sees stale nodes, marks them NotReady and their pods unready.
            "--node-lease-duration-seconds=40",
            *configs,
        ]

    def _launch(
        self, name: str, build_args: Callable[[], list[str]], ports: tuple[str, ...]
    ) -> None:
        assert self.workdir is not None
        component = Component(name, build_args, self.workdir / "logs" / f"{name}.log", ports)
        self._start(component)
        self.components.append(component)

    def _start(self, component: Component) -> None:
        component.log_offset = log_size(component.log)
        component.launches += 1
        with component.log.open("ab") as out:
            component.process = subprocess.Popen(
                component.build_args(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=None if self.detached else die_with_parent,
            )

    def _restart_on_fresh_ports(self, component: Component) -> bool:
        """Start ``component`` again on newly picked ports if it exited because another
        process took one of its ports first (ports the caller fixed stay fixed). Moving
        is safe: a component that did not bind has not been waited for, and what
        names its port (the API server's etcd URL, the kubeconfigs) starts only after."""
        names = tuple(n for n in component.ports if n in self._picked_ports)
        ports = [getattr(self.ports, n) for n in names]
        if component.launches >= PORT_ATTEMPTS or not lost_port_race(
            component.log, component.log_offset, ports
        ):
            return False
        self.ports.pick_again(names)
        if "apiserver" in names:
            self._write_kubeconfigs()
        self._start(component)
        return True

    def _wait_for(self, what: str, ready: Any, deadline: float) -> None:
        while time.monotonic() < deadline:
            for component in self.components:
                if component.process is not None and component.process.poll() is not None:
                    if self._restart_on_fresh_ports(component):
                        continue
                    raise ClusterError(
                        f"{component.name} exited with code {component.process.returncode} "
                        f"while waiting for {what}; its log ({component.log}) ends with:\n"
                        f"{component.tail()}"
                    )
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                if ready():
                    return
            time.sleep(0.2)
        raise ClusterError(f"timed out waiting for {what}; logs are in {self.workdir}/logs")

    def _all_listen(self) -> bool:
        return all(
            c.process is not None and listens(c.process.pid, getattr(self.ports, port))
            for c in self.components
            for port in c.ports
        )

    def _etcd_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.ports.etcd_client}/health"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(json.loads(response.read()).get("health") == "true")

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.admin_cert_file), str(self.admin_key_file))
        return context

    def _get(self, path: str) -> int:
        request = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(request, context=self._ssl_context(), timeout=3) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def _api_json(self, path: str) -> Any:
        request = urllib.request.Request(self.server + path)
        with urllib.request.urlopen(request, context=self._ssl_context(), timeout=5) as r:
            return json.loads(r.read())

    def _create_nodes(self) -> None:
        documents = [_kwok_node(f"kwok-node-{i}", self.pods_per_node) for i in range(self.nodes)]
        self.apply(documents)

    def _nodes_ready(self) -> bool:
        nodes = self._api_json("/api/v1/nodes")["items"]
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) >= self.nodes

    def _default_service_account(self) -> bool:
        return self._get("/api/v1/namespaces/default/serviceaccounts/default") == 200

    def _write_state(self) -> None:
        assert self.workdir is not None
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": [
                {"name": c.name, "pid": c.process.pid} for c in self.components if c.process
            ],
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))


def _kwok_node(name: str, pods: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": str(pods)},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": str(pods)},
        },
    }


def run_kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    kubectl = binaries.wheel_binary("kubectl")
    proc = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def install_crds(kubeconfig: Path, crd_dir: Path, timeout: float = 60) -> None:
    """Apply the CRD kustomization in ``crd_dir`` and wait until all are Established."""
    run_kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-k", str(crd_dir))
    names = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())["resources"]
    crds = [f"crd/{name.removesuffix('.yaml')}" for name in names]
    run_kubectl(
        kubeconfig, "wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *crds
    )


def stop_detached(workdir: Path) -> list[str]:
    """Stop a cluster started with ``detached=True`` (``armyctl cluster down``)."""
    state_file = workdir / "state.json"
    stopped: list[str] = []
    if state_file.exists():
        state = json.loads(state_file.read_text())
        for entry in reversed(state["processes"]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry["pid"], signal.SIGTERM)
                stopped.append(entry["name"])
        deadline = time.monotonic() + 10
        for entry in state["processes"]:
            while _alive(entry["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(entry["pid"], signal.SIGKILL)
    shutil.rmtree(workdir, ignore_errors=True)
    return stopped


def remove_stale_workdirs() -> None:
    """Remove temp workdirs whose owning process is gone (it was SIGKILLed, so its
    children died with it but nobody removed the files)."""
    for workdir in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((workdir / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(workdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "BinaryError",
    "ClusterError",
    "DevCluster",
    "ExistingCluster",
    "run_kubectl",
    "stop_detached",
]
