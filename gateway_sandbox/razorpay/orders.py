"""Razorpay orders: create, list (by receipt), fetch, and an order's payments."""

from __future__ import annotations

import time

from flask import Response, request

from ..core import current_sandbox
from ._blueprint import bp
from ._common import RazorpayError, _amount, _body, _collection, _get, _json, _notes, _now, _public, _required, _rid


@bp.post("/v1/orders")
def create_order() -> Response:
    sb = current_sandbox()
    body = _body()
    currency = str(body.get("currency") or "INR")
    amount = _amount(_required(body, "amount"), currency)
    receipt = body.get("receipt")
    if receipt is not None and len(str(receipt)) > 40:
        raise RazorpayError("The receipt may not be greater than 40 characters.", field="receipt")
    capture = body.get("payment_capture", True)
    order = sb.store.put(
        {
            "id": _rid("order"),
            "entity": "order",
            "amount": amount,
            "amount_paid": 0,
            "amount_due": amount,
            "currency": currency,
            "receipt": receipt,
            "offer_id": None,
            "status": "created",
            "attempts": 0,
            "notes": _notes(body.get("notes")),
            "created_at": _now(),
            "_payment_capture": capture not in (False, 0, "0", "false"),
            "_seq": time.monotonic_ns(),
        }
    )
    return _json(_public(order))


@bp.get("/v1/orders")
def list_orders() -> Response:
    sb = current_sandbox()
    receipt = request.args.get("receipt")
    count = min(int(request.args.get("count", 10)), 100)
    skip = int(request.args.get("skip", 0))
    orders = sb.store.find(lambda o: o.get("entity") == "order" and (receipt is None or o.get("receipt") == receipt))
    orders.sort(key=lambda o: o["_seq"], reverse=True)
    return _json(_collection(orders[skip : skip + count]))


@bp.get("/v1/orders/<order_id>")
def fetch_order(order_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), order_id, "order")))


@bp.get("/v1/orders/<order_id>/payments")
def order_payments(order_id: str) -> Response:
    sb = current_sandbox()
    _get(sb, order_id, "order")
    payments = sb.store.find(lambda o: o.get("entity") == "payment" and o.get("order_id") == order_id)
    payments.sort(key=lambda o: o["_seq"], reverse=True)
    return _json(_collection(payments))
