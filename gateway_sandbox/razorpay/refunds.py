"""Razorpay refunds: create (at most once per `X-Refund-Idempotency` key), fetch and list."""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from flask import Response, request

from ..core import Sandbox, current_sandbox
from ._auth import _idempotent
from ._blueprint import bp
from ._common import (
    _ALNUM,
    NOT_FOUND,
    RazorpayError,
    _amount,
    _body,
    _collection,
    _get,
    _json,
    _list_window,
    _notes,
    _now,
    _public,
    _rid,
)
from .events import emit_event

OVER_REFUND = "The refund amount provided is greater than amount captured"
REFUND_KEY_HEADER = "X-Refund-Idempotency"


@bp.post("/v1/payments/<payment_id>/refund")
def create_refund(payment_id: str) -> Response:
    """A refund, made at most once per `X-Refund-Idempotency` key when the header is sent (it is optional,
    as at Razorpay): at least 10 letters, digits, hyphens or underscores."""
    sb = current_sandbox()
    body = _body()
    key = request.headers.get(REFUND_KEY_HEADER)
    if not key:
        return _create_refund(sb, payment_id, body)
    if len(key) < 10 or any(c not in _ALNUM + "-_" for c in key):
        raise RazorpayError(
            "The idempotency key must be at least 10 characters long and contain only letters, numbers, "
            "hyphens and underscores.",
            field=REFUND_KEY_HEADER,
        )
    return _idempotent(
        sb,
        "refund",
        key,
        f"/v1/payments/{payment_id}/refund",
        body,
        lambda: _create_refund(sb, payment_id, body),
        header=REFUND_KEY_HEADER,
        other_body="Different request with the same idempotency key has already been processed.",
    )


def _create_refund(sb: Sandbox, payment_id: str, body: dict[str, Any]) -> Response:
    receipt = body.get("receipt")
    if receipt is not None and len(str(receipt)) > 40:
        raise RazorpayError("The receipt may not be greater than 40 characters.", field="receipt")
    with sb.store.lock:  # check and debit in one step: concurrent refunds can never exceed the capture
        payment = _get(sb, payment_id, "payment")
        if payment["status"] not in {"captured", "refunded"}:
            raise RazorpayError("The payment has not been captured", field="payment_id")
        left = payment["amount"] - payment["amount_refunded"]
        amount = _amount(body["amount"], payment["currency"]) if body.get("amount") is not None else left
        if amount > left:
            raise RazorpayError(OVER_REFUND, field="amount")
        refund = sb.store.put(
            {
                "id": _rid("rfnd"),
                "entity": "refund",
                "amount": amount,
                "currency": payment["currency"],
                "payment_id": payment_id,
                "notes": _notes(body.get("notes")),
                "receipt": receipt,
                "acquirer_data": {"arn": "".join(secrets.choice(string.digits) for _ in range(14))},
                "created_at": _now(),
                "batch_id": None,
                "status": "processed",
                "speed_processed": "normal",
                "speed_requested": str(body.get("speed") or "normal"),
                "_seq": time.monotonic_ns(),
            }
        )
        payment["amount_refunded"] += amount
        full = payment["amount_refunded"] == payment["amount"]
        payment["refund_status"] = "full" if full else "partial"
        if full:
            payment["status"] = "refunded"
        emit_event(sb, "refund.created", {"refund": refund, "payment": payment})
        emit_event(sb, "refund.processed", {"refund": refund, "payment": payment})
    return _json(_public(refund))


@bp.get("/v1/payments/<payment_id>/refunds")
def payment_refunds(payment_id: str) -> Response:
    sb = current_sandbox()
    _get(sb, payment_id, "payment")
    refunds = sb.store.find(lambda o: o.get("entity") == "refund" and o.get("payment_id") == payment_id)
    refunds.sort(key=lambda o: o["_seq"], reverse=True)
    return _json(_collection(refunds))


@bp.get("/v1/payments/<payment_id>/refunds/<refund_id>")
def payment_refund(payment_id: str, refund_id: str) -> Response:
    refund = _get(current_sandbox(), refund_id, "refund")
    if refund["payment_id"] != payment_id:
        raise RazorpayError(NOT_FOUND, field="refund_id")
    return _json(_public(refund))


@bp.get("/v1/refunds/<refund_id>")
def fetch_refund(refund_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), refund_id, "refund")))


@bp.get("/v1/refunds")
def list_refunds() -> Response:
    return _list_window("refund")
