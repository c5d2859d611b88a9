"""armyctl cluster build|up|down|env: the local control plane for demos and tests."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from agentarmy.api import crdgen
from agentarmy.devcluster import binaries
from agentarmy.devcluster.binaries import BinaryError
from agentarmy.devcluster.cluster import ClusterError, DevCluster, Ports, stop_detached


def default_workdir(name: str) -> Path:
    return binaries.cache_dir() / "clusters" / name


def _fail(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 1


def _component(name: str) -> str:
    if name not in binaries.BUILDERS:
        known = ", ".join(sorted(binaries.BUILDERS))
        raise argparse.ArgumentTypeError(f"unknown component {name!r}: choose from {known}")
    return name


def build(args: argparse.Namespace) -> int:
    components = args.components or sorted(binaries.BUILDERS)
    try:
        built = binaries.ensure(components)
    except BinaryError as err:
        return _fail(err)
    for name in components:
        component, _ = binaries.BUILDERS[name]
        how = "built" if name in built else "cached, checked"
        print(f"{name} {component.version} ({how}): {component.directory}")
    return 0


def up(args: argparse.Namespace) -> int:
    workdir = default_workdir(args.name)
    if (workdir / "state.json").exists():
        return _fail(
            ClusterError(
                f"cluster {args.name!r} is already up (kubeconfig {workdir / 'kubeconfig'}); "
                f"run `armyctl cluster down --name {args.name}` first"
            )
        )
    shutil.rmtree(workdir, ignore_errors=True)  # leftovers of a failed start
    cluster = DevCluster(
        nodes=args.nodes, workdir=workdir, detached=True, ports=Ports(apiserver=args.port)
    )
    started = time.monotonic()
    try:
        cluster.start()
        if not args.no_crds:
            cluster.install_crds(crdgen.default_output())
    except (BinaryError, ClusterError) as err:
        cluster.stop()
        stop_detached(workdir)
        return _fail(err)
    except KeyboardInterrupt:
        cluster.stop()
        stop_detached(workdir)
        return 130
    print(
        f"control plane up in {time.monotonic() - started:.1f}s at {cluster.server} "
        f"with {args.nodes} kwok nodes" + ("" if args.no_crds else " and the agentarmy CRDs")
    )
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print("  kubectl get nodes; kubectl get crds; kubectl get agentarmy -A")
    print(f"  armyctl cluster down --name {args.name}   # stops it")
    return 0


def down(args: argparse.Namespace) -> int:
    workdir = default_workdir(args.name)
    if not workdir.exists():
        print(f"cluster {args.name!r} is not up")
        return 0
    stopped = stop_detached(workdir)
    print(f"stopped {', '.join(stopped) or 'nothing'}; removed {workdir}")
    return 0


def env(args: argparse.Namespace) -> int:
    kubeconfig = default_workdir(args.name) / "kubeconfig"
    if not kubeconfig.exists():
        return _fail(ClusterError(f"cluster {args.name!r} is not up: run `armyctl cluster up`"))
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("cluster", help="local control plane (etcd, apiserver, kwok nodes)")
    commands = parser.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")

    p_build = commands.add_parser("build", help="build the control-plane binaries into the cache")
    # Not `choices`: argparse (3.11) checks a nargs="*" default against them as one value,
    # which made `armyctl cluster build` with no argument an error.
    p_build.add_argument(
        "components",
        nargs="*",
        type=_component,
        metavar="COMPONENT",
        help=f"what to build: {', '.join(sorted(binaries.BUILDERS))} (default: all)",
    )
    p_build.set_defaults(handler=build)

    p_up = commands.add_parser("up", help="start a control plane in the background")
    p_up.add_argument("--name", default="default")
    p_up.add_argument("--nodes", type=int, default=3, help="kwok nodes to simulate")
    p_up.add_argument("--port", type=int, default=0, help="kube-apiserver port (default: free)")
    p_up.add_argument("--no-crds", action="store_true", help="do not install the CRDs")
    p_up.set_defaults(handler=up)

    p_down = commands.add_parser("down", help="stop the control plane and remove its files")
    p_down.add_argument("--name", default="default")
    p_down.set_defaults(handler=down)

    p_env = commands.add_parser("env", help="print the KUBECONFIG export for the shell")
    p_env.add_argument("--name", default="default")
    p_env.set_defaults(handler=env)
