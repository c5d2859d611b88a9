"""The user docs stay true to the code: the field reference is a fresh render of the
models, every condition reason has a troubleshooting entry, and the commands, chart
values, names, files and links the pages use exist."""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.api import conditions, crdgen, docgen
from agentarmy.api.fleet import Canary
from agentarmy.api.resources import FLEET, RESOURCES, Resource
from agentarmy.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
REFERENCE = DOCS / "reference.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
OUR_PAGES = (REFERENCE, TROUBLESHOOTING, DOCS / "kind.md", DOCS / "decisions.md")
COMMAND_PAGES = (DOCS / "kind.md", TROUBLESHOOTING)
SEPARATORS = {"|", "||", "&&", ";", "&"}


# -- the field reference ---------------------------------------------------------------


def test_reference_is_fresh() -> None:
    assert REFERENCE.read_text() == docgen.render(), (
        "docs/reference.md is stale: run `armyctl crds` (or `python -m agentarmy.api.docgen`) "
        "and commit the result"
    )


def _cells(line: str) -> list[str]:
    """A markdown table row's cells (an escaped pipe stays inside its cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(text: str) -> list[list[str]]:
    tables: list[list[str]] = []
    current: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.mark.parametrize("page", OUR_PAGES, ids=lambda p: p.name)
def test_every_table_row_has_as_many_cells_as_its_header(page: Path) -> None:
    for table in _tables(page.read_text()):
        width = len(_cells(table[0]))
        ragged = [row for row in table if len(_cells(row)) != width]
        assert ragged == [], f"{page.name}: rows with other than {width} cells: {ragged}"


def _rows(text: str) -> dict[str, list[str]]:
    """Reference rows by field path (the first cell, without its backticks)."""
    return {
        cells[0].strip("`"): cells
        for table in _tables(text)
        for cells in map(_cells, table[2:])
        if cells and cells[0].startswith("`")
    }


def test_a_field_row_shows_type_default_bounds_and_description() -> None:
    rows = _rows(docgen.render())
    _, kind, default, bounds, description = rows["spec.strategy.canary.maxErrorRate"]
    assert (kind, default, bounds) == ("number", f"`{Canary().maxErrorRate}`", "0..1")
    assert description == Canary.model_fields["maxErrorRate"].description


def test_factory_defaults_are_shown_though_the_crd_has_none() -> None:
    canary_schema = crdgen.openapi_schema(FLEET)["properties"]["spec"]["properties"]["strategy"]
    assert "default" not in canary_schema["properties"]["canary"]["properties"]["steps"]
    steps = [step.model_dump() for step in Canary().steps]
    shown = _rows(docgen.render())["spec.strategy.canary.steps"][2]
    assert json.loads(shown.strip("`")) == steps


def test_enum_pattern_and_list_rules_are_rendered() -> None:
    rows = _rows(docgen.render())
    assert "one of `RollingUpdate`, `Canary`" in rows["spec.strategy.type"][3]
    assert "a duration such as" in rows["spec.timeout"][3]  # a named pattern
    env = rows["spec.env"][3]
    assert "unique by name" in env and "set exactly one of value or valueFrom" in env
    assert "required" in rows["spec.capabilities"][3]
    # a map's key check reads like the other patterns, not as crdgen's CEL message
    assert rows["spec.skills"][3].startswith("each key: pattern `^[a-z0-9]")
    assert "every key must match" not in docgen.render()


def test_a_fleets_template_spec_links_to_the_agent_spec() -> None:
    rows = _rows(docgen.render())
    assert rows["spec.template.spec"][1] == "[Agent spec](#agent-spec)"
    assert not any(path.startswith("spec.template.spec.") for path in rows)


def _schema_paths(node: dict[str, Any], path: str) -> list[str]:
    found: list[str] = []
    for name, child in node.get("properties", {}).items():
        found.append(f"{path}.{name}")
        found += _schema_paths(child, f"{path}.{name}")
        if isinstance(child.get("items"), dict):
            found += _schema_paths(child["items"], f"{path}.{name}[]")
        if isinstance(child.get("additionalProperties"), dict):
            found += _schema_paths(child["additionalProperties"], f"{path}.{name}.<key>")
    return found


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_every_crd_field_has_a_row(resource: Resource) -> None:
    """Walked from the CRD itself, not from docgen's rows: nothing is skipped."""
    text = docgen.render()
    section = text.split(f"\n## {resource.kind}\n", 1)[1].split("\n## ", 1)[0]
    rows = _rows(section)
    agent_rows = _rows(text.split("\n## Agent\n", 1)[1].split("\n## ", 1)[0])
    schema = crdgen.openapi_schema(resource)
    missing = []
    for part in ("spec", "status"):
        for path in _schema_paths(schema["properties"][part], part):
            linked = path.split("spec.template.spec.", 1)
            if len(linked) == 2 and resource.kind == "Fleet":
                if f"spec.{linked[1]}" not in agent_rows:
                    missing.append(path)
            elif path not in rows:
                missing.append(path)
    assert missing == []


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_printer_columns_and_short_names_are_listed(resource: Resource) -> None:
    section = docgen.render().split(f"\n## {resource.kind}\n", 1)[1].split("\n## ", 1)[0]
    for name in resource.short_names:
        assert f"`{name}`" in section
    for column in resource.columns:
        shown = "`-o wide`" if column.priority else "always"
        assert f"| {column.name} | `{column.json_path}` | {column.type} | {shown} |" in section


