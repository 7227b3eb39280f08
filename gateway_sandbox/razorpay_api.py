"""The sandbox's Razorpay wire API, mounted under /razorpay (the SDK's base_url is http://host:port/razorpay).

A stateful emulation of the calls our adapter makes, in Razorpay's own shapes: customers, saved card
tokens, orders, payments (S2S JSON and recurring, with a 3-D Secure challenge page), capture, refunds
(with `X-Refund-Idempotency`), and RazorpayX contacts, fund accounts and payouts (with
`X-Payout-Idempotency`). Errors use Razorpay's
`{"error": {"code", "description", "source", "step", "reason", "field", "metadata"}}` shape; unknown ids
answer 400 "The id provided does not exist", as Razorpay does. Webhooks are Razorpay's event envelope,
signed with `X-Razorpay-Signature` = hex HMAC-SHA256(raw body, razorpay_webhook_secret).

Sandbox extensions (not in Razorpay's API), documented in docs/sandbox-razorpay.md:
- client-side test tokens (`tok_rzp_success`, ...) stand in for card data: `POST /v1/tokens` with
  `{"customer_id", "method": "card", "token": "tok_rzp_..."}` saves one as a `token_...`, and a payment may
  name a test token directly;
- `/razorpay/_admin/...` settles, fails and reverses payouts on demand and sets auto-settlement.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Blueprint, Response, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from payment_service.domain.money import format_major

from .challenge import render_challenge
from .core import Sandbox, StoredResponse, current_sandbox

bp = Blueprint("sandbox_razorpay", __name__)

ACCOUNT_ID = "acc_SandboxRzp0001"
SETTINGS_ID = "_razorpay_settings"
NOT_FOUND = "The id provided does not exist"
OVER_REFUND = "The refund amount provided is greater than amount captured"
PAYOUT_MODES = {"NEFT", "IMPS", "UPI", "RTGS"}
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class TestCard:
    network: str
    last4: str
    issuer: str
    international: bool
    type: str = "credit"
    expiry_month: int = 12
    expiry_year: int = 2030
    # What happens when it is charged: success, decline, insufficient_funds, 3ds_success, 3ds_failure.
    outcome: str = "success"


# Client-side test tokens: what a checkout in test mode would hand the service. Card numbers never appear.
TEST_TOKENS: dict[str, TestCard] = {
    "tok_rzp_success": TestCard("Visa", "1111", "HDFC", False),
    "tok_rzp_mastercard": TestCard("MasterCard", "5449", "ICIC", False),
    "tok_rzp_rupay": TestCard("RuPay", "0008", "SBIN", False, type="debit"),
    "tok_rzp_international": TestCard("Visa", "4242", "JPMC", True),
    "tok_rzp_declined": TestCard("Visa", "0002", "HDFC", False, outcome="decline"),
    "tok_rzp_insufficient_funds": TestCard(
        "MasterCard", "9995", "ICIC", False, type="debit", outcome="insufficient_funds"
    ),
    "tok_rzp_3ds_success": TestCard("Visa", "3184", "HDFC", False, outcome="3ds_success"),
    "tok_rzp_3ds_failure": TestCard("MasterCard", "3220", "KKBK", False, outcome="3ds_failure"),
}

# error_reason -> (description, source, step) for failed payments.
FAILURES: dict[str, tuple[str, str, str]] = {
    "payment_failed": ("Payment failed. The card was declined by the issuing bank.", "bank", "payment_authorization"),
    "insufficient_funds": (
        "Payment failed due to insufficient balance in the customer's account.",
        "customer",
        "payment_authorization",
    ),
    "authentication_failed": (
        "Payment failed because the cardholder could not be authenticated.",
        "customer",
        "payment_authentication",
    ),
    "payment_timed_out": ("Payment was not completed in time.", "customer", "payment_authentication"),
    "order_already_paid": ("Order has already been paid.", "business", "payment_initiation"),
}


# ---------------------------------------------------------------- helpers


class RazorpayError(Exception):
    def __init__(
        self,
        description: str,
        *,
        status: int = 400,
        code: str = "BAD_REQUEST_ERROR",
        field: str | None = None,
        reason: str = "input_validation_failed",
        source: str = "business",
        step: str = "payment_initiation",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(description)
        self.body = {
            "error": {
                "code": code,
                "description": description,
                "source": source,
                "step": step,
                "reason": reason,
                "field": field,
                "metadata": metadata or {},
            }
        }
        self.status = status


@bp.errorhandler(RazorpayError)
def _razorpay_error(exc: RazorpayError) -> Response:
    return _json(exc.body, exc.status)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _now() -> int:
    return int(time.time())


def _rid(prefix: str) -> str:
    """Razorpay-looking ids: prefix + 14 base62 characters."""
    return f"{prefix}_" + "".join(secrets.choice(_ALNUM) for _ in range(14))


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as Razorpay shows it: without the sandbox's own `_` bookkeeping fields."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}


def _collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"entity": "collection", "count": len(items), "items": [_public(i) for i in items]}


def _body() -> dict[str, Any]:
    if not request.data:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise RazorpayError("The request body is not valid JSON")
    return body


def _get(sb: Sandbox, object_id: str, entity: str) -> dict[str, Any]:
    obj = sb.store.get(object_id)
    if obj is None or obj.get("entity") != entity:
        raise RazorpayError(NOT_FOUND, field="id")
    return obj


def _notes(value: Any) -> dict[str, Any]:
    if value is None or value == []:
        return {}
    if not isinstance(value, dict) or len(value) > 15:
        raise RazorpayError("notes must be an object of at most 15 key-value pairs", field="notes")
    return {str(k): str(v)[:256] for k, v in value.items()}


def _amount(value: Any, currency: str, field: str = "amount") -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise RazorpayError(f"The {field} must be an integer.", field=field)
    amount = int(value)
    if currency == "INR" and amount < 100:
        raise RazorpayError("The amount must be at least INR 1.00", field=field)
    if amount <= 0:
        raise RazorpayError(f"The {field} must be greater than zero.", field=field)
    return amount


def _required(body: dict[str, Any], name: str) -> Any:
    if body.get(name) in (None, ""):
        raise RazorpayError(f"The {name} field is required.", field=name)
    return body[name]


def _settings(sb: Sandbox) -> dict[str, Any]:
    with sb.store.lock:
        settings = sb.store.get(SETTINGS_ID)
        if settings is None:
            settings = sb.store.put(
                {
                    "id": SETTINGS_ID,
                    "auto_settle_payouts": False,
                    "auto_settle_delay_ms": 0,
                    "auto_settle_result": "processed",
                    "initial_payout_status": "processing",
                }
            )
        return settings


def _key_secret() -> str:
    """The key secret of this API call: Razorpay signs callback parameters with the merchant's secret."""
    auth = request.authorization
    return (auth.password if auth else None) or ""


