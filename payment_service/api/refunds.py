"""Refunds: POST /payments/{id}/refunds (service clients with payments:refund) and the reads."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from ..domain.errors import NotFound
from ..domain.events import rfc3339
from ..domain.payments import Refund
from ..services import refunds as refund_service
from . import openapi, parsing, schemas
from .auth import require_scope, require_user_or_scope
from .context import container
from .display import amount_display
from .idempotent import run_idempotent
from .schemas import RefundList, RefundOut, RefundRequest

bp = Blueprint("refunds", __name__)


def refund_json(r: Refund, locale: str) -> dict[str, Any]:
    """The refund as the body of a response: validated and dumped by RefundOut, which documents it."""
    return schemas.body(RefundOut, _refund_fields(r, locale))


def _refund_fields(r: Refund, locale: str) -> dict[str, Any]:
    return {
        "id": r.id,
        "payment_id": r.payment_id,
        "amount": r.amount,
        "currency": r.currency,
        "status": r.status,
        "reason": r.reason,
        "failure_reason": r.failure_reason,
        "gateway_refund_id": r.gateway_refund_id,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
        "canonical_amount": r.canonical_amount,
        "canonical_currency": r.canonical_currency,
        "amount_display": amount_display(r.amount, r.currency, locale),
    }


def _locale() -> str:
    return container().settings.DISPLAY_LOCALE


@bp.post("/payments/<payment:payment_id>/refunds")
def create_refund(payment_id: str) -> Response:
    principal = require_scope("payments:refund")
    req: RefundRequest = parsing.validated(RefundRequest)
    c = container()
    cmd = refund_service.RefundPayment(payment_id=payment_id, amount=req.amount, reason=req.reason)
    flow = refund_service.RefundFlow(cmd, c.gateways(), c.refund_settings())
    return run_idempotent(principal, flow, _render)


def _render(refund: Refund) -> tuple[dict[str, Any], int]:
    # 201 whatever the status: the refund exists (PENDING while the gateway decides, FAILED if it refused).
    return refund_json(refund, _locale()), 201


def _visible_payment(payment_id: str) -> None:
    principal = require_user_or_scope("payments:read")
    with container().uow_factory() as uow:
        payment = uow.payments.get(payment_id)
    # Another user's payment answers exactly like a missing one: 404, never 403.
    if payment is None or (principal.is_user and payment.user_id != principal.id):
        raise NotFound(f"payment {payment_id} not found")


@bp.get("/payments/<payment:payment_id>/refunds")
def list_refunds(payment_id: str) -> Response:
    _visible_payment(payment_id)
    with container().uow_factory() as uow:
        items = uow.refunds.list_for_payment(payment_id)
    locale = _locale()
    return jsonify(schemas.body(RefundList, {"data": [_refund_fields(r, locale) for r in items]}))


@bp.get("/payments/<payment:payment_id>/refunds/<refund:refund_id>")
def get_refund(payment_id: str, refund_id: str) -> Response:
    _visible_payment(payment_id)
    with container().uow_factory() as uow:
        refund = uow.refunds.get(refund_id)
    if refund is None or refund.payment_id != payment_id:
        raise NotFound(f"refund {refund_id} not found")
    return jsonify(refund_json(refund, _locale()))


_either: list[dict[str, list[str]]] = [{"userJwt": []}, {"apiKey": []}]
_common = {
    "401": openapi.problem_ref("no or invalid credential"),
    "403": openapi.problem_ref("a caller without the scope"),
    "429": openapi.problem_ref("too many requests; see Retry-After"),
}
_payment_id = {"name": "payment_id", "in": "path", "required": True, "schema": {"type": "string"}}
openapi.document("/payments/{payment_id}/refunds", "post", {
    "summary": "Refund a captured payment, in part or in full (service clients with payments:refund)",
    "description": "`amount` defaults to what is left. Refunds of one payment never add up to more than it "
                   "captured, even when sent concurrently. The refund is PENDING until the gateway decides; "
                   "SUCCEEDED writes one PAYMENT_REFUNDED event.",
    "tags": ["refunds"],
    "security": [{"apiKey": []}],
    "parameters": [_payment_id, {"name": "Idempotency-Key", "in": "header", "required": True,
                                 "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": openapi.model_ref(RefundRequest)}}},
    "responses": {
        "201": openapi.json_body(RefundOut, "the refund: SUCCEEDED, FAILED (refused by the gateway) or PENDING"),
        "400": openapi.problem_ref("malformed JSON or missing Idempotency-Key"),
        "404": openapi.problem_ref("no such payment"),
        "409": openapi.problem_ref("idempotency_key_reused or idempotency_key_in_use"),
        "422": openapi.problem_ref("refund_exceeds_captured, payment_not_refundable, or invalid input"),
        "503": openapi.problem_ref("the gateway did not answer: the refund is PENDING; retry with the same "
                                   "Idempotency-Key, or the worker completes it"),
        **_common,
    },
})
openapi.document("/payments/{payment_id}/refunds", "get", {
    "summary": "The payment's refunds, oldest first (its owner, or a client with payments:read)",
    "tags": ["refunds"], "security": _either, "parameters": [_payment_id],
    "responses": {"200": openapi.json_body(RefundList, "the refunds"),
                  "404": openapi.problem_ref("no such payment (or another user's)"), **_common},
})
openapi.document("/payments/{payment_id}/refunds/{refund_id}", "get", {
    "summary": "One refund (the payment's owner, or a client with payments:read)",
    "tags": ["refunds"], "security": _either,
    "parameters": [_payment_id, {"name": "refund_id", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {"200": openapi.json_body(RefundOut, "the refund"),
                  "404": openapi.problem_ref("no such payment or refund"), **_common},
})