# -- troubleshooting -----------------------------------------------------------------------


def condition_names() -> dict[str, str]:
    """Every condition type and reason named in agentarmy.api.conditions."""
    names: dict[str, str] = {}
    for attr, value in vars(conditions).items():
        if not attr.isupper():
            continue
        if isinstance(value, str):
            names[attr] = value
        elif isinstance(value, dict):
            names.update({f"{attr}[{key}]": str(v) for key, v in value.items()})
    return names


def test_conditions_module_is_read() -> None:
    names = condition_names()
    assert names["FLEET_NOT_FOUND"] == "FleetNotFound"
    assert names["HALTED_BY_RULE[maxErrorRate]"] == "ErrorRateAboveBound"


def test_troubleshooting_has_an_entry_for_every_condition_name() -> None:
    text = TROUBLESHOOTING.read_text()
    entries = {_cells(row)[0] for table in _tables(text) for row in table[2:]}
    types = text.split("\n## Condition types\n", 1)[1].split("\n## ", 1)[0]
    missing = [
        f"{attr} = {value!r}"
        for attr, value in condition_names().items()
        if f"`{value}`" not in entries and f"`{value}`" not in types
    ]
    assert missing == [], (
        "docs/troubleshooting.md has no row for these names from "
        "agentarmy/api/conditions.py: add one saying what it means and what to do"
    )


# -- commands, values, names and files the pages use ----------------------------------------


