"""armyctl crds: regenerate crds/ from the models."""

from __future__ import annotations

import argparse

from agentarmy.api import crdgen


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "crds", help="regenerate the CRD YAML and docs/reference.md from the pydantic models"
    )
    # --dir, not --output: in armyctl -o/--output always names a format.
    parser.add_argument("--dir", default=str(crdgen.default_output()), help="where the CRDs go")
    parser.set_defaults(handler=lambda args: crdgen.main(["--output", args.dir]))
