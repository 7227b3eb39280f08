"""Razorpay payments: create (S2S JSON and recurring), authorize, capture, fail, fetch, edit and list."""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from flask import Response, request

from ..core import Sandbox, current_sandbox
from ._blueprint import bp
from ._common import (
    RazorpayError,
    _amount,
    _body,
    _get,
    _json,
    _list_window,
    _notes,
    _now,
    _public,
    _required,
    _rid,
    _sign,
)
from .cards import TEST_TOKENS, TestCard, _card_entity
from .events import emit_event

# error_reason -> (description, source, step) for failed payments.
FAILURES: dict[str, tuple[str, str, str]] = {
    "payment_failed": ("Payment failed. The card was declined by the issuing bank.", "bank", "payment_authorization"),
    "insufficient_funds": (
        "Payment failed due to insufficient balance in the customer's account.",
        "customer",
        "payment_authorization",
    ),
    "authentication_failed": (
        "Payment failed because the cardholder could not be authenticated.",
        "customer",
        "payment_authentication",
    ),
    "payment_timed_out": ("Payment was not completed in time.", "customer", "payment_authentication"),
    "order_already_paid": ("Order has already been paid.", "business", "payment_initiation"),
}


def _key_secret() -> str:
    """The key secret of this API call: Razorpay signs callback parameters with the merchant's secret."""
    auth = request.authorization
    return (auth.password if auth else None) or ""


def _fail_payment(sb: Sandbox, payment: dict[str, Any], reason: str) -> None:
    description, source, step = FAILURES[reason]
    payment.update(
        status="failed",
        error_code="BAD_REQUEST_ERROR",
        error_description=description,
        error_source=source,
        error_step=step,
        error_reason=reason,
    )
    emit_event(sb, "payment.failed", {"payment": payment})


def _authorize_payment(sb: Sandbox, payment: dict[str, Any]) -> None:
    """Authorized, then captured at once when the order says so (payment_capture=1)."""
    order = _get(sb, payment["order_id"], "order")
    if order["status"] == "paid":
        _fail_payment(sb, payment, "order_already_paid")
        return
    payment["status"] = "authorized"
    payment["acquirer_data"] = {"auth_code": "".join(secrets.choice(string.digits) for _ in range(6))}
    emit_event(sb, "payment.authorized", {"payment": payment})
    if order["_payment_capture"]:
        _capture_payment(sb, payment, order)


def _capture_payment(sb: Sandbox, payment: dict[str, Any], order: dict[str, Any]) -> None:
    payment.update(status="captured", captured=True, fee=0, tax=0)
    order.update(status="paid", amount_paid=payment["amount"], amount_due=0)
    emit_event(sb, "payment.captured", {"payment": payment})
    emit_event(sb, "order.paid", {"payment": payment, "order": order})


def _resolve_card(sb: Sandbox, body: dict[str, Any]) -> tuple[TestCard, dict[str, Any] | None]:
    """The card behind the payment's `token`: a saved token_... of the customer, or a client-side test token."""
    token_ref = str(_required(body, "token"))
    if token_ref in TEST_TOKENS:
        return TEST_TOKENS[token_ref], None
    token = sb.store.get(token_ref)
    if token is None or token.get("entity") != "token" or token.get("status") != "active":
        raise RazorpayError("The token provided is invalid or has been deleted", field="token")
    if token["customer_id"] != body.get("customer_id"):
        raise RazorpayError("The token does not belong to the customer", field="customer_id")
    return TEST_TOKENS[token["_test_token"]], token