def shell_lines(page: Path) -> list[str]:
    """The lines of a page's ```sh blocks, continuation lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", page.read_text(), flags=re.M | re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def inline_commands(page: Path, program: str) -> list[str]:
    """Inline code spans that are a call of ``program`` (in prose and tables)."""
    spans = re.findall(r"`([^`\n]+)`", _without_fences(page.read_text()))
    return [span for span in spans if span.startswith(f"{program} ")]


def _without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def commands(page: Path, program: str) -> list[tuple[str, list[str]]]:
    """(line, argv after the program) for every call of ``program`` the page shows."""
    found: list[tuple[str, list[str]]] = []
    for line in shell_lines(page) + inline_commands(page, program):
        tokens = shlex.split(line, comments=True)
        for i, token in enumerate(tokens):
            if Path(token).name == program:
                argv = tokens[i + 1 :]
                end = next((j for j, t in enumerate(argv) if t in SEPARATORS), len(argv))
                found.append((line, argv[:end]))
    return found


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: p.name)
def test_every_armyctl_command_parses(page: Path) -> None:
    calls = commands(page, "armyctl")
    assert calls, f"{page.name} shows no armyctl command"
    parser = build_parser()
    for line, argv in calls:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page.name}: armyctl does not accept: {line}")


def flag_values(argv: list[str], flag: str) -> list[str]:
    """The values given to ``flag`` (written as ``flag value``) in argv."""
    return [value for name, value in itertools.pairwise(argv) if name == flag]


def _values_has(values: dict[str, Any], key: str) -> bool:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_helm_value_and_chart_exists() -> None:
    values = yaml.safe_load((REPO / "helm" / "agentarmy" / "values.yaml").read_text())
    calls = commands(DOCS / "kind.md", "helm")
    assert calls
    for line, argv in calls:
        for value in flag_values(argv, "--set"):
            for key in (part.split("=", 1)[0] for part in value.split(",")):
                assert _values_has(values, key), f"no value {key} in the chart: {line}"
        if argv[:1] in (["install"], ["upgrade"]) and len(argv) > 2:  # not prose's `helm install`
            assert (REPO / argv[2] / "Chart.yaml").exists(), line


def chart_objects() -> set[tuple[str, str]]:
    """(kind, name) of what the chart's templates make."""
    found = set()
    for template in (REPO / "helm" / "agentarmy" / "templates").glob("*.yaml"):
        for document in template.read_text().split("\n---"):
            kind = re.search(r"^kind: (\w+)", document, flags=re.M)
            name = re.search(r"^  name: ([\w.-]+)$", document, flags=re.M)
            if kind and name:
                found.add((kind.group(1), name.group(1)))
    return found


KUBECTL_KINDS = {"deploy": "Deployment", "deployment": "Deployment", "svc": "Service"}


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: p.name)
def test_kubectl_names_the_charts_objects_and_existing_files(page: Path) -> None:
    objects = chart_objects()
    assert ("Service", "agentarmy-router") in objects  # the scan itself works
    for line, argv in commands(page, "kubectl"):
        for token in argv:
            kind, _, name = token.partition("/")
            if kind in KUBECTL_KINDS and name.startswith("agentarmy-"):
                assert (KUBECTL_KINDS[kind], name) in objects, f"the chart makes no {token}: {line}"
        for value in flag_values(argv, "-f"):
            if not value.startswith("http"):
                assert (REPO / value).exists(), f"{value} does not exist: {line}"


def test_the_image_build_commands_name_real_files() -> None:
    calls = commands(DOCS / "kind.md", "docker")
    assert calls, "kind.md shows no docker build"
    for line, argv in calls:
        for value in flag_values(argv, "-f"):
            assert (REPO / value).exists(), line
    assert any("hack/build-image" in line for line in shell_lines(DOCS / "kind.md"))
    assert (REPO / "hack" / "build-image").exists()


@pytest.mark.parametrize("page", OUR_PAGES, ids=lambda p: p.name)
def test_environment_variables_named_exist_in_the_code(page: Path) -> None:
    code = "\n".join(
        p.read_text()
        for root in (REPO / "operator" / "agentarmy", REPO / "helm" / "agentarmy" / "templates")
        for p in root.rglob("*")
        if p.suffix in (".py", ".yaml", ".tpl")
    )
    unknown = sorted(
        {name for name in re.findall(r"AGENTARMY_[A-Z_]+", page.read_text()) if name not in code}
    )
    assert unknown == []


# -- links ------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = _without_fences(page.read_text())
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", [*OUR_PAGES, REPO / "README.md"], ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    prose = re.sub(r"`[^`\n]*`", "", _without_fences(page.read_text()))
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists() or (
            anchor and linked.suffix == ".md" and anchor not in anchors(linked)
        ):
            broken.append(target)
    assert broken == []


def test_readme_links_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text()
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if f"(docs/{p.name})" not in readme]
    assert unlinked == []