def _sign(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- webhooks


def emit_event(sb: Sandbox, event: str, entities: dict[str, dict[str, Any]]) -> None:
    """Razorpay's event envelope, signed over the exact bytes sent, handed to the shared dispatcher."""
    envelope = {
        "entity": "event",
        "account_id": ACCOUNT_ID,
        "event": event,
        "contains": list(entities),
        "payload": {name: {"entity": _public(obj)} for name, obj in entities.items()},
        "created_at": _now(),
    }
    raw = json.dumps(envelope, separators=(",", ":")).encode()
    event_id = "".join(secrets.choice(_ALNUM) for _ in range(14))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Razorpay-Webhook/v1",
        "X-Razorpay-Signature": _sign(sb.config.razorpay_webhook_secret, raw.decode()),
        "X-Razorpay-Event-Id": event_id,
    }
    sb.webhooks.emit("razorpay", event_id, event, raw, headers)


# ---------------------------------------------------------------- auth


@bp.before_request
def _authenticate() -> Response | None:
    path = request.path
    if "/3ds/" in path or "/_admin/" in path:
        return None  # the customer's browser and the sandbox's operator carry no API keys
    sb = current_sandbox()
    auth = request.authorization
    key_id = auth.username if auth else None
    secret = auth.password if auth else None
    ok = bool(key_id) and bool(secret)
    if ok and sb.config.razorpay_key_id is not None:
        ok = hmac.compare_digest(str(key_id), sb.config.razorpay_key_id)
    if ok and sb.config.razorpay_key_secret is not None:
        ok = hmac.compare_digest(str(secret), sb.config.razorpay_key_secret)
    if not ok:
        return _json(RazorpayError("The api key provided is invalid", status=401).body, 401)
    return None


