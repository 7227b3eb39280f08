"""Stripe refunds: create (against a payment intent or a charge), read and list."""

from __future__ import annotations

from flask import Response

from payment_service.domain.money import format_major

from ._auth import idempotent
from ._blueprint import bp
from ._common import (
    StripeApiError,
    _check_known,
    _created_filter,
    _get,
    _int,
    _json,
    _metadata,
    _new_id,
    _now,
    _paginate,
    _params,
    _render,
    _sb,
    _str,
)
from .events import _emit


@bp.post("/v1/refunds")
@idempotent
def create_refund() -> Response:
    p = _params()
    _check_known(p, {"payment_intent", "charge", "amount", "reason", "metadata"})
    reason = _str(p, "reason")
    if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
        raise StripeApiError(400, f"Invalid reason: {reason}", param="reason")
    amount = _int(p, "amount")
    sb = _sb()
    with sb.store.lock:
        pi_id, charge_id = _str(p, "payment_intent"), _str(p, "charge")
        if pi_id:
            pi = _get("payment_intent", pi_id, param="payment_intent")
            if pi["status"] != "succeeded" or not pi["latest_charge"]:
                raise StripeApiError(
                    400,
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    code="charge_not_refundable" if pi["status"] != "succeeded" else "resource_missing",
                    param="payment_intent",
                )
            charge = _get("charge", pi["latest_charge"])
        elif charge_id:
            charge = _get("charge", charge_id, param="charge")
            if charge["status"] != "succeeded":
                raise StripeApiError(400, "Cannot refund a failed payment.", code="charge_not_refundable",
                                     param="charge")
        else:
            raise StripeApiError(400, "One of the following params should be provided for this request: "
                                 "payment_intent or charge.", code="parameter_missing")
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeApiError(400, f"Charge {charge['id']} has already been refunded.",
                                 code="charge_already_refunded")
        if amount is None:
            amount = remaining
        if amount <= 0:
            raise StripeApiError(400, "Refund amount must be greater than 0.", code="parameter_invalid_integer",
                                 param="amount")
        if amount > remaining:
            cur = charge["currency"].upper()
            raise StripeApiError(
                400,
                f"Refund amount ({format_major(amount, cur)}) is greater than unrefunded amount on charge "
                f"({format_major(remaining, cur)})",
                code="amount_too_large",
                param="amount",
            )
        refund = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": _new_id("txn"),
            "charge": charge["id"],
            "created": _now(),
            "currency": charge["currency"],
            "metadata": _metadata(p),
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "status": "succeeded",
        }
        sb.store.put(refund)
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
    _emit("refund.created", refund)
    _emit("charge.refunded", charge, previous)
    return _json(_render(refund))


@bp.get("/v1/refunds/<refund_id>")
def retrieve_refund(refund_id: str) -> Response:
    return _json(_render(_get("refund", refund_id)))


@bp.get("/v1/refunds")
def list_refunds() -> Response:
    p = _params()
    pi_id, charge_id = _str(p, "payment_intent"), _str(p, "charge")
    created = _created_filter(p)
    items = _sb().store.find(
        lambda o: o.get("object") == "refund"
        and (pi_id is None or o.get("payment_intent") == pi_id)
        and (charge_id is None or o.get("charge") == charge_id)
        and created(o)
    )
    return _paginate(items, "/v1/refunds")
