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

from ..services.api_keys import SIGNED_METHODS
from .routing import document_path_ids
from .schemas import Health, Readiness

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
    paths = dict(sorted(_paths.items()))
    document_path_ids(paths)
    _document_body_refusals(paths)
    _document_signing(paths)
    _document_cursors(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "payment-service",
            "version": "1.0.0",
            "description": "Wallet top-ups by card through Stripe and Razorpay, 3-D Secure, refunds, withdrawals. "
            "Money is an integer in the currency's minor unit. Errors are application/problem+json.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "userJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                # Signed requests (issue 12): sent with X-API-Key on every mutation of a client that requires it.
                "requestSignature": {
                    "type": "apiKey", "in": "header", "name": "X-Signature",
                    "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 with the client's signing secret over "
                    "\"<t>.<METHOD>.<path with query>.<raw body>\">; 300 s tolerance, each signature accepted once. "
                    "Required on POST/PUT/PATCH/DELETE from a client set to require signing; otherwise 401 with "
                    "code signature_required, signature_invalid, signature_expired or signature_replayed "
                    "(docs/auth.md).",
                },
            },
        },
    }


def _document_body_refusals(paths: dict[str, dict[str, Any]]) -> None:
    """Every operation that takes a JSON body refuses, before its view runs (api/parsing.py), a body
    that is not JSON (400 malformed_json) or not sent as application/json (415)."""
    for operations in paths.values():
        for operation in operations.values():
            if "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            responses.setdefault("400", problem_ref("malformed_json: the body is not valid JSON"))
            if "webhooks" not in operation.get("tags", []):  # a webhook body is checked by its signature
                responses.setdefault("415", problem_ref("unsupported_media_type: send the body as application/json"))


SIGNED = frozenset(m.lower() for m in SIGNED_METHODS)  # what a client set to sign must sign
SIGNED_CLIENT: dict[str, list[str]] = {"apiKey": [], "requestSignature": []}


def _document_signing(paths: dict[str, dict[str, Any]]) -> None:
    """A service client may be set to sign its mutations (docs/auth.md, "Signed requests"): every
    POST, PUT, PATCH or DELETE a client may call then takes X-API-Key together with X-Signature.
    OpenAPI says so as one more way to authenticate: both schemes at once."""
    for method_ops in paths.values():
        for method, operation in method_ops.items():
            security = operation.get("security", [])
            if method in SIGNED and {"apiKey": []} in security and SIGNED_CLIENT not in security:
                security.append(dict(SIGNED_CLIENT))


CURSOR_SCHEMA: dict[str, Any] = {"type": "string", "pattern": "^[A-Za-z0-9_-]{0,512}$"}


def _document_cursors(paths: dict[str, dict[str, Any]]) -> None:
    """A `cursor` is opaque (base64url): the `next_cursor` of the page before. Any other value is
    refused with 422 `validation_failed`, field `cursor`."""
    for operations in paths.values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and parameter.get("name") == "cursor":
                    parameter["schema"] = dict(CURSOR_SCHEMA)
                    parameter["description"] = ("opaque: the next_cursor of the page before (empty: the first page); a "
                                                "value this API did "
                                                "not return is refused (422, field cursor)")
                    operation.setdefault("responses", {}).setdefault(
                        "422", problem_ref("validation_failed: a bad query parameter (`errors` names it)"))


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
                             "responses": {"200": json_body(Health, "alive")}})
document("/readyz", "get", {
    "summary": "Readiness: database reachable, migrations at head (not the broker, not the gateways)",
    "tags": ["operations"],
    "responses": {"200": json_body(Readiness, "ready"),
                  "503": problem_ref("a dependency is not ready; `errors` names it")},
})
document("/metrics", "get", {"summary": "Prometheus metrics", "tags": ["operations"], "responses": {"200": _text}})
document("/openapi.json", "get", {"summary": "This document", "tags": ["operations"],
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}})
document("/docs", "get", {"summary": "Interactive API documentation", "tags": ["operations"],
                          "responses": {"200": {"description": "HTML"}}})
