"""Razorpay customers and their saved card tokens (`token_...`, made from a client-side test token)."""

from __future__ import annotations

import secrets
from typing import Any

from flask import Response

from ..core import Sandbox, current_sandbox
from ._blueprint import bp
from ._common import (
    _ALNUM,
    NOT_FOUND,
    RazorpayError,
    _body,
    _collection,
    _get,
    _json,
    _notes,
    _now,
    _public,
    _required,
    _rid,
)
from .cards import TEST_TOKENS, _card_entity


@bp.post("/v1/customers")
def create_customer() -> Response:
    sb = current_sandbox()
    body = _body()
    email, contact = body.get("email") or None, body.get("contact") or None
    fail_existing = str(body.get("fail_existing", "1")) not in {"0", "false", "False"}
    with sb.store.lock:
        if email or contact:
            existing = sb.store.find(
                lambda o: o.get("entity") == "customer" and o.get("email") == email and o.get("contact") == contact
            )
            if existing:
                if fail_existing:
                    raise RazorpayError("Customer already exists for the merchant", field="email")
                return _json(_public(existing[0]), 200)
        customer = sb.store.put(
            {
                "id": _rid("cust"),
                "entity": "customer",
                "name": body.get("name"),
                "email": email,
                "contact": contact,
                "gstin": body.get("gstin"),
                "notes": _notes(body.get("notes")),
                "created_at": _now(),
            }
        )
    return _json(_public(customer), 200)


@bp.get("/v1/customers/<customer_id>")
def fetch_customer(customer_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), customer_id, "customer")))


# ---------------------------------------------------------------- tokens


@bp.post("/v1/tokens")
def create_token() -> Response:
    """Save a client-side test token for a customer (sandbox stand-in for Razorpay's card tokenisation)."""
    sb = current_sandbox()
    body = _body()
    customer = _get(sb, str(_required(body, "customer_id")), "customer")
    test_token = body.get("token") or (body.get("card") or {}).get("token")
    if test_token not in TEST_TOKENS:
        raise RazorpayError("The token provided is invalid", field="token")
    card = TEST_TOKENS[str(test_token)]
    with sb.store.lock:
        # Razorpay keeps one token per card and customer: saving the same card again returns it.
        existing = sb.store.find(
            lambda o: (
                o.get("entity") == "token"
                and o.get("customer_id") == customer["id"]
                and o.get("_test_token") == test_token
                and o.get("status") == "active"
            )
        )
        if existing:
            return _json(_public(existing[0]), 200)
        token = sb.store.put(
            {
                "id": _rid("token"),
                "entity": "token",
                "token": "".join(secrets.choice(_ALNUM) for _ in range(14)),
                "bank": None,
                "wallet": None,
                "method": "card",
                "card": {**_card_entity(card), "expiry_month": card.expiry_month, "expiry_year": card.expiry_year},
                "recurring": True,
                "auth_type": None,
                "mrn": None,
                "used_at": None,
                "customer_id": customer["id"],
                "status": "active",
                "notes": _notes(body.get("notes")),
                "created_at": _now(),
                "expired_at": 1924972200,
                "_test_token": test_token,
            }
        )
    return _json(_public(token), 200)


def _customer_token(sb: Sandbox, customer_id: str, token_id: str) -> dict[str, Any]:
    token = _get(sb, token_id, "token")
    if token["customer_id"] != customer_id or token["status"] != "active":
        raise RazorpayError(NOT_FOUND, field="token_id")
    return token


@bp.get("/v1/customers/<customer_id>/tokens")
def list_tokens(customer_id: str) -> Response:
    sb = current_sandbox()
    _get(sb, customer_id, "customer")
    tokens = sb.store.find(
        lambda o: o.get("entity") == "token" and o.get("customer_id") == customer_id and o.get("status") == "active"
    )
    return _json(_collection(tokens))


@bp.get("/v1/customers/<customer_id>/tokens/<token_id>")
def fetch_token(customer_id: str, token_id: str) -> Response:
    return _json(_public(_customer_token(current_sandbox(), customer_id, token_id)))


@bp.delete("/v1/customers/<customer_id>/tokens/<token_id>")
def delete_token(customer_id: str, token_id: str) -> Response:
    sb = current_sandbox()
    with sb.store.lock:
        token = _customer_token(sb, customer_id, token_id)
        token["status"] = "deleted"
    return _json({"deleted": True})
