"""Stripe customers and payment methods: create, read, attach, detach and list a customer's cards."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from flask import Response

from ._auth import idempotent
from ._blueprint import bp
from ._common import (
    StripeApiError,
    _check_known,
    _get,
    _json,
    _metadata,
    _missing,
    _new_id,
    _now,
    _paginate,
    _params,
    _render,
    _sb,
    _str,
)
from .cards import _GENERIC, TEST_CARDS, TestCard, test_card_for
from .events import _emit


@bp.post("/v1/customers")
@idempotent
def create_customer() -> Response:
    p = _params()
    _check_known(p, {"email", "name", "description", "phone", "metadata", "payment_method"})
    customer: dict[str, Any] = {
        "id": _new_id("cus"),
        "object": "customer",
        "created": _now(),
        "description": _str(p, "description"),
        "email": _str(p, "email"),
        "name": _str(p, "name"),
        "phone": _str(p, "phone"),
        "metadata": _metadata(p),
        "livemode": False,
        "invoice_settings": {"default_payment_method": None},
        "balance": 0,
        "currency": None,
        "delinquent": False,
    }
    with _sb().store.lock:
        _sb().store.put(customer)
        pm_ref = _str(p, "payment_method")
        if pm_ref:
            _attach(_resolve_payment_method(pm_ref), customer["id"])
    _emit("customer.created", customer)
    return _json(_render(customer))


@bp.get("/v1/customers/<customer_id>")
def retrieve_customer(customer_id: str) -> Response:
    return _json(_render(_get("customer", customer_id)))


@bp.get("/v1/customers/<customer_id>/payment_methods")
def list_customer_payment_methods(customer_id: str) -> Response:
    _get("customer", customer_id)
    return _list_payment_methods(customer_id, f"/v1/customers/{customer_id}/payment_methods")


# ---------------------------------------------------------------------------------------------
# Payment methods
# ---------------------------------------------------------------------------------------------


def _fingerprint(name: str) -> str:
    return hashlib.sha256(f"sandbox-stripe-card:{name}".encode()).hexdigest()[:16]


def _card_dict(name: str, card: TestCard) -> dict[str, Any]:
    return {
        "brand": card.brand,
        "display_brand": card.brand,
        "last4": card.last4,
        "exp_month": 12,
        "exp_year": time.gmtime().tm_year + 3,
        "country": card.country,
        "funding": card.funding,
        "fingerprint": _fingerprint(name),
        "checks": {"cvc_check": "pass", "address_line1_check": None, "address_postal_code_check": None},
        "networks": {"available": [card.brand], "preferred": None},
        "three_d_secure_usage": {"supported": True},
        "wallet": None,
    }


def _new_payment_method(name: str, card: TestCard, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    pm = {
        "id": _new_id("pm"),
        "object": "payment_method",
        "type": "card",
        "card": _card_dict(name, card),
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "customer": None,
        "created": _now(),
        "livemode": False,
        "metadata": metadata or {},
        "_test_card": name,
    }
    return _sb().store.put(pm)


def _resolve_payment_method(ref: str, *, param: str = "payment_method") -> dict[str, Any]:
    """A stored payment method, or a fresh one for a test token (as Stripe does for `pm_card_visa`)."""
    test = test_card_for(ref)
    if test is not None:
        return _new_payment_method(*test)
    obj = _sb().store.get(ref)
    if obj is None or obj.get("object") != "payment_method":
        raise _missing("PaymentMethod", ref, param)
    return obj


def _test_card_of(pm: dict[str, Any]) -> TestCard:
    return TEST_CARDS[pm["_test_card"]]


@bp.post("/v1/payment_methods")
@idempotent
def create_payment_method() -> Response:
    p = _params()
    _check_known(p, {"type", "card", "billing_details", "metadata"})
    if _str(p, "type") != "card":
        raise StripeApiError(400, "The sandbox only supports payment methods of type card.", param="type")
    card = p.get("card")
    if not isinstance(card, dict) or "token" not in card:
        if isinstance(card, dict) and "number" in card:
            raise StripeApiError(
                400,
                "Sending card numbers directly to the Stripe API is not supported by the sandbox: "
                "use a test token such as tok_visa or pm_card_visa.",
                code="card_data_not_accepted",
                param="card[number]",
            )
        raise StripeApiError(400, "Missing required param: card[token].", code="parameter_missing", param="card")
    test = test_card_for(str(card["token"]))
    if test is None:
        raise _missing("token", str(card["token"]), "card[token]")
    pm = _new_payment_method(*test, metadata=_metadata(p))
    _emit("payment_method.created", pm)
    return _json(_render(pm))


@bp.get("/v1/payment_methods/<pm_id>")
def retrieve_payment_method(pm_id: str) -> Response:
    test = test_card_for(pm_id)
    if test is not None:
        # Like Stripe: a test token reads as a payment method (a new one each time).
        return _json(_render(_new_payment_method(*test)))
    return _json(_render(_get("payment_method", pm_id)))


def _attach(pm: dict[str, Any], customer_id: str) -> dict[str, Any]:
    if pm.get("customer") not in (None, customer_id):
        raise StripeApiError(
            400,
            "The payment method you provided has already been attached to a customer.",
            code="payment_method_unexpected_state",
        )
    card = _test_card_of(pm)
    if card.attach_decline:
        d = card.decline or _GENERIC
        raise StripeApiError(
            402, d.message, type="card_error", code=d.code, decline_code=d.decline_code, param=d.param
        )
    pm["customer"] = customer_id
    _emit("payment_method.attached", pm)
    return pm


@bp.post("/v1/payment_methods/<pm_id>/attach")
@idempotent
def attach_payment_method(pm_id: str) -> Response:
    p = _params()
    _check_known(p, {"customer"})
    customer_id = _str(p, "customer")
    if not customer_id:
        raise StripeApiError(400, "Missing required param: customer.", code="parameter_missing", param="customer")
    with _sb().store.lock:
        _get("customer", customer_id, param="customer")
        if test_card_for(pm_id) is None:
            pm = _get("payment_method", pm_id)
        else:
            pm = _resolve_payment_method(pm_id)
        return _json(_render(_attach(pm, customer_id)))


@bp.post("/v1/payment_methods/<pm_id>/detach")
@idempotent
def detach_payment_method(pm_id: str) -> Response:
    _check_known(_params(), set())
    with _sb().store.lock:
        pm = _get("payment_method", pm_id)
        if pm.get("customer") is None:
            raise StripeApiError(
                400,
                "The payment method you provided is not attached to a customer so detachment is impossible.",
                code="payment_method_unexpected_state",
            )
        pm["customer"] = None
    _emit("payment_method.detached", pm)
    return _json(_render(pm))


@bp.get("/v1/payment_methods")
def list_payment_methods() -> Response:
    customer_id = _str(_params(), "customer")
    if not customer_id:
        raise StripeApiError(400, "Missing required param: customer.", code="parameter_missing", param="customer")
    _get("customer", customer_id, param="customer")
    return _list_payment_methods(customer_id, "/v1/payment_methods")


def _list_payment_methods(customer_id: str, url: str) -> Response:
    p = _params()
    if _str(p, "type") not in (None, "card"):
        return _json({"object": "list", "data": [], "has_more": False, "url": url})
    items = _sb().store.find(lambda o: o.get("object") == "payment_method" and o.get("customer") == customer_id)
    return _paginate(items, url)
