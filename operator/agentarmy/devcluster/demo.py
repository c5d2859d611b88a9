"""The local demo: a real control plane with the CRDs and an example fleet.

Later stages add the operator, the router and tasks flowing; this module is
what `hack/demo` runs.
"""

from __future__ import annotations

import sys

from agentarmy.cli.main import main as armyctl


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    armyctl(["cluster", "down", "--name", "demo"])
    return armyctl(["cluster", "up", "--name", "demo", *args])


if __name__ == "__main__":
    sys.exit(main())