# ---------------------------------------------------------------- customers


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


def _card_entity(card: TestCard) -> dict[str, Any]:
    return {
        "id": "card_" + hashlib.sha256(card.last4.encode() + card.network.encode()).hexdigest()[:14],
        "entity": "card",
        "name": "Sandbox Cardholder",
        "last4": card.last4,
        "network": card.network,
        "type": card.type,
        "issuer": card.issuer,
        "international": card.international,
        "emi": False,
        "sub_type": "consumer",
    }


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


# ---------------------------------------------------------------- orders


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


# ---------------------------------------------------------------- payments


def _fail_payment(sb: Sandbox, payment: dict[str, Any], reason: str) -> None:
    description, source, step = FAILURES[reason]
    payment.update(
        status="failed",
        error_code="BAD_REQUEST_ERROR",
        error_description=description,
        error_source=source,
        error_step=step,
        error_reason=reason,
    )
    emit_event(sb, "payment.failed", {"payment": payment})


def _authorize_payment(sb: Sandbox, payment: dict[str, Any]) -> None:
    """Authorized, then captured at once when the order says so (payment_capture=1)."""
    order = _get(sb, payment["order_id"], "order")
    if order["status"] == "paid":
        _fail_payment(sb, payment, "order_already_paid")
        return
    payment["status"] = "authorized"
    payment["acquirer_data"] = {"auth_code": "".join(secrets.choice(string.digits) for _ in range(6))}
    emit_event(sb, "payment.authorized", {"payment": payment})
    if order["_payment_capture"]:
        _capture_payment(sb, payment, order)


def _capture_payment(sb: Sandbox, payment: dict[str, Any], order: dict[str, Any]) -> None:
    payment.update(status="captured", captured=True, fee=0, tax=0)
    order.update(status="paid", amount_paid=payment["amount"], amount_due=0)
    emit_event(sb, "payment.captured", {"payment": payment})
    emit_event(sb, "order.paid", {"payment": payment, "order": order})


def _resolve_card(sb: Sandbox, body: dict[str, Any]) -> tuple[TestCard, dict[str, Any] | None]:
    """The card behind the payment's `token`: a saved token_... of the customer, or a client-side test token."""
    token_ref = str(_required(body, "token"))
    if token_ref in TEST_TOKENS:
        return TEST_TOKENS[token_ref], None
    token = sb.store.get(token_ref)
    if token is None or token.get("entity") != "token" or token.get("status") != "active":
        raise RazorpayError("The token provided is invalid or has been deleted", field="token")
    if token["customer_id"] != body.get("customer_id"):
        raise RazorpayError("The token does not belong to the customer", field="customer_id")
    return TEST_TOKENS[token["_test_token"]], token


