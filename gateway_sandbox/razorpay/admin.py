"""The Razorpay side's sandbox admin (/razorpay/_admin, no API keys): move payouts and payments, seed days.

Settle, fail and reverse payouts on demand, time out a 3-D Secure payment, set auto-settlement, and
back-date or bulk-create paid orders for the settlement reconciliation (docs/sandbox-razorpay.md).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Response

from ..core import Sandbox, current_sandbox
from ._blueprint import bp
from ._common import (
    _MAX_TS,
    _MIN_TS,
    NOT_FOUND,
    RazorpayError,
    _amount,
    _body,
    _get,
    _json,
    _notes,
    _now,
    _public,
    _rid,
)
from .cards import TEST_TOKENS, _card_entity
from .payments import _fail_payment
from .payouts import _settings, transition_payout
from .refunds import OVER_REFUND


@bp.post("/_admin/payouts/<payout_id>/settle")
def admin_settle(payout_id: str) -> Response:
    body = _body()
    utr = body.get("utr")
    return _json(_public(transition_payout(current_sandbox(), payout_id, "processed", utr=utr)))


@bp.post("/_admin/payouts/<payout_id>/fail")
def admin_fail(payout_id: str) -> Response:
    return _json(_public(transition_payout(current_sandbox(), payout_id, "failed", reason=_body().get("reason"))))


@bp.post("/_admin/payouts/<payout_id>/reverse")
def admin_reverse(payout_id: str) -> Response:
    return _json(_public(transition_payout(current_sandbox(), payout_id, "reversed", reason=_body().get("reason"))))


@bp.post("/_admin/payments/<payment_id>/timeout")
def admin_timeout_payment(payment_id: str) -> Response:
    """A 3-D Secure payment the customer never completed: created -> failed (payment_timed_out)."""
    sb = current_sandbox()
    with sb.store.lock:
        payment = _get(sb, payment_id, "payment")
        if payment["status"] != "created":
            raise RazorpayError(f"Payment in status {payment['status']} is not awaiting authentication")
        _fail_payment(sb, payment, "payment_timed_out")
    return _json(_public(payment))


@bp.get("/_admin/settings")
def admin_settings() -> Response:
    return _json(_public(_settings(current_sandbox())))


@bp.post("/_admin/settings")
def admin_update_settings() -> Response:
    """{"auto_settle_payouts": bool, "auto_settle_delay_ms": int, "auto_settle_result": "processed"|"failed",
    "initial_payout_status": "processing"|"queued"|"pending"}."""
    sb = current_sandbox()
    body = _body()
    with sb.store.lock:
        settings = _settings(sb)
        if "auto_settle_payouts" in body:
            settings["auto_settle_payouts"] = bool(body["auto_settle_payouts"])
        if "auto_settle_delay_ms" in body:
            settings["auto_settle_delay_ms"] = max(0, int(body["auto_settle_delay_ms"]))
        if "initial_payout_status" in body:
            if body["initial_payout_status"] not in {"processing", "queued", "pending"}:
                raise RazorpayError(
                    "initial_payout_status must be processing, queued or pending", field="initial_payout_status"
                )
            settings["initial_payout_status"] = body["initial_payout_status"]
        if "auto_settle_result" in body:
            if body["auto_settle_result"] not in {"processed", "failed"}:
                raise RazorpayError("auto_settle_result must be processed or failed", field="auto_settle_result")
            settings["auto_settle_result"] = body["auto_settle_result"]
    return _json(_public(settings))


# ---------------------------------------------------------------- settlement days


def _admin_timestamp(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not _MIN_TS <= value <= _MAX_TS:
        raise RazorpayError(f"{name} must be unix seconds", field=name)
    return value


@bp.post("/_admin/objects/<object_id>/created_at")
def admin_set_created_at(object_id: str) -> Response:
    """`{"created_at": <unix seconds>}`: when a payment, refund or order was made, as if on another day."""
    sb = current_sandbox()
    created_at = _admin_timestamp(_body().get("created_at"), "created_at")
    with sb.store.lock:
        obj = sb.store.get(object_id)
        if obj is None or obj.get("entity") not in {"payment", "refund", "order"}:
            raise RazorpayError(NOT_FOUND, field="id")
        obj["created_at"] = created_at
    return _json(_public(obj))


def _bulk_refund(sb: Sandbox, payment: dict[str, Any], spec: dict[str, Any]) -> str:
    left = payment["amount"] - payment["amount_refunded"]
    amount = int(spec.get("amount") or left)
    if not 0 < amount <= left:
        raise RazorpayError(OVER_REFUND, field="amount")
    refund = sb.store.put(
        {
            "id": _rid("rfnd"), "entity": "refund", "amount": amount, "currency": payment["currency"],
            "payment_id": payment["id"], "notes": _notes(spec.get("notes")), "receipt": spec.get("receipt"),
            "acquirer_data": {"arn": None}, "batch_id": None, "status": "processed",
            "created_at": _admin_timestamp(spec.get("created_at", payment["created_at"]), "created_at"),
            "speed_processed": "normal", "speed_requested": "normal", "_seq": time.monotonic_ns(),
        }
    )
    payment["amount_refunded"] += amount
    payment["refund_status"] = "full" if payment["amount_refunded"] == payment["amount"] else "partial"
    if payment["refund_status"] == "full":
        payment["status"] = "refunded"
    return str(refund["id"])


@bp.post("/_admin/bulk/payments")
def admin_bulk_payments() -> Response:
    """`{"items": [{"amount", "currency", "receipt", "notes", "created_at", "refunds": [{"amount", "receipt",
    "notes", "created_at"}]}]}`: paid orders, each with its captured payment (test card tok_rzp_success),
    made at once without webhooks, as a day of traffic would have left them. Answers their ids, in order."""
    sb = current_sandbox()
    items = _body().get("items")
    if not isinstance(items, list):
        raise RazorpayError("items must be a list", field="items")
    card = _card_entity(TEST_TOKENS["tok_rzp_success"])
    out: list[dict[str, Any]] = []
    with sb.store.lock:
        for item in items:
            currency = str(item.get("currency") or "INR")
            amount = _amount(item.get("amount"), currency)
            created_at = _admin_timestamp(item.get("created_at", _now()), "created_at")
            notes = _notes(item.get("notes"))
            order = sb.store.put(
                {
                    "id": _rid("order"), "entity": "order", "amount": amount, "amount_paid": amount, "amount_due": 0,
                    "currency": currency, "receipt": item.get("receipt"), "offer_id": None, "status": "paid",
                    "attempts": 1, "notes": notes, "created_at": created_at, "_payment_capture": True,
                    "_seq": time.monotonic_ns(),
                }
            )
            payment = sb.store.put(
                {
                    "id": _rid("pay"), "entity": "payment", "amount": amount, "currency": currency,
                    "status": "captured", "order_id": order["id"], "invoice_id": None, "international": False,
                    "method": "card", "amount_refunded": 0, "refund_status": None, "captured": True,
                    "description": None, "card_id": card["id"], "card": dict(card), "bank": None, "wallet": None,
                    "vpa": None, "email": None, "contact": None, "customer_id": None, "token_id": None,
                    "recurring": False, "notes": dict(notes), "fee": 0, "tax": 0, "error_code": None,
                    "error_description": None, "error_source": None, "error_step": None, "error_reason": None,
                    "acquirer_data": {}, "created_at": created_at, "_callback_url": None, "_outcome": "success",
                    "_signature": "", "_seq": time.monotonic_ns(),
                }
            )
            refunds = [_bulk_refund(sb, payment, spec) for spec in item.get("refunds") or []]
            out.append({"id": payment["id"], "order_id": order["id"], "refunds": refunds})
    return _json({"items": out})
