"""Razorpay's 3-D Secure challenge page (GET/POST /razorpay/3ds/<payment_id>) and the callback after it."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Response, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from payment_service.domain.money import format_major

from ..challenge import render_challenge
from ..core import current_sandbox
from ._blueprint import bp
from ._common import _json
from .payments import _authorize_payment, _fail_payment


@bp.get("/3ds/<payment_id>")
def challenge_page(payment_id: str) -> BaseResponse:
    sb = current_sandbox()
    payment = sb.store.get(payment_id)
    if payment is None or payment.get("entity") != "payment":
        return Response("Unknown payment", status=404, mimetype="text/plain")
    if payment["status"] != "created":
        return _after_challenge(payment)
    return render_challenge(
        gateway="Razorpay",
        amount=format_major(payment["amount"], payment["currency"]),
        last4=payment["card"]["last4"],
        payment_id=payment["id"],
        action=f"{sb.config.public_url}/razorpay/3ds/{payment['id']}",
    )


@bp.post("/3ds/<payment_id>")
def complete_challenge(payment_id: str) -> BaseResponse:
    sb = current_sandbox()
    result = request.form.get("result")
    if result not in {"approve", "fail"}:
        return Response("result must be approve or fail", status=400, mimetype="text/plain")
    with sb.store.lock:
        payment = sb.store.get(payment_id)
        if payment is None or payment.get("entity") != "payment":
            return Response("Unknown payment", status=404, mimetype="text/plain")
        if payment["status"] == "created":  # a second submit changes nothing
            if result == "approve" and payment["_outcome"] == "3ds_success":
                _authorize_payment(sb, payment)
            else:
                _fail_payment(sb, payment, "authentication_failed")
    return _after_challenge(payment)


def _after_challenge(payment: dict[str, Any]) -> BaseResponse:
    """Back to the merchant's callback_url, with Razorpay's callback parameters in the query."""
    if payment["status"] in {"authorized", "captured", "refunded"}:
        params: dict[str, str] = {
            "razorpay_payment_id": payment["id"],
            "razorpay_order_id": payment["order_id"],
            "razorpay_signature": payment["_signature"],
        }
    else:
        params = {
            "error[code]": str(payment["error_code"]),
            "error[description]": str(payment["error_description"]),
            "error[source]": str(payment["error_source"]),
            "error[step]": str(payment["error_step"]),
            "error[reason]": str(payment["error_reason"]),
            "error[metadata]": json.dumps({"payment_id": payment["id"], "order_id": payment["order_id"]}),
        }
    callback = payment.get("_callback_url")
    if not callback:
        return _json({"status": payment["status"], **params})
    parts = urlsplit(callback)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return redirect(urlunsplit(parts._replace(query=query)), code=303)
