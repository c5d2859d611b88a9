"""The committed CRDs are exactly what the models generate, and structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.api import crdgen
from agentarmy.api.resources import RESOURCES

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_committed_crd_is_fresh(resource: Any) -> None:
    committed = (CRD_DIR / f"{resource.crd_name}.yaml").read_text()
    assert committed == crdgen.render(resource), (
        f"crds/{resource.crd_name}.yaml is stale: run `armyctl crds` and commit the result"
    )


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_helm_chart_crd_is_fresh(resource: Any) -> None:
    committed = (crdgen.helm_chart_crds() / f"{resource.crd_name}.yaml").read_text()
    stale = "helm/agentarmy/files/crds is stale: run `armyctl crds`"
    assert committed == crdgen.render(resource), stale


def test_no_stray_crd_files() -> None:
    expected = {f"{r.crd_name}.yaml" for r in RESOURCES} | {"kustomization.yaml"}
    assert {p.name for p in CRD_DIR.glob("*.yaml")} == expected


def test_committed_kustomization_is_fresh() -> None:
    assert (CRD_DIR / "kustomization.yaml").read_text() == crdgen.render_kustomization()


def _walk(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, key) whose key a structural schema forbids."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in (
                "$ref",
                "$defs",
                "anyOf",
                "oneOf",
                "allOf",
                "title",
                "patternProperties",
                "const",
            ) and not node.get("x-kubernetes-int-or-string"):
                found.append((path, key))
            if key in ("properties", "additionalProperties", "items"):
                children = value.items() if key == "properties" else [(key, value)]
                for name, child in children:
                    found += _walk(child, f"{path}.{name}")
            if isinstance(value, dict) and key not in ("properties",):
                continue
    return found


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_schema_is_structural(resource: Any) -> None:
    schema = crdgen.openapi_schema(resource)
    assert _walk(schema) == []
    yaml.safe_dump(schema)  # serialisable


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_every_field_is_documented(resource: Any) -> None:
    undocumented: list[str] = []

    def visit(node: dict[str, Any], path: str) -> None:
        for name, child in node.get("properties", {}).items():
            if "description" not in child:
                undocumented.append(f"{path}.{name}")
            visit(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                visit(node[key], f"{path}[]")

    schema = crdgen.openapi_schema(resource)
    for part in ("spec", "status"):
        visit(schema["properties"][part], part)
    assert undocumented == []


def test_fleet_has_scale_subresource() -> None:
    fleet = next(r for r in RESOURCES if r.kind == "Fleet")
    version = crdgen.crd(fleet)["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