def _create_payment(recurring: bool) -> Response:
    sb = current_sandbox()
    body = _body()
    order_id = str(_required(body, "order_id"))
    with sb.store.lock:
        order = _get(sb, order_id, "order")
        currency = str(body.get("currency") or order["currency"])
        amount = _amount(_required(body, "amount"), currency)
        if amount != order["amount_due"] or currency != order["currency"]:
            raise RazorpayError(
                "Your payment amount is different from your order amount. "
                "To pay successfully, please try using right amount.",
                field="amount",
            )
        if order["status"] == "paid":
            raise RazorpayError("Order has already been paid", field="order_id", reason="order_already_paid")
        customer_id = body.get("customer_id")
        if customer_id is not None:
            _get(sb, str(customer_id), "customer")
        card, token = _resolve_card(sb, body)
        outcome = card.outcome
        if outcome == "success" and body.get("auth_type") == "3ds":
            outcome = "3ds_success"  # authentication asked for explicitly (step-up): challenge a frictionless card
        payment = sb.store.put(
            {
                "id": _rid("pay"),
                "entity": "payment",
                "amount": amount,
                "currency": currency,
                "status": "created",
                "order_id": order_id,
                "invoice_id": None,
                "international": card.international,
                "method": "card",
                "amount_refunded": 0,
                "refund_status": None,
                "captured": False,
                "description": body.get("description"),
                "card_id": _card_entity(card)["id"],
                "card": _card_entity(card),
                "bank": None,
                "wallet": None,
                "vpa": None,
                "email": body.get("email"),
                "contact": body.get("contact"),
                "customer_id": customer_id,
                "token_id": token["id"] if token else None,
                "recurring": recurring,
                "notes": _notes(body.get("notes")),
                "fee": None,
                "tax": None,
                "error_code": None,
                "error_description": None,
                "error_source": None,
                "error_step": None,
                "error_reason": None,
                "acquirer_data": {},
                "created_at": _now(),
                "_callback_url": body.get("callback_url"),
                "_outcome": outcome,
                "_seq": time.monotonic_ns(),
            }
        )
        order["attempts"] += 1
        order["status"] = "attempted"
        if token is not None:
            token["used_at"] = _now()
        signature = _sign(_key_secret(), f"{order_id}|{payment['id']}")
        payment["_signature"] = signature
        if outcome in {"decline", "insufficient_funds"}:
            reason = "payment_failed" if outcome == "decline" else "insufficient_funds"
            _fail_payment(sb, payment, reason)
            description, source, step = FAILURES[reason]
            raise RazorpayError(
                description,
                reason=reason,
                source=source,
                step=step,
                metadata={"payment_id": payment["id"], "order_id": order_id},
            )
        result: dict[str, Any] = {"razorpay_payment_id": payment["id"]}
        if outcome.startswith("3ds"):
            url = f"{sb.config.public_url}/razorpay/3ds/{payment['id']}"
            result["next"] = [{"action": "redirect", "url": url}]
            return _json(result)
        _authorize_payment(sb, payment)
        if payment["status"] == "failed":
            raise RazorpayError(
                str(payment["error_description"]),
                reason=str(payment["error_reason"]),
                metadata={"payment_id": payment["id"], "order_id": order_id},
            )
        result.update(razorpay_order_id=order_id, razorpay_signature=signature, next=[])
    return _json(result)


@bp.post("/v1/payments/create/json")
def create_payment_json() -> Response:
    return _create_payment(recurring=False)


@bp.post("/v1/payments/create/recurring")
def create_payment_recurring() -> Response:
    return _create_payment(recurring=True)


# Razorpay's bounds on `from` / `to` (its error says so: "from must be between 946684800 and 4765046400").
_MIN_TS, _MAX_TS = 946684800, 4765046400


def _list_window(entity: str) -> Response:
    """Razorpay's collection listing: `from` and `to` (unix seconds, both inclusive) on `created_at`,
    `count` 1 to 100 (default 10), `skip` (default 0); newest first."""
    sb = current_sandbox()
    bounds: dict[str, int | None] = {}
    for name in ("from", "to", "count", "skip"):
        raw = request.args.get(name)
        if raw is None or raw == "":
            bounds[name] = None
            continue
        if not raw.isdigit():
            raise RazorpayError(f"The {name} must be an integer.", field=name)
        bounds[name] = int(raw)
    for name in ("from", "to"):
        value = bounds[name]
        if value is not None and not _MIN_TS <= value <= _MAX_TS:
            raise RazorpayError(f"{name} must be between {_MIN_TS} and {_MAX_TS}", field=name)
    count = 10 if bounds["count"] is None else bounds["count"]
    if not 1 <= count <= 100:
        raise RazorpayError("The count must be between 1 and 100.", field="count")
    skip = bounds["skip"] or 0
    start, end = bounds["from"], bounds["to"]
    if start is not None and end is not None and start > end:
        raise RazorpayError("from must be less than or equal to to", field="from")
    items = sb.store.find(
        lambda o: o.get("entity") == entity
        and (start is None or o["created_at"] >= start)
        and (end is None or o["created_at"] <= end)
    )
    items.sort(key=lambda o: (o["created_at"], o.get("_seq", 0)), reverse=True)
    return _json(_collection(items[skip : skip + count]))


@bp.get("/v1/payments")
def list_payments() -> Response:
    return _list_window("payment")


@bp.get("/v1/refunds")
def list_refunds() -> Response:
    return _list_window("refund")


@bp.get("/v1/payments/<payment_id>")
def fetch_payment(payment_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), payment_id, "payment")))


@bp.patch("/v1/payments/<payment_id>")
def edit_payment(payment_id: str) -> Response:
    sb = current_sandbox()
    body = _body()
    with sb.store.lock:
        payment = _get(sb, payment_id, "payment")
        payment["notes"] = {**payment["notes"], **_notes(body.get("notes"))}
    return _json(_public(payment))


