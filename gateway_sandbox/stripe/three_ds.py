"""Stripe's 3-D Secure challenge page (GET/POST /stripe/3ds/<pi_id>): the customer's browser, no API key."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Response, request

from payment_service.domain.money import format_major

from ..challenge import render_challenge
from ._blueprint import bp
from ._common import DOC_URL, _get, _public, _sb
from .customers import _test_card_of
from .events import _emit
from .payment_intents import _decline_pi, _succeed


def _challenge_target(pi_id: str) -> dict[str, Any] | None:
    obj = _sb().store.get(pi_id)
    return obj if obj is not None and obj.get("object") == "payment_intent" else None


def _html(message: str, status: int = 200) -> Response:
    from html import escape

    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>3-D Secure</title></head>'
        f"<body><p id=\"message\">{escape(message)}</p></body></html>"
    )
    return Response(page, status=status, mimetype="text/html")


@bp.get("/3ds/<pi_id>")
def challenge_page(pi_id: str) -> Response:
    pi = _challenge_target(pi_id)
    if pi is None:
        return _html("Unknown payment.", 404)
    if pi["status"] != "requires_action":
        return _html(f"This authentication is no longer pending (the payment is {pi['status']}).", 409)
    pm = _sb().store.get(str(pi["payment_method"])) or {}
    last4 = pm.get("card", {}).get("last4", "????")
    currency = pi["currency"].upper()
    reference = pi["metadata"].get("payment_id", pi["id"])
    return render_challenge("Stripe", format_major(pi["amount"], currency), last4, reference, request.path)


@bp.post("/3ds/<pi_id>")
def complete_challenge(pi_id: str) -> Response:
    result = request.form.get("result", "")
    if result not in ("approve", "fail"):
        return _html("result must be approve or fail", 400)
    sb = _sb()
    with sb.store.lock:
        pi = _challenge_target(pi_id)
        if pi is None:
            return _html("Unknown payment.", 404)
        if pi["status"] == "requires_action":
            pm = _get("payment_method", pi["payment_method"])
            card = _test_card_of(pm)
            if result == "fail":
                pi.update(
                    status="requires_payment_method",
                    payment_method=None,
                    next_action=None,
                    last_payment_error={
                        "type": "invalid_request_error",
                        "code": "payment_intent_authentication_failure",
                        "message": "The provided PaymentMethod has failed authentication. You can provide "
                        "payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
                        "doc_url": f"{DOC_URL}#payment-intent-authentication-failure",
                        "payment_method": _public(pm),
                    },
                )
                _emit("payment_intent.payment_failed", pi)
            elif card.decline is not None:
                _decline_pi(pi, pm, card.decline)
            else:
                _succeed(pi, pm)
    status = "succeeded" if pi["status"] == "succeeded" else "processing" if pi["status"] == "processing" else "failed"
    return_url = pi.get("_return_url")
    if not return_url:
        return _html(f"Authentication complete: {status}. You can close this window.")
    query = urlencode(
        {"payment_intent": pi["id"], "payment_intent_client_secret": pi["client_secret"], "redirect_status": status}
    )
    sep = "&" if "?" in return_url else "?"
    response = Response(status=303)
    response.headers["Location"] = f"{return_url}{sep}{query}"
    return response
