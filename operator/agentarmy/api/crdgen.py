"""Generate CustomResourceDefinitions from the pydantic models.

pydantic emits JSON Schema 2020-12; the API server wants a *structural*
OpenAPI v3 schema: no $ref, no anyOf for optional fields, no titles, boolean
exclusive bounds, and int-or-string marked with its extension. This module
does that translation and nothing else. Run ``armyctl crds`` (or
``python -m agentarmy.api.crdgen``) to rewrite ``crds/``, the chart's copy and
``docs/reference.md`` (agentarmy.api.docgen).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from agentarmy.api.resources import CATEGORY, RESOURCES, Resource

Schema = dict[str, Any]

_DROP_KEYS = {"title", "examples", "$schema", "propertyNames"}


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].split("/")[-1]])
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        target.update(extra)
        return _resolve(target, defs)
    return schema


def _without_null(options: list[Schema]) -> list[Schema]:
    return [o for o in options if o.get("type") != "null"]


def structural(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Translate one pydantic JSON schema node into a structural OpenAPI v3 node."""
    schema = _resolve(schema, defs)
    if schema.get("x-kubernetes-int-or-string"):
        return {
            k: v
            for k, v in schema.items()
            if k not in ("anyOf", "title", "examples") and not (k == "default" and v is None)
        }
    if "anyOf" in schema:
        options = _without_null(schema["anyOf"])
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {schema['anyOf']} structurally")
        merged = {k: v for k, v in schema.items() if k != "anyOf"}
        inner = structural(options[0], defs)
        inner.update({k: v for k, v in merged.items() if k not in _DROP_KEYS})
        if inner.get("default", 0) is None:
            del inner["default"]
        return _clean(inner, defs)
    return _clean(schema, defs)


def _clean(schema: Schema, defs: dict[str, Schema]) -> Schema:
    node: Schema = {}
    for key, value in schema.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "properties":
            node["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            node["items"] = structural(value, defs)
        elif key == "patternProperties":
            # Structural schemas have no patternProperties: keep the value schema and
            # check the keys with CEL instead.
            ((pattern, value_schema),) = value.items()
            node["additionalProperties"] = structural(value_schema, defs)
            node.setdefault("x-kubernetes-validations", []).append(
                {
                    "rule": f"self.all(k, k.matches({pattern!r}))",
                    "message": f"every key must match {pattern}",
                }
            )
        elif key == "additionalProperties":
            if value is False:
                continue  # unknown fields are pruned by the API server anyway
            node["additionalProperties"] = (
                structural(value, defs) if isinstance(value, dict) else value
            )
        elif key == "exclusiveMinimum":
            node["minimum"], node["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            node["maximum"], node["exclusiveMaximum"] = value, True
        elif key == "const":
            node["enum"] = [value]
        elif (key == "default" and value is None) or (
            key in ("minItems", "maxItems") and schema.get("type") != "array"
        ):
            continue
        else:
            node[key] = value
    if (
        node.get("type") == "object"
        and "properties" not in node
        and "additionalProperties" not in node
    ):
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    return node


def _model_schema(resource: Resource, part: str) -> Schema:
    model = resource.spec if part == "spec" else resource.status
    raw = model.model_json_schema(mode="validation", by_alias=True)
    defs = raw.pop("$defs", {})
    return structural(raw, defs)


def openapi_schema(resource: Resource) -> Schema:
    spec = _model_schema(resource, "spec")
    status = _model_schema(resource, "status")
    status.pop("required", None)
    schema: Schema = {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if resource.object_rules:
        schema["x-kubernetes-validations"] = [dict(rule) for rule in resource.object_rules]
    return schema


def crd(resource: Resource) -> Schema:
    subresources: Schema = {"status": {}}
    if resource.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {"app.kubernetes.io/part-of": "agentarmy"},
        },
        "spec": {
            "group": resource.group,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": resource.version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                    "subresources": subresources,
                    "additionalPrinterColumns": [c.to_crd() for c in resource.columns],
                }
            ],
        },
    }


HEADER = "# Generated by `armyctl crds` from agentarmy.api; do not edit by hand.\n"


def render(resource: Resource) -> str:
    return HEADER + yaml.safe_dump(crd(resource), sort_keys=False, width=100)


def default_output() -> Path:
    return Path(__file__).resolve().parents[3] / "crds"


def helm_chart_crds() -> Path:
    """A generated copy the chart renders as templates (templates/crds.yaml), so
    `helm upgrade` updates the CRDs, which Helm never does for a chart's crds/ folder."""
    return Path(__file__).resolve().parents[3] / "helm" / "agentarmy" / "files" / "crds"


def render_kustomization() -> str:
    """crds/ as a kustomization, so manifests/base can include the directory."""
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{r.crd_name}.yaml" for r in RESOURCES],
    }
    return HEADER + yaml.safe_dump(body, sort_keys=False)


def _write_crds(output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for resource in RESOURCES:
        path = output / f"{resource.crd_name}.yaml"
        path.write_text(render(resource))
        written.append(path)
    return written


def write(output: Path) -> list[Path]:
    """The CRDs and their kustomization (what `kubectl apply -k crds` installs)."""
    written = _write_crds(output)
    kustomization = output / "kustomization.yaml"
    kustomization.write_text(render_kustomization())
    return [*written, kustomization]


def write_helm_copies(output: Path) -> list[Path]:
    return _write_crds(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the CRDs from the models.")
    parser.add_argument("--output", type=Path, default=default_output())
    args = parser.parse_args(argv)
    for path in write(args.output) + write_helm_copies(helm_chart_crds()):
        print(f"wrote {path}")
    # The field reference is made of the same schemas (docgen imports this module).
    from agentarmy.api import docgen

    print(f"wrote {docgen.write(docgen.default_output())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