@bp.post("/v1/payments/<payment_id>/capture")
def capture_payment(payment_id: str) -> Response:
    sb = current_sandbox()
    body = _body()
    with sb.store.lock:
        payment = _get(sb, payment_id, "payment")
        amount = _amount(_required(body, "amount"), payment["currency"])
        if payment["status"] in {"captured", "refunded"}:
            raise RazorpayError("This payment has already been captured", field="payment_id")
        if payment["status"] != "authorized":
            raise RazorpayError("Only payments which have been authorized and not yet captured can be captured")
        if amount != payment["amount"]:
            raise RazorpayError("Capture amount must be equal to the amount authorized", field="amount")
        if body.get("currency") not in (None, payment["currency"]):
            raise RazorpayError("The currency should be same as the payment currency", field="currency")
        _capture_payment(sb, payment, _get(sb, payment["order_id"], "order"))
    return _json(_public(payment))


# ---------------------------------------------------------------- 3-D Secure


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


# ---------------------------------------------------------------- idempotency (refunds, payouts)

REFUND_KEY_HEADER = "X-Refund-Idempotency"
PAYOUT_KEY_HEADER = "X-Payout-Idempotency"


def _idempotent(
    sb: Sandbox,
    kind: str,
    key: str,
    path: str,
    body: dict[str, Any],
    create: Callable[[], Response],
    *,
    header: str,
    other_body: str,
) -> Response:
    """Razorpay's idempotency headers: the same key and body answer the first response again; the same
    key with another body is 400; the same key while the first request is still running is 409.

    Keys are scoped per API key id and kind. Only a created object is remembered: a request that was
    refused (validation, over-refund) may be sent again with the same key."""
    auth = request.authorization
    scope = f"razorpay:{kind}:{auth.username if auth else ''}"
    fingerprint = sb.idempotency.fingerprint("POST", path, body)
    stored = sb.idempotency.begin(scope, key)
    if stored is False:
        raise RazorpayError("A request with the same idempotency key is in progress", status=409, field=header)
    if isinstance(stored, StoredResponse):
        if stored.fingerprint != fingerprint:
            raise RazorpayError(other_body, field=header)
        return Response(stored.body, status=stored.status, mimetype="application/json")
    try:
        response = create()
    except BaseException:
        sb.idempotency.finish(scope, key, None)
        raise
    sb.idempotency.finish(scope, key, StoredResponse(fingerprint, response.status_code, response.get_data(), {}))
    return response


# ---------------------------------------------------------------- refunds


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


# ---------------------------------------------------------------- RazorpayX: contacts and fund accounts


@bp.post("/v1/contacts")
def create_contact() -> Response:
    sb = current_sandbox()
    body = _body()
    name = str(_required(body, "name"))
    fields = {k: body.get(k) for k in ("email", "contact", "type", "reference_id")}
    with sb.store.lock:
        # RazorpayX returns the existing contact (200) when one with the same details exists.
        existing = sb.store.find(
            lambda o: (
                o.get("entity") == "contact" and o["name"] == name and all(o.get(k) == v for k, v in fields.items())
            )
        )
        if existing:
            return _json(_public(existing[0]), 200)
        contact = sb.store.put(
            {
                "id": _rid("cont"),
                "entity": "contact",
                "name": name,
                **fields,
                "batch_id": None,
                "active": True,
                "notes": _notes(body.get("notes")),
                "created_at": _now(),
            }
        )
    return _json(_public(contact), 201)


@bp.get("/v1/contacts/<contact_id>")
def fetch_contact(contact_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), contact_id, "contact")))


