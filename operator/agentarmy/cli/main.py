"""armyctl: one command line for the cluster, the CRDs, the router and agents.

Each command group lives in its own module and registers itself here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from agentarmy.cli import (
    agent,
    cluster,
    crds,
    governance,
    operator,
    rollout,
    router,
    routing,
    tasks,
)

Registrar = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]

COMMAND_GROUPS: list[Registrar] = [
    cluster.register,
    crds.register,
    operator.register,
    router.register,
    agent.register,
    tasks.register,
    governance.register,
    rollout.register,
    routing.register,
]


def installed_version() -> str:
    """The agentarmy distribution's version (what an image or a venv really holds)."""
    try:
        return version("agentarmy")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="armyctl", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"armyctl {installed_version()} (agentarmy)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