def _create_payment(recurring: bool) -> Response:
    sb = current_sandbox()
    body = _body()
    order_id = str(_required(body, "order_id"))
    with sb.store.lock:
        order = _get(sb, order_id, "order")
        currency = str(body.get("currency") or order["currency"])
        amount = _amount(_required(body, "amount"), currency)
        if amount != order["amount_due"] or currency != order["currency"]:
            raise RazorpayError(
                "Your payment amount is different from your order amount. "
                "To pay successfully, please try using right amount.",
                field="amount",
            )
        if order["status"] == "paid":
            raise RazorpayError("Order has already been paid", field="order_id", reason="order_already_paid")
        customer_id = body.get("customer_id")
        if customer_id is not None:
            _get(sb, str(customer_id), "customer")
        card, token = _resolve_card(sb, body)
        outcome = card.outcome
        if outcome == "success" and body.get("auth_type") == "3ds":
            outcome = "3ds_success"  # authentication asked for explicitly (step-up): challenge a frictionless card
        payment = sb.store.put(
            {
                "id": _rid("pay"),
                "entity": "payment",
                "amount": amount,
                "currency": currency,
                "status": "created",
                "order_id": order_id,
                "invoice_id": None,
                "international": card.international,
                "method": "card",
                "amount_refunded": 0,
                "refund_status": None,
                "captured": False,
                "description": body.get("description"),
                "card_id": _card_entity(card)["id"],
                "card": _card_entity(card),
                "bank": None,
                "wallet": None,
                "vpa": None,
                "email": body.get("email"),
                "contact": body.get("contact"),
                "customer_id": customer_id,
                "token_id": token["id"] if token else None,
                "recurring": recurring,
                "notes": _notes(body.get("notes")),
                "fee": None,
                "tax": None,
                "error_code": None,
                "error_description": None,
                "error_source": None,
                "error_step": None,
                "error_reason": None,
                "acquirer_data": {},
                "created_at": _now(),
                "_callback_url": body.get("callback_url"),
                "_outcome": outcome,
                "_seq": time.monotonic_ns(),
            }
        )
        order["attempts"] += 1
        order["status"] = "attempted"
        if token is not None:
            token["used_at"] = _now()
        signature = _sign(_key_secret(), f"{order_id}|{payment['id']}")
        payment["_signature"] = signature
        if outcome in {"decline", "insufficient_funds"}:
            reason = "payment_failed" if outcome == "decline" else "insufficient_funds"
            _fail_payment(sb, payment, reason)
            description, source, step = FAILURES[reason]
            raise RazorpayError(
                description,
                reason=reason,
                source=source,
                step=step,
                metadata={"payment_id": payment["id"], "order_id": order_id},
            )
        result: dict[str, Any] = {"razorpay_payment_id": payment["id"]}
        if outcome.startswith("3ds"):
            url = f"{sb.config.public_url}/razorpay/3ds/{payment['id']}"
            result["next"] = [{"action": "redirect", "url": url}]
            return _json(result)
        _authorize_payment(sb, payment)
        if payment["status"] == "failed":
            raise RazorpayError(
                str(payment["error_description"]),
                reason=str(payment["error_reason"]),
                metadata={"payment_id": payment["id"], "order_id": order_id},
            )
        result.update(razorpay_order_id=order_id, razorpay_signature=signature, next=[])
    return _json(result)


@bp.post("/v1/payments/create/json")
def create_payment_json() -> Response:
    return _create_payment(recurring=False)


@bp.post("/v1/payments/create/recurring")
def create_payment_recurring() -> Response:
    return _create_payment(recurring=True)


@bp.get("/v1/payments")
def list_payments() -> Response:
    return _list_window("payment")


@bp.get("/v1/payments/<payment_id>")
def fetch_payment(payment_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), payment_id, "payment")))


@bp.patch("/v1/payments/<payment_id>")
def edit_payment(payment_id: str) -> Response:
    sb = current_sandbox()
    body = _body()
    with sb.store.lock:
        payment = _get(sb, payment_id, "payment")
        payment["notes"] = {**payment["notes"], **_notes(body.get("notes"))}
    return _json(_public(payment))


@bp.post("/v1/payments/<payment_id>/capture")
def capture_payment(payment_id: str) -> Response:
    sb = current_sandbox()
    body = _body()
    with sb.store.lock:
        payment = _get(sb, payment_id, "payment")
        amount = _amount(_required(body, "amount"), payment["currency"])
        if payment["status"] in {"captured", "refunded"}:
            raise RazorpayError("This payment has already been captured", field="payment_id")
        if payment["status"] != "authorized":
            raise RazorpayError("Only payments which have been authorized and not yet captured can be captured")
        if amount != payment["amount"]:
            raise RazorpayError("Capture amount must be equal to the amount authorized", field="amount")
        if body.get("currency") not in (None, payment["currency"]):
            raise RazorpayError("The currency should be same as the payment currency", field="currency")
        _capture_payment(sb, payment, _get(sb, payment["order_id"], "order"))
    return _json(_public(payment))