@bp.post("/v1/fund_accounts")
def create_fund_account() -> Response:
    sb = current_sandbox()
    body = _body()
    contact = _get(sb, str(_required(body, "contact_id")), "contact")
    account_type = _required(body, "account_type")
    details: dict[str, Any]
    if account_type == "bank_account":
        bank = body.get("bank_account") or {}
        for name in ("name", "ifsc", "account_number"):
            if not bank.get(name):
                raise RazorpayError(f"The bank_account.{name} field is required.", field=f"bank_account.{name}")
        ifsc, number = str(bank["ifsc"]).upper(), str(bank["account_number"])
        if len(ifsc) != 11 or not ifsc[:4].isalpha() or ifsc[4] != "0":
            raise RazorpayError("The ifsc must be 11 characters (4 letters, 0, 6 characters).", field="ifsc")
        if not number.isdigit() or not 5 <= len(number) <= 35:
            raise RazorpayError("The account number is invalid.", field="account_number")
        details = {"ifsc": ifsc, "bank_name": f"{ifsc[:4]} Bank", "name": str(bank["name"]), "account_number": number}
    elif account_type == "vpa":
        address = str((body.get("vpa") or {}).get("address") or "")
        if "@" not in address:
            raise RazorpayError("Invalid VPA. Please enter a valid Virtual Payment Address", field="vpa.address")
        details = {"address": address}
    else:
        raise RazorpayError("The selected account type is invalid.", field="account_type")
    with sb.store.lock:
        existing = sb.store.find(
            lambda o: (
                o.get("entity") == "fund_account"
                and o["contact_id"] == contact["id"]
                and o.get(account_type) == details
                and o["active"]
            )
        )
        if existing:
            return _json(_public(existing[0]), 200)
        fund_account = sb.store.put(
            {
                "id": _rid("fa"),
                "entity": "fund_account",
                "contact_id": contact["id"],
                "account_type": account_type,
                account_type: details,
                "batch_id": None,
                "active": True,
                "created_at": _now(),
            }
        )
    return _json(_public(fund_account), 201)


@bp.get("/v1/fund_accounts/<fund_account_id>")
def fetch_fund_account(fund_account_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), fund_account_id, "fund_account")))


# ---------------------------------------------------------------- RazorpayX: payouts


def _payout_fields(body: dict[str, Any]) -> dict[str, Any]:
    account_number = str(_required(body, "account_number"))
    if not account_number.isdigit() or not 8 <= len(account_number) <= 20:
        raise RazorpayError("The account number is invalid.", field="account_number")
    currency = str(_required(body, "currency"))
    if currency != "INR":
        raise RazorpayError("The currency must be INR.", field="currency")
    mode = str(_required(body, "mode")).upper()
    if mode not in PAYOUT_MODES:
        raise RazorpayError("The selected mode is invalid.", field="mode")
    reference_id = body.get("reference_id")
    if reference_id is not None and len(str(reference_id)) > 40:
        raise RazorpayError("The reference id may not be greater than 40 characters.", field="reference_id")
    return {
        "account_number": account_number,
        "fund_account_id": str(_required(body, "fund_account_id")),
        "amount": _amount(_required(body, "amount"), currency),
        "currency": currency,
        "mode": mode,
        "purpose": str(_required(body, "purpose")),
        "reference_id": reference_id,
        "narration": body.get("narration"),
        "notes": _notes(body.get("notes")),
    }


@bp.post("/v1/payouts")
def create_payout() -> Response:
    sb = current_sandbox()
    key = request.headers.get(PAYOUT_KEY_HEADER)
    if not key:
        raise RazorpayError(
            "Idempotency key is missing. Include idempotency header and key in the request.",
            field=PAYOUT_KEY_HEADER,
            reason="null",
            step="null",
        )
    if not 4 <= len(key) <= 36 or any(c not in _ALNUM + "-_ " for c in key):
        raise RazorpayError(
            "The idempotency key must be 4 to 36 characters: letters, numbers, hyphens, underscores and spaces.",
            field=PAYOUT_KEY_HEADER,
        )
    body = _body()
    return _idempotent(
        sb,
        "payout",
        key,
        "/v1/payouts",
        body,
        lambda: _create_payout(sb, body),
        header=PAYOUT_KEY_HEADER,
        other_body="Different request body sent for the same idempotency key. Use a new idempotency key.",
    )


