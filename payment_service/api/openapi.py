"""The OpenAPI 3.1 document (served at /openapi.json) and the interactive docs at /docs.

Request and response bodies are described by the same pydantic models that validate them
(api/schemas.py), so the document cannot drift from what the code accepts. Paths are declared
here, next to each other; a test checks that every route of the app is documented and that
every documented path exists.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, jsonify, send_from_directory
from pydantic import BaseModel

bp = Blueprint("openapi", __name__)

# Swagger UI 5's files (it reads OpenAPI 3.1), from the flask-openapi3-swagger package. Only its
# files are used: find_spec does not import the plugin module, which would need flask-openapi3's app.
_SPEC = importlib.util.find_spec("flask_openapi3_swagger")
SWAGGER_UI_DIR = Path(next(iter(_SPEC.submodule_search_locations or []))) / "templates" / "swagger" if _SPEC else None

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail", "code", "errors"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "examples": ["validation_failed", "card_data_not_accepted"]},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_models: dict[str, type[BaseModel]] = {}
_paths: dict[str, dict[str, Any]] = {}


def problem_ref(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def model_ref(model: type[BaseModel]) -> dict[str, Any]:
    _models[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": model_ref(model)}}}


def document(path: str, method: str, operation: dict[str, Any]) -> None:
    """Declare one operation. `path` uses OpenAPI's {param} form."""
    _paths.setdefault(path, {})[method.lower()] = operation


def spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    for name, model in sorted(_models.items()):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas[def_name] = definition
        schemas[name] = schema
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "payment-service",
            "version": "1.0.0",
            "description": "Wallet top-ups by card through Stripe and Razorpay, 3-D Secure, refunds, withdrawals. "
            "Money is an integer in the currency's minor unit. Errors are application/problem+json.",
        },
        "paths": dict(sorted(_paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "userJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "stripeSignature": {"type": "apiKey", "in": "header", "name": "Stripe-Signature"},
                "razorpaySignature": {"type": "apiKey", "in": "header", "name": "X-Razorpay-Signature"},
            },
        },
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(spec())


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>payment-service API</title>
<link rel="stylesheet" href="/docs/static/css/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/js/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>"""


@bp.get("/docs")
def docs() -> Response:
    # Swagger UI's files come from the swagger-ui-bundle package: the page works offline.
    return Response(DOCS_PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:filename>")
def docs_static(filename: str) -> Response:
    if SWAGGER_UI_DIR is None:
        abort(404)
    return send_from_directory(SWAGGER_UI_DIR, filename, max_age=3600)


_text = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
document("/healthz", "get", {"summary": "Liveness: the process is up", "tags": ["operations"],
                             "responses": {"200": {"description": "alive"}}})
document("/readyz", "get", {
    "summary": "Readiness: database reachable, migrations at head, broker reachable",
    "tags": ["operations"],
    "responses": {"200": {"description": "ready"}, "503": problem_ref("a dependency is not ready; `errors` names it")},
})
document("/metrics", "get", {"summary": "Prometheus metrics", "tags": ["operations"], "responses": {"200": _text}})
document("/openapi.json", "get", {"summary": "This document", "tags": ["operations"],
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}})
document("/docs", "get", {"summary": "Interactive API documentation", "tags": ["operations"],
                          "responses": {"200": {"description": "HTML"}}})
