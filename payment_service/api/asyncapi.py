"""`GET /asyncapi.json`: the AsyncAPI 3.0 document of the Kafka events (payment_service/events/asyncapi.json).

Public like /openapi.json: no credential, no rate limit (auth.is_exempt_path). The bytes are the file's.
"""

from __future__ import annotations

from flask import Blueprint, Response

from ..events import asyncapi_bytes
from .openapi import document

bp = Blueprint("asyncapi", __name__)


@bp.get("/asyncapi.json")
def asyncapi_json() -> Response:
    response = Response(asyncapi_bytes(), mimetype="application/json")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


document("/asyncapi.json", "get", {
    "summary": "The AsyncAPI 3.0 document of the Kafka events (topic payment.events)",
    "description": "Channels, operations, one message per event type with a JSON Schema of its CloudEvents "
                   "document and `data`, the Kafka headers and key. See docs/consuming-events.md.",
    "tags": ["operations"],
    "responses": {"200": {"description": "AsyncAPI 3.0.0",
                          "content": {"application/json": {"schema": {"type": "object"}}}}},
})
