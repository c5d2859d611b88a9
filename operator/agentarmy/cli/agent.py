"""armyctl agent: run one agent runtime (configured by AGENTARMY_* env)."""

from __future__ import annotations

import argparse
import os

from agentarmy.api import runtime_env
from agentarmy.api.common import parse_duration


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "agent",
        help="run an agent: register, claim, run skills, report (configured by AGENTARMY_* env)",
    )
    parser.add_argument(
        "--drain-timeout",
        default="25s",
        help="on SIGTERM, how long running tasks may finish before their leases are released",
    )
    parser.add_argument("--log-level", default=os.environ.get("AGENTARMY_LOG_LEVEL", "INFO"))
    parser.set_defaults(handler=_run_agent)


def _run_agent(args: argparse.Namespace) -> int:
    from agentarmy.agent.runtime import run_from_environment
    from agentarmy.logs import configure_json_logging

    configure_json_logging(args.log_level)
    if not os.environ.get(runtime_env.ROUTER_URL):
        print(f"armyctl agent: set {runtime_env.ROUTER_URL} (and the other AGENTARMY_* variables)")
        return 2
    return run_from_environment(dict(os.environ), drain_seconds=parse_duration(args.drain_timeout))
