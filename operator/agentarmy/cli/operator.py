"""armyctl operator: run the operator (the image's entrypoint does the same)."""

from __future__ import annotations

import argparse

from agentarmy.operator import main as operator_main


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "operator",
        help="run the operator (settings from AGENTARMY_* environment variables)",
    )
    parser.set_defaults(handler=lambda _args: operator_main.main())
