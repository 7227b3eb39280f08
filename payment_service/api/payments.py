"""Top-ups and payment reads."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..adapters.repository import decode_cursor, encode_cursor
from ..domain.errors import Forbidden, NotFound, ValidationFailed
from ..domain.events import rfc3339
from ..domain.model import PaymentStatus
from ..domain.payments import Payment
from ..services import payments as payment_service
from . import openapi, parsing, schemas
from .auth import require_user, require_user_or_scope
from .context import container
from .display import amount_display
from .idempotent import run_idempotent
from .schemas import PaymentList, PaymentOut, TopUpRequest

bp = Blueprint("payments", __name__)

_STATUS_FOR = {
    PaymentStatus.CAPTURED.value: 201,
    PaymentStatus.PENDING_3DS.value: 202,
    PaymentStatus.PENDING.value: 202,
    PaymentStatus.FAILED.value: 402,
    PaymentStatus.EXPIRED.value: 402,
}


def _t(value: Any) -> str | None:
    return None if value is None else rfc3339(value)


def payment_json(p: Payment, locale: str) -> dict[str, Any]:
    """The payment as the body of a response: validated and dumped by PaymentOut, which documents it."""
    return schemas.body(PaymentOut, _payment_fields(p, locale))


def _payment_fields(p: Payment, locale: str) -> dict[str, Any]:
    return {
        "id": p.id,
        "user_id": p.user_id,
        "amount": p.amount,
        "currency": p.currency,
        "gateway": p.gateway,
        "gateway_payment_id": p.gateway_payment_id,
        "payment_method_id": p.payment_method_id or p.gateway_token,
        "card": {"brand": p.card_brand, "last4": p.card_last4} if p.card_last4 else None,
        "status": p.status,
        "failure_code": p.failure_code,
        "failure_message": p.failure_message,
        "next_action": (
            {"type": "redirect_to_url", "url": p.next_action_url}
            if p.status == PaymentStatus.PENDING_3DS.value and p.next_action_url
            else None
        ),
        "refunded_amount": p.refunded_amount,
        "created_at": _t(p.created_at),
        "updated_at": _t(p.updated_at),
        "captured_at": _t(p.captured_at),
        "expires_at": _t(p.expires_at) if p.status in (PaymentStatus.PENDING_3DS.value, "EXPIRED") else None,
        "canonical_amount": p.canonical_amount,
        "canonical_currency": p.canonical_currency,
        "amount_display": amount_display(p.amount, p.currency, locale),
    }


def _locale() -> str:
    return container().settings.DISPLAY_LOCALE


@bp.post("/payments/topup")
def topup() -> Response:
    principal = require_user()
    req: TopUpRequest = parsing.validated(TopUpRequest)
    c = container()
    cmd = payment_service.TopUp(
        user_id=principal.id, amount=req.amount, currency=req.currency,
        gateway=req.gateway, token=req.token, payment_method_id=req.payment_method_id,
        return_url=req.return_url, device_id=req.device.id if req.device else None,
        device_ip=(req.device.ip if req.device else None) or request.remote_addr,
    )
    flow = payment_service.TopUpFlow(cmd, c.gateways(), c.payment_settings(), c.breakers())
    return run_idempotent(principal, flow, _render)


def _render(payment: Payment) -> tuple[dict[str, Any], int]:
    return payment_json(payment, _locale()), _STATUS_FOR[payment.status]


@bp.get("/payments/<payment:payment_id>")
def get_payment(payment_id: str) -> Response:
    principal = require_user_or_scope("payments:read")
    with container().uow_factory() as uow:
        payment = uow.payments.get(payment_id)
    # Another user's payment answers exactly like a missing one: 404, never 403.
    if payment is None or (principal.is_user and payment.user_id != principal.id):
        raise NotFound(f"payment {payment_id} not found")
    return jsonify(payment_json(payment, _locale()))


@bp.get("/payments")
def list_payments() -> Response:
    principal = require_user_or_scope("payments:read")
    args = request.args
    errors = []
    status = args.get("status")
    if status is not None and status not in {s.value for s in PaymentStatus}:
        errors.append({"field": "status", "message": f"must be one of {', '.join(s.value for s in PaymentStatus)}"})
    limit, cursor = parsing.page_query(errors, decode_cursor, default_limit=20)
    requested = args.get("user_id") or None  # an empty filter is no filter
    if principal.is_user and requested not in (None, principal.id):
        raise Forbidden("users can list only their own payments", field="user_id")
    user_id = principal.id if principal.is_user else requested
    if errors:
        raise ValidationFailed("invalid query parameters", errors=errors)
    with container().uow_factory() as uow:
        page = uow.payments.list_for_user(user_id, status, limit, cursor)
    locale = _locale()
    return jsonify(schemas.body(PaymentList, {
        "data": [_payment_fields(p, locale) for p in page.items],
        "has_more": page.next_cursor is not None,
        "next_cursor": encode_cursor(page.next_cursor) if page.next_cursor else None,
    }))


_user: list[dict[str, list[str]]] = [{"userJwt": []}]
_either: list[dict[str, list[str]]] = [{"userJwt": []}, {"apiKey": []}]
_common = {
    "401": openapi.problem_ref("no or invalid credential"),
    "403": openapi.problem_ref("a service client without the scope"),
    "429": openapi.problem_ref("too many requests; see Retry-After"),
}
openapi.document("/payments/topup", "post", {
    "summary": "Top up the wallet by card",
    "tags": ["payments"],
    "security": _user,
    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": openapi.model_ref(TopUpRequest)}}},
    "responses": {
        "201": openapi.json_body(PaymentOut, "charged: status CAPTURED"),
        "202": openapi.json_body(PaymentOut, "PENDING_3DS with next_action (or PENDING while the gateway decides)"),
        "402": openapi.json_body(PaymentOut, "declined or refused by the fraud pre-check: status FAILED"),
        "400": openapi.problem_ref("malformed JSON or missing Idempotency-Key"),
        "409": openapi.problem_ref("idempotency_key_reused or idempotency_key_in_use"),
        "422": openapi.problem_ref("invalid input, or card_data_not_accepted"),
        "503": {
            **openapi.problem_ref(
                "gateway_unavailable: the gateway's circuit breaker is open (answered at once; nothing was recorded "
                "or charged), or the gateway did not answer (the payment is pending and will be resolved). Retry "
                "with the same Idempotency-Key after Retry-After seconds"
            ),
            "headers": {"Retry-After": {"description": "seconds to wait before retrying",
                                        "schema": {"type": "integer", "minimum": 1}}},
        },
        **_common,
    },
})
openapi.document("/payments/{payment_id}", "get", {
    "summary": "One payment (its owner, or a client with payments:read)",
    "tags": ["payments"], "security": _either,
    "parameters": [{"name": "payment_id", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {"200": openapi.json_body(PaymentOut, "the payment"),
                  "404": openapi.problem_ref("no such payment (or another user's)"), **_common},
})
openapi.document("/payments", "get", {
    "summary": "Payments, newest first, cursor paginated (users: their own; services may filter by user_id)",
    "tags": ["payments"], "security": _either,
    "parameters": [
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": [s.value for s in PaymentStatus]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        {"name": "user_id", "in": "query", "schema": {"type": "string"}, "description": "service clients only"},
    ],
    "responses": {"200": openapi.json_body(PaymentList, "a page"),
                  "422": openapi.problem_ref("bad query"), **_common},
})
