"""How every armyctl command that shows something prints it: one ``-o/--output`` flag.

Without it: a table (columns padded like ``kubectl get``) or a short sentence.
``-o json`` and ``-o yaml``: the whole object as the router or the API server
returned it, for scripts. ``-o wide``: the table with its optional columns, on
commands whose table has some.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel

JSON = "json"
YAML = "yaml"
WIDE = "wide"

Shown = BaseModel | Mapping[str, Any]


def add_output_flag(parser: argparse.ArgumentParser, *, wide: bool = False) -> None:
    """``-o/--output json|yaml``, and ``wide`` where the command's table has optional columns."""
    choices = [JSON, YAML, WIDE] if wide else [JSON, YAML]
    more = "; wide: the table with more columns" if wide else ""
    parser.add_argument(
        "-o",
        "--output",
        choices=choices,
        default=None,
        help=f"json or yaml: the whole object{more} (default: a table or a sentence)",
    )


def structured(output: str | None) -> bool:
    """True for json and yaml: the object is printed, not a table or a sentence."""
    return output in (JSON, YAML)


def show(output: str | None, shown: Shown, render: Callable[[bool], str]) -> None:
    """Print ``shown`` as json or yaml, else what ``render(wide)`` makes of it."""
    if output == JSON:
        print(_json(shown))
    elif output == YAML:
        print(yaml.safe_dump(_plain(shown), sort_keys=False).rstrip())
    else:
        print(render(output == WIDE))


def table(
    rows: Sequence[Sequence[str]], wide_columns: Collection[str] = (), wide: bool = False
) -> str:
    """Rows (the first one is the header) as padded columns; the columns whose header is
    in ``wide_columns`` only when ``wide``."""
    keep = [i for i, header in enumerate(rows[0]) if wide or header not in wide_columns]
    cells = [[row[i] for i in keep] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keep))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _json(shown: Shown) -> str:
    if isinstance(shown, BaseModel):
        return shown.model_dump_json(indent=2)
    return json.dumps(shown, indent=2, default=str)


def _plain(shown: Shown) -> Any:
    """JSON-able data: what json would print, so both formats show the same fields."""
    return json.loads(_json(shown))
