"""The Stripe side's sandbox admin (/stripe/_admin, no API key): back-date objects and seed a day in bulk.

For the settlement reconciliation's tests and benchmark (docs/sandbox.md). Not in Stripe's API.
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from ._blueprint import bp
from ._common import StripeApiError, _json, _missing, _new_id, _now, _render, _sb
from .cards import TEST_CARDS
from .charges import _new_charge
from .customers import _new_payment_method
from .payment_intents import _validate_amount


def _admin_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise StripeApiError(400, "The admin API takes a JSON object.")
    return body


def _timestamp(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StripeApiError(400, f"{name} must be unix seconds", param=name)
    return value


@bp.post("/_admin/objects/<object_id>/created")
def admin_set_created(object_id: str) -> Response:
    """`{"created": <unix seconds>}`: when the object was made, as if on another day. A payment intent's
    charges move with it."""
    created = _timestamp(_admin_body().get("created"), "created")
    sb = _sb()
    with sb.store.lock:
        obj = sb.store.get(object_id)
        if obj is None or obj.get("object") not in ("payment_intent", "charge", "refund"):
            raise _missing("object", object_id)
        obj["created"] = created
        if obj["object"] == "payment_intent":
            for charge in sb.store.find(lambda o: o.get("object") == "charge" and o.get("payment_intent") == object_id):
                charge["created"] = created
    return _json(_render(obj, []))


def _bulk_refund(charge: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    amount = int(spec.get("amount") or charge["amount"] - charge["amount_refunded"])
    if not 0 < amount <= charge["amount"] - charge["amount_refunded"]:
        raise StripeApiError(400, f"Refund amount {amount} is not refundable on {charge['id']}", param="refunds")
    refund = {
        "id": _new_id("re"), "object": "refund", "amount": amount, "balance_transaction": _new_id("txn"),
        "charge": charge["id"], "created": _timestamp(spec.get("created", charge["created"]), "created"),
        "currency": charge["currency"], "metadata": dict(spec.get("metadata") or {}),
        "payment_intent": charge["payment_intent"], "reason": None, "receipt_number": None, "status": "succeeded",
    }
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
    return _sb().store.put(refund)


@bp.post("/_admin/bulk/payment_intents")
def admin_bulk_payment_intents() -> Response:
    """`{"items": [{"amount", "currency", "metadata", "created", "refunds": [{"amount", "metadata",
    "created"}]}]}`: succeeded payment intents (each with its charge, paid with `pm_card_visa`) made at
    once, without webhooks, as a day of traffic would have left them. Answers their ids, in order."""
    items = _admin_body().get("items")
    if not isinstance(items, list):
        raise StripeApiError(400, "items must be a list", param="items")
    sb = _sb()
    out: list[dict[str, Any]] = []
    with sb.store.lock:
        pm = _new_payment_method("visa", TEST_CARDS["visa"])
        for item in items:
            amount = int(item["amount"])
            currency = str(item.get("currency", "usd")).lower()
            _validate_amount(amount, currency)
            created = _timestamp(item.get("created", _now()), "created")
            pi_id = _new_id("pi")
            pi: dict[str, Any] = {
                "id": pi_id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
                "amount_received": amount, "canceled_at": None, "cancellation_reason": None,
                "capture_method": "automatic", "client_secret": f"{pi_id}_secret_bulk",
                "confirmation_method": "automatic", "created": created, "currency": currency, "customer": None,
                "description": None, "last_payment_error": None, "latest_charge": None, "livemode": False,
                "metadata": {str(k): str(v) for k, v in (item.get("metadata") or {}).items()},
                "next_action": None, "payment_method": pm["id"],
                "payment_method_options": {"card": {"request_three_d_secure": "automatic", "installments": None,
                                                    "mandate_options": None, "network": None}},
                "payment_method_types": ["card"], "receipt_email": None, "setup_future_usage": None,
                "statement_descriptor": None, "statement_descriptor_suffix": None, "status": "succeeded",
                "_return_url": None,
            }
            sb.store.put(pi)
            charge = _new_charge(pi, pm, None)
            charge["created"] = created
            pi["latest_charge"] = charge["id"]
            refunds = [_bulk_refund(charge, spec)["id"] for spec in item.get("refunds") or []]
            out.append({"id": pi_id, "charge": charge["id"], "refunds": refunds})
    return _json({"items": out})