def _create_payout(sb: Sandbox, body: dict[str, Any]) -> Response:
    fields = _payout_fields(body)
    with sb.store.lock:
        fund_account = _get(sb, fields["fund_account_id"], "fund_account")
        if not fund_account["active"]:
            raise RazorpayError("The fund account is not active", field="fund_account_id")
        kind = fund_account["account_type"]
        if (kind == "vpa") != (fields["mode"] == "UPI"):
            raise RazorpayError(
                f"Invalid combination of payout mode ({fields['mode']}) and beneficiary account type ({kind})",
                field="mode",
            )
        settings = _settings(sb)
        payout = sb.store.put(
            {
                "id": _rid("pout"),
                "entity": "payout",
                "fund_account_id": fields["fund_account_id"],
                "amount": fields["amount"],
                "currency": fields["currency"],
                "notes": fields["notes"],
                "fees": 0,
                "tax": 0,
                "status": settings["initial_payout_status"],
                "utr": None,
                "mode": fields["mode"],
                "purpose": fields["purpose"],
                "reference_id": fields["reference_id"],
                "narration": fields["narration"],
                "batch_id": None,
                "failure_reason": None,
                "status_details": None,
                "created_at": _now(),
                "_account_number": fields["account_number"],
            }
        )
        first_event = {"processing": "payout.initiated", "queued": "payout.queued", "pending": "payout.pending"}
        emit_event(sb, first_event[payout["status"]], {"payout": payout})
        if settings["auto_settle_payouts"]:
            timer = threading.Timer(
                settings["auto_settle_delay_ms"] / 1000.0,
                _auto_settle,
                args=(sb, payout["id"], settings["auto_settle_result"]),
            )
            timer.daemon = True
            timer.start()
        return _json(_public(payout), 200)


def _auto_settle(sb: Sandbox, payout_id: str, result: str) -> None:
    try:
        transition_payout(sb, payout_id, result)
    except RazorpayError:
        pass  # already moved on demand meanwhile


def transition_payout(
    sb: Sandbox, payout_id: str, to: str, *, utr: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """queued/pending/processing -> processed (with utr) | failed | cancelled; processed -> reversed."""
    allowed = {
        "processed": {"queued", "pending", "processing"},
        "failed": {"queued", "pending", "processing"},
        "cancelled": {"queued", "pending"},
        "reversed": {"processed"},
    }
    with sb.store.lock:
        payout = _get(sb, payout_id, "payout")
        if payout["status"] not in allowed[to]:
            raise RazorpayError(f"Payout in status {payout['status']} cannot be moved to {to}", field="status")
        payout["status"] = to
        if to == "processed":
            digits = "".join(secrets.choice(string.digits) for _ in range(12))
            payout["utr"] = utr or (digits if payout["mode"] != "NEFT" else f"SBIN{digits}")
            payout["status_details"] = {
                "description": "Payout is processed and the money has been credited into the beneficiary account.",
                "source": "beneficiary_bank",
                "reason": "payout_processed",
            }
        elif to == "failed":
            description = reason or "Payout failed. The beneficiary bank rejected the transfer."
            payout["failure_reason"] = description
            payout["status_details"] = {
                "description": description,
                "source": "beneficiary_bank",
                "reason": "bank_rejected",
            }
        elif to == "reversed":
            description = reason or "Payout was reversed by the beneficiary bank."
            payout["failure_reason"] = description
            payout["status_details"] = {
                "description": description,
                "source": "beneficiary_bank",
                "reason": "payout_reversed",
            }
        else:
            payout["status_details"] = {
                "description": "Payout cancelled by the business.",
                "source": "business",
                "reason": "cancelled",
            }
        event = {"processed": "payout.processed", "failed": "payout.failed", "reversed": "payout.reversed"}.get(to)
        if event:
            emit_event(sb, event, {"payout": payout})
        return payout


@bp.get("/v1/payouts/<payout_id>")
def fetch_payout(payout_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), payout_id, "payout")))


@bp.get("/v1/payouts")
def list_payouts() -> Response:
    sb = current_sandbox()
    account_number = request.args.get("account_number")
    if not account_number:
        raise RazorpayError("The account number field is required.", field="account_number")
    reference_id = request.args.get("reference_id")
    payouts = sb.store.find(
        lambda o: (
            o.get("entity") == "payout"
            and o["_account_number"] == account_number
            and (reference_id is None or o.get("reference_id") == reference_id)
        )
    )
    payouts.sort(key=lambda o: o["created_at"], reverse=True)
    return _json(_collection(payouts))


@bp.post("/v1/payouts/<payout_id>/cancel")
def cancel_payout(payout_id: str) -> Response:
    return _json(_public(transition_payout(current_sandbox(), payout_id, "cancelled")))


# ---------------------------------------------------------------- sandbox admin (no API keys)


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


# ---------------------------------------------------------------- sandbox admin: settlement days


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
