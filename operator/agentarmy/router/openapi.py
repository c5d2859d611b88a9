"""The OpenAPI 3.1 document, generated from the endpoint table and the pydantic wire models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from agentarmy.api import wire
from agentarmy.router.endpoints import PATH_PARAMS, Endpoint

REF = "#/components/schemas/{model}"
ERRORS = {
    "400": "Bad input; the message names the field",
    "401": "Missing or unknown bearer token",
    "403": "The token may not do this",
    "404": "No such task, agent or route",
    "409": "Stale fencing token, or the agent is draining",
    "413": "Request body too large",
    "429": "A runtime rule refused it (rate limit, token budget); see Retry-After",
    "503": "The router or its store cannot answer now; retry",
}


def build(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(wire.ErrorResponse, "serialization")]
    for endpoint in endpoints:
        models.append((endpoint.response, "serialization"))
        if endpoint.request is not None:
            models.append((endpoint.request, "validation"))
    refs, definitions = models_json_schema(models, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation = _operation(endpoint, refs)
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentarmy router",
            "version": "v1",
            "description": "Tasks in, results out: durable, leased, fenced. See docs/router.md.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _operation(endpoint: Endpoint, refs: dict[tuple[Any, Any], Any]) -> dict[str, Any]:
    response_ref = refs[(endpoint.response, "serialization")]
    ok = {"description": "OK", "content": {"application/json": {"schema": response_ref}}}
    responses: dict[str, Any] = {str(endpoint.status): ok}
    if endpoint.status == 201:
        responses["200"] = {"description": "Already known (same idempotency key)", **ok}
    error_ref = refs[(wire.ErrorResponse, "serialization")]
    for status, description in ERRORS.items():
        responses[status] = {
            "description": description,
            "content": {"application/json": {"schema": error_ref}},
        }
    operation: dict[str, Any] = {
        "operationId": endpoint.handler.__name__,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "responses": responses,
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name].schema()}
        for name in re.findall(r"{(\w+)}", endpoint.path)
    ]
    parameters += [
        {
            "name": q.name,
            "in": "query",
            "required": False,
            "schema": q.schema,
            "description": q.description,
        }
        for q in endpoint.query
    ]
    if parameters:
        operation["parameters"] = parameters
    if endpoint.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(endpoint.request, "validation")]}},
        }
    return operation
