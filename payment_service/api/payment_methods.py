"""Saved payment methods: only the gateway's token reference and card metadata are kept."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from ..domain.events import rfc3339
from ..domain.payments import PaymentMethod
from ..services import payments as payment_service
from . import openapi, parsing, schemas
from .auth import require_user
from .context import container
from .schemas import PaymentMethodList, PaymentMethodOut, PaymentMethodRequest

bp = Blueprint("payment_methods", __name__)


def method_json(m: PaymentMethod) -> dict[str, Any]:
    """The method as the body of a response: validated and dumped by PaymentMethodOut, which documents it."""
    return schemas.body(PaymentMethodOut, _method_fields(m))


def _method_fields(m: PaymentMethod) -> dict[str, Any]:
    return {
        "id": m.id, "gateway": m.gateway, "brand": m.brand, "last4": m.last4, "exp_month": m.exp_month,
        "exp_year": m.exp_year, "created_at": rfc3339(m.created_at),
    }


@bp.post("/payment-methods")
def add_method() -> tuple[Response, int]:
    principal = require_user()
    req: PaymentMethodRequest = parsing.validated(PaymentMethodRequest)
    c = container()
    method = payment_service.add_payment_method(principal.id, req.gateway, req.token, c.uow_factory, c.gateways())
    return jsonify(method_json(method)), 201


@bp.get("/payment-methods")
def list_methods() -> Response:
    principal = require_user()
    methods = payment_service.list_payment_methods(principal.id, container().uow_factory)
    return jsonify(schemas.body(PaymentMethodList, {"data": [_method_fields(m) for m in methods]}))


@bp.delete("/payment-methods/<method:method_id>")
def delete_method(method_id: str) -> tuple[str, int]:
    principal = require_user()
    c = container()
    payment_service.delete_payment_method(principal.id, method_id, c.uow_factory, c.gateways())
    return "", 204


_sec: list[dict[str, list[str]]] = [{"userJwt": []}]
_common = {"401": openapi.problem_ref("no or invalid user token"), "429": openapi.problem_ref("too many requests")}
openapi.document("/payment-methods", "post", {
    "summary": "Save a card token for later top-ups", "tags": ["payment methods"], "security": _sec,
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": openapi.model_ref(PaymentMethodRequest)}}},
    "responses": {"201": openapi.json_body(PaymentMethodOut, "saved"),
                  "422": openapi.problem_ref("invalid input, a token the gateway refused, or card data"),
                  "503": openapi.problem_ref("the gateway did not answer; nothing saved"), **_common},
})
openapi.document("/payment-methods", "get", {
    "summary": "The user's active payment methods", "tags": ["payment methods"], "security": _sec,
    "responses": {"200": openapi.json_body(PaymentMethodList, "active methods, newest first"), **_common},
})
openapi.document("/payment-methods/{method_id}", "delete", {
    "summary": "Delete (soft) and detach at the gateway", "tags": ["payment methods"], "security": _sec,
    "parameters": [{"name": "method_id", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {"204": {"description": "deleted"}, "404": openapi.problem_ref("no such method (or another user's)"),
                  "503": openapi.problem_ref("the gateway did not answer; not deleted"), **_common},
})
