"""Stripe charges: made by payment intents (never created directly), read and listed."""

from __future__ import annotations

from typing import Any

from flask import Response

from ._blueprint import bp
from ._common import _created_filter, _get, _json, _new_id, _now, _paginate, _params, _render, _sb, _str
from .cards import Decline

_CHARGE_CARD_FIELDS = ("brand", "last4", "exp_month", "exp_year", "country", "fingerprint", "funding")


def _new_charge(pi: dict[str, Any], pm: dict[str, Any], decline: Decline | None) -> dict[str, Any]:
    card = pm["card"]
    charge = {
        "id": _new_id("ch"),
        "object": "charge",
        "amount": pi["amount"],
        "amount_captured": 0 if decline else pi["amount"],
        "amount_refunded": 0,
        "balance_transaction": None if decline else _new_id("txn"),
        "captured": decline is None,
        "created": _now(),
        "currency": pi["currency"],
        "customer": pi["customer"],
        "description": pi["description"],
        "failure_code": decline.code if decline else None,
        "failure_message": decline.message if decline else None,
        "livemode": False,
        "metadata": dict(pi["metadata"]),
        "outcome": {
            "network_status": "declined_by_network" if decline else "approved_by_network",
            "reason": decline.decline_code if decline else None,
            "risk_level": "normal",
            "seller_message": "The bank did not return any further details with this decline."
            if decline
            else "Payment complete.",
            "type": "issuer_declined" if decline else "authorized",
        },
        "paid": decline is None,
        "payment_intent": pi["id"],
        "payment_method": pm["id"],
        "payment_method_details": {
            "type": "card",
            "card": {k: card[k] for k in _CHARGE_CARD_FIELDS} | {"network": card["brand"]},
        },
        "receipt_email": pi.get("receipt_email"),
        "refunded": False,
        "status": "failed" if decline else "succeeded",
    }
    return _sb().store.put(charge)


@bp.get("/v1/charges/<charge_id>")
def retrieve_charge(charge_id: str) -> Response:
    return _json(_render(_get("charge", charge_id)))


@bp.get("/v1/charges")
def list_charges() -> Response:
    p = _params()
    pi_id, customer = _str(p, "payment_intent"), _str(p, "customer")
    created = _created_filter(p)
    items = _sb().store.find(
        lambda o: o.get("object") == "charge"
        and (pi_id is None or o.get("payment_intent") == pi_id)
        and (customer is None or o.get("customer") == customer)
        and created(o)
    )
    return _paginate(items, "/v1/charges")
