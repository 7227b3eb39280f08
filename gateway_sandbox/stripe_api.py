"""The sandbox's Stripe wire API, mounted under /stripe (the Stripe SDK's api base is `<sandbox>/stripe`).

A stateful emulation of the parts of https://docs.stripe.com/api that the Stripe adapter uses:
customers, payment methods (from Stripe's public test tokens such as `pm_card_visa`), payment
intents (create with confirm, confirm, cancel, retrieve, list, search), charges (read only),
refunds and events. Requests are form-encoded the way the SDK sends them; responses are JSON in
Stripe's object shapes; errors are Stripe's `{"error": {...}}` with Stripe's HTTP statuses.

Like Stripe's test mode it honours `Idempotency-Key` (same key and parameters: the stored
response again, with `Idempotent-Replayed: true`; other parameters: 400 `idempotency_error`;
still running: 409 `idempotency_key_in_use`), answers a card that needs 3-D Secure with
`next_action.redirect_to_url` pointing at a challenge page served here (GET/POST
`/stripe/3ds/<pi_id>`), and sends every state change as a signed webhook event
(`Stripe-Signature: t=...,v1=...`) through the shared WebhookDispatcher.

Test payment methods are described in docs/sandbox.md. No card number is ever stored or
returned: a test token maps straight to its card metadata (brand, last4, expiry, country).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, g, request
from werkzeug.datastructures import MultiDict

from payment_service.domain.money import format_major

from .challenge import render_challenge
from .core import IdempotencyCache, Sandbox, StoredResponse, current_sandbox

bp = Blueprint("sandbox_stripe", __name__)

API_VERSION = "2025-03-31.basil"
DOC_URL = "https://docs.stripe.com/error-codes"

# ---------------------------------------------------------------------------------------------
# Test payment methods: Stripe's public test tokens, mapped to card metadata and a behaviour.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decline:
    code: str  # Stripe error code (card_declined, expired_card, incorrect_cvc, processing_error, ...)
    decline_code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class TestCard:
    brand: str
    last4: str
    country: str = "US"
    funding: str = "credit"
    three_d_secure: bool = False  # the charge needs the customer to authenticate first
    decline: Decline | None = None  # declined at charge time (after authentication, if any)
    attach_decline: bool = False  # refused when attached to a customer, like Stripe's decline cards


_GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.")
_INSUFFICIENT = Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")

# Keyed by the token's name without its `pm_card_` / `tok_` prefix. Last four digits only.
TEST_CARDS: dict[str, TestCard] = {
    "visa": TestCard("visa", "4242"),
    "visa_debit": TestCard("visa", "5556", funding="debit"),
    "mastercard": TestCard("mastercard", "4444"),
    "mastercard_debit": TestCard("mastercard", "8210", funding="debit"),
    "amex": TestCard("amex", "8431"),
    "discover": TestCard("discover", "1117"),
    "jcb": TestCard("jcb", "0505", country="JP"),
    "unionpay": TestCard("unionpay", "0005", country="CN"),
    "in": TestCard("visa", "0008", country="IN"),
    "threeDSecureOptional": TestCard("visa", "3055"),
    "chargeDeclined": TestCard("visa", "0002", decline=_GENERIC, attach_decline=True),
    "chargeDeclinedInsufficientFunds": TestCard("visa", "9995", decline=_INSUFFICIENT, attach_decline=True),
    "chargeDeclinedLostCard": TestCard(
        "visa", "9987", decline=Decline("card_declined", "lost_card", "Your card was declined."), attach_decline=True
    ),
    "chargeDeclinedStolenCard": TestCard(
        "visa", "9979", decline=Decline("card_declined", "stolen_card", "Your card was declined."), attach_decline=True
    ),
    "chargeDeclinedFraudulent": TestCard(
        "visa", "0019", decline=Decline("card_declined", "fraudulent", "Your card was declined."), attach_decline=True
    ),
    "chargeDeclinedExpiredCard": TestCard(
        "visa",
        "0069",
        decline=Decline("expired_card", "expired_card", "Your card has expired.", "exp_month"),
        attach_decline=True,
    ),
    "chargeDeclinedIncorrectCvc": TestCard(
        "visa",
        "0127",
        decline=Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", "cvc"),
        attach_decline=True,
    ),
    "chargeDeclinedProcessingError": TestCard(
        "visa",
        "0119",
        decline=Decline(
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        attach_decline=True,
    ),
    "chargeDeclinedVelocityLimitExceeded": TestCard(
        "visa",
        "6975",
        decline=Decline("card_declined", "card_velocity_exceeded", "Your card was declined."),
    ),
    # Attaches fine, but every charge is declined (like Stripe's "chargeCustomerFail").
    "chargeCustomerFail": TestCard("visa", "0341", decline=_GENERIC),
    # 3-D Secure: the charge answers requires_action; the challenge page decides the outcome.
    "threeDSecure2Required": TestCard("visa", "3220", three_d_secure=True),
    "threeDSecureRequired": TestCard("visa", "3063", three_d_secure=True),
    "authenticationRequired": TestCard("visa", "3184", country="DE", three_d_secure=True),
    "authenticationRequiredOnSetup": TestCard("visa", "3155", country="DE", three_d_secure=True),
    # 3-D Secure, and when the customer does authenticate the charge is still declined (insufficient funds).
    "authenticationRequiredChargeDeclinedInsufficientFunds": TestCard(
        "visa", "3178", country="DE", three_d_secure=True, decline=_INSUFFICIENT
    ),
}


def test_card_for(token: str) -> tuple[str, TestCard] | None:
    """The (name, card) of a Stripe test token (`pm_card_visa`, `tok_visa`, `pm_card_visa_chargeDeclined`)."""
    for prefix in ("pm_card_", "tok_"):
        if token.startswith(prefix):
            name = token[len(prefix) :]
            if name in TEST_CARDS:
                return name, TEST_CARDS[name]
            # Stripe spells several decline tokens both ways: pm_card_chargeDeclined and pm_card_visa_chargeDeclined.
            if name.startswith("visa_") and name[5:] in TEST_CARDS:
                return name[5:], TEST_CARDS[name[5:]]
    return None


_THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}


# ---------------------------------------------------------------------------------------------
# Errors and responses
# ---------------------------------------------------------------------------------------------


class StripeApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.body["code"] = code
            self.body["doc_url"] = f"{DOC_URL}#{code.replace('_', '-')}"
        if param is not None:
            self.body["param"] = param
        if decline_code is not None:
            self.body["decline_code"] = decline_code
        if extra:
            self.body.update(extra)


def _missing(kind: str, object_id: str, param: str | None = None) -> StripeApiError:
    return StripeApiError(
        400 if param else 404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, indent=2), status=status, mimetype="application/json")


def _error_response(exc: StripeApiError) -> Response:
    body = dict(exc.body)
    body["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{g.get('request_id', 'req_sandbox')}"
    return _json({"error": body}, exc.status)


@bp.errorhandler(StripeApiError)
def _handle_stripe_error(exc: StripeApiError) -> Response:
    return _error_response(exc)


# ---------------------------------------------------------------------------------------------
# Parameters (Stripe form encoding: a[b]=1, a[0]=x, a[]=x)
# ---------------------------------------------------------------------------------------------

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        value = {k: _listify(v) for k, v in value.items()}
        if value and all(k.isdigit() for k in value):
            return [value[k] for k in sorted(value, key=int)]
    return value


def parse_form(pairs: MultiDict[str, str]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs.items(multi=True):
        m = _KEY.match(key)
        if not m:
            raise StripeApiError(400, f"Invalid parameter name: {key}", param=key)
        path = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        node = root
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if part == "":
                part = str(len(node))
            if last:
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise StripeApiError(400, f"Invalid parameter: {key}", param=key)
                node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def _params() -> dict[str, Any]:
    if "stripe_params" not in g:
        g.stripe_params = parse_form(request.args if request.method == "GET" else request.form)
    params: dict[str, Any] = g.stripe_params
    return params


def _check_known(params: dict[str, Any], allowed: set[str]) -> None:
    for key in params:
        if key not in allowed and key != "expand":
            raise StripeApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key)


def _int(params: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise StripeApiError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        return None
    if not isinstance(raw, str) or not re.fullmatch(r"-?\d+", raw):
        raise StripeApiError(400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name)
    return int(raw)


def _bool(params: dict[str, Any], name: str) -> bool:
    raw = params.get(name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise StripeApiError(400, f"Invalid boolean: {raw}", param=name)
    return raw == "true"


def _str(params: dict[str, Any], name: str) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise StripeApiError(400, f"Invalid string: {name}", code="parameter_invalid_string", param=name)
    return raw


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    raw = params.get("metadata", {})
    if raw == "":
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise StripeApiError(400, "Invalid metadata: must be a hash of strings", param="metadata")
    if len(raw) > 50:
        raise StripeApiError(400, "Invalid metadata: at most 50 keys", param="metadata")
    return dict(raw)


def _expand_list() -> list[str]:
    raw = _params().get("expand", [])
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return raw
    raise StripeApiError(400, "Invalid expand", param="expand")


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------


def _sb() -> Sandbox:
    return current_sandbox()


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as Stripe shows it: without the sandbox's private `_` fields."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}


def _render(obj: dict[str, Any], expand: list[str] | None = None) -> dict[str, Any]:
    out = _public(obj)
    for path in expand if expand is not None else _expand_list():
        head, _, rest = path.partition(".")
        if head.startswith("data") and out.get("object") in ("list", "search_result"):
            out["data"] = [_render_dict(item, [rest] if rest else []) for item in out.get("data", [])]
            continue
        ref = out.get(head)
        if isinstance(ref, str):
            target = _sb().store.get(ref)
            if target is not None:
                out[head] = _render(target, [rest] if rest else [])
        elif isinstance(ref, dict) and rest:
            out[head] = _render_dict(ref, [rest])
    return out


def _render_dict(obj: dict[str, Any], expand: list[str]) -> dict[str, Any]:
    return _render(obj, expand) if expand else obj


def _now() -> int:
    return int(time.time())


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _get(kind: str, object_id: str, *, param: str | None = None) -> dict[str, Any]:
    obj = _sb().store.get(object_id)
    if obj is None or obj.get("object") != kind or obj.get("deleted"):
        raise _missing(kind, object_id, param)
    return obj


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


# ---------------------------------------------------------------------------------------------
# Webhook events
# ---------------------------------------------------------------------------------------------


def sign_payload(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's signature header: `t=<unix ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">`."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def _emit(event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    sb = _sb()
    data: dict[str, Any] = {"object": _public(obj)}
    if previous:
        data["previous_attributes"] = previous
    event: dict[str, Any] = {
        "id": _new_id("evt"),
        "object": "event",
        "api_version": request.headers.get("Stripe-Version", API_VERSION),
        "created": _now(),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": g.get("request_id"), "idempotency_key": request.headers.get("Idempotency-Key")},
        "type": event_type,
    }
    sb.store.put(event)
    body = json.dumps(event).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": sign_payload(body, sb.config.stripe_webhook_secret),
    }
    sb.webhooks.emit("stripe", event["id"], event_type, body, headers)
    return event


# ---------------------------------------------------------------------------------------------
# Authentication, request ids, idempotency
# ---------------------------------------------------------------------------------------------


@bp.before_request
def _authenticate() -> Response | None:
    g.request_id = _new_id("req")
    if not request.path.startswith("/stripe/v1/"):
        return None  # the 3-D Secure pages are for the customer's browser, not API clients
    auth = request.headers.get("Authorization", "")
    key = ""
    if auth.startswith("Bearer "):
        key = auth[len("Bearer ") :].strip()
    elif request.authorization is not None and request.authorization.username:
        key = request.authorization.username
    if not key:
        return _error_response(
            StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        )
    expected = _sb().config.stripe_api_key
    if expected is not None and not hmac.compare_digest(key, expected):
        masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "****"
        return _error_response(
            StripeApiError(401, f"Invalid API Key provided: {masked}", code="api_key_invalid")
        )
    g.api_key = key
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Request-Id", g.get("request_id", ""))
    response.headers.setdefault("Stripe-Version", request.headers.get("Stripe-Version", API_VERSION))
    return response


# Responses to requests that never started (bad parameters, unknown objects, conflicts) are not
# saved under the key, like Stripe; everything else is (successes, card declines, server errors).
_NOT_SAVED = {400, 401, 404, 409, 429}


def idempotent(view: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(view)
    def wrapper(**kwargs: Any) -> Response:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return _call(view, kwargs)
        if len(key) > 255:
            raise StripeApiError(400, "Idempotency-Key must be at most 255 characters long.", param="Idempotency-Key")
        sb = _sb()
        scope = "stripe:" + g.api_key
        fingerprint = IdempotencyCache.fingerprint(request.method, request.path, _params())
        found = sb.idempotency.begin(scope, key)
        if found is False:
            raise StripeApiError(
                409,
                "There is currently another in-progress request using this Idempotent Key (that probably means "
                "you submitted twice, and the other request is still going through): "
                f"{key}. Please try again later.",
                code="idempotency_key_in_use",
            )
        if isinstance(found, StoredResponse):
            if found.fingerprint != fingerprint:
                raise StripeApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they were first used "
                    f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                    type="idempotency_error",
                )
            replay = Response(found.body, status=found.status, mimetype="application/json")
            for name, value in found.headers.items():
                replay.headers[name] = value
            replay.headers["Idempotent-Replayed"] = "true"
            return replay
        stored: StoredResponse | None = None
        try:
            response = _call(view, kwargs)
            if response.status_code not in _NOT_SAVED:
                stored = StoredResponse(
                    fingerprint,
                    response.status_code,
                    response.get_data(),
                    {"Original-Request": g.get("request_id", ""), "Idempotency-Key": key},
                )
        finally:
            sb.idempotency.finish(scope, key, stored)
        response.headers["Idempotency-Key"] = key
        return response

    return wrapper


def _call(view: Callable[..., Response], kwargs: dict[str, Any]) -> Response:
    try:
        return view(**kwargs)
    except StripeApiError as exc:
        return _error_response(exc)


# ---------------------------------------------------------------------------------------------
# Customers
# ---------------------------------------------------------------------------------------------


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


_RANGE_OPS = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}


def _created_filter(params: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """Stripe's `created` list filter: `created=<unix ts>` (exactly), or any of `created[gt]`,
    `created[gte]`, `created[lt]`, `created[lte]`."""
    raw = params.get("created")
    if raw is None or raw == "":
        return lambda _o: True
    if isinstance(raw, str):
        exact = _int(params, "created")
        return lambda o: o.get("created") == exact
    if not isinstance(raw, dict) or not raw or set(raw) - set(_RANGE_OPS):
        raise StripeApiError(400, "Invalid created: use created[gt], created[gte], created[lt] or created[lte]",
                             param="created")
    bounds = []
    for op, value in raw.items():
        if not isinstance(value, str) or not re.fullmatch(r"\d+", value):
            raise StripeApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer",
                                 param=f"created[{op}]")
        bounds.append((_RANGE_OPS[op], int(value)))
    return lambda o: all(cmp(int(o.get("created", 0)), bound) for cmp, bound in bounds)


def _paginate(items: list[dict[str, Any]], url: str) -> Response:
    """Stripe's cursor pagination: newest first, `limit` 1 to 100 (default 10), `starting_after` or
    `ending_before` an object id of the previous page; an unknown cursor object is a 404, as at Stripe."""
    p = _params()
    limit = _int(p, "limit") or 10
    if not 1 <= limit <= 100:
        raise StripeApiError(400, "limit must be between 1 and 100", param="limit")
    items = sorted(items, key=lambda o: (o.get("created", 0), o["id"]), reverse=True)
    after, before = _str(p, "starting_after"), _str(p, "ending_before")
    if after and before:
        raise StripeApiError(400, "You may only specify one of these parameters: starting_after, ending_before.")
    cursor = after or before
    if cursor:
        ids = [o["id"] for o in items]
        if cursor not in ids:
            cursor_obj = _sb().store.get(cursor)
            if cursor_obj is None:
                raise _missing("object", cursor, "starting_after" if after else "ending_before")
            # The cursor object exists but is outside the filter: position it by its sort key.
            key = (cursor_obj.get("created", 0), cursor_obj["id"])
            if after:
                items = [o for o in items if (o.get("created", 0), o["id"]) < key]
            else:
                items = [o for o in items if (o.get("created", 0), o["id"]) > key]
        elif after:
            items = items[ids.index(after) + 1 :]
        else:
            items = items[: ids.index(cursor)]
    # ending_before: the `limit` objects just newer than the cursor, still newest first.
    page = items[-limit:] if before else items[:limit]
    body = {"object": "list", "data": [_render(o, []) for o in page], "has_more": len(items) > limit, "url": url}
    return _json(_render(body))


# ---------------------------------------------------------------------------------------------
# Charges
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Payment intents
# ---------------------------------------------------------------------------------------------

_PI_CREATE = {
    "amount", "currency", "customer", "payment_method", "confirm", "return_url", "payment_method_types",
    "metadata", "description", "receipt_email", "capture_method", "confirmation_method", "setup_future_usage",
    "off_session", "statement_descriptor", "statement_descriptor_suffix", "use_stripe_sdk", "error_on_requires_action",
    "payment_method_options",
}


def _payment_method_options(params: dict[str, Any]) -> dict[str, Any]:
    raw = params.get("payment_method_options") or {}
    card = raw.get("card") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or set(raw) - {"card"} or (card is not None and not isinstance(card, dict)):
        raise StripeApiError(400, "The sandbox supports payment_method_options[card] only.",
                             param="payment_method_options")
    request_3ds = (card or {}).get("request_three_d_secure", "automatic")
    if request_3ds not in ("automatic", "any", "challenge"):
        raise StripeApiError(400, f"Invalid request_three_d_secure: {request_3ds}",
                             param="payment_method_options[card][request_three_d_secure]")
    return {"card": {"request_three_d_secure": request_3ds, "installments": None, "mandate_options": None,
                     "network": None}}


def _validate_amount(amount: int, currency: str) -> None:
    if amount < 1:
        raise StripeApiError(400, "This value must be greater than or equal to 1.", code="amount_too_small",
                             param="amount")
    if amount > 99_999_999_999:
        raise StripeApiError(400, "Amount must be no more than 99,999,999,999", code="amount_too_large",
                             param="amount")
    if currency in _THREE_DECIMAL and amount % 10 != 0:
        raise StripeApiError(
            400,
            f"Amounts in {currency.upper()} must be divisible by 10 (the last digit must be 0).",
            code="invalid_amount",
            param="amount",
        )


def _pi_error_extra(pi: dict[str, Any]) -> dict[str, Any]:
    return {"payment_intent": _public(pi)}


@bp.post("/v1/payment_intents")
@idempotent
def create_payment_intent() -> Response:
    p = _params()
    _check_known(p, _PI_CREATE)
    amount = _int(p, "amount", required=True)
    assert amount is not None
    currency = (_str(p, "currency") or "").lower()
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise StripeApiError(400, "Missing or invalid currency", code="parameter_missing", param="currency")
    _validate_amount(amount, currency)
    types = p.get("payment_method_types", ["card"])
    if not isinstance(types, list) or types != ["card"]:
        raise StripeApiError(400, "The sandbox only supports payment_method_types=['card'].",
                             param="payment_method_types")
    if _str(p, "capture_method") not in (None, "automatic", "automatic_async"):
        raise StripeApiError(400, "The sandbox supports automatic capture only.", param="capture_method")
    confirm = _bool(p, "confirm")
    return_url = _str(p, "return_url")
    if return_url and not confirm:
        raise StripeApiError(400, "You cannot pass a return_url when confirm is false.", param="return_url")
    sb = _sb()
    with sb.store.lock:
        customer_id = _str(p, "customer")
        if customer_id:
            _get("customer", customer_id, param="customer")
        pm = None
        pm_ref = _str(p, "payment_method")
        if pm_ref:
            pm = _resolve_payment_method(pm_ref)
            if pm.get("customer") not in (None, customer_id):
                raise StripeApiError(
                    400,
                    "The provided PaymentMethod belongs to a different Customer.",
                    code="payment_method_unexpected_state" if customer_id else "resource_missing",
                    param="payment_method",
                )
        pi_id = _new_id("pi")
        pi: dict[str, Any] = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": _str(p, "capture_method") or "automatic",
            "client_secret": f"{pi_id}_secret_{secrets.token_urlsafe(18)}",
            "confirmation_method": _str(p, "confirmation_method") or "automatic",
            "created": _now(),
            "currency": currency,
            "customer": customer_id,
            "description": _str(p, "description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": _metadata(p),
            "next_action": None,
            "payment_method": pm["id"] if pm else None,
            "payment_method_options": _payment_method_options(p),
            "payment_method_types": ["card"],
            "receipt_email": _str(p, "receipt_email"),
            "setup_future_usage": _str(p, "setup_future_usage"),
            "statement_descriptor": _str(p, "statement_descriptor"),
            "statement_descriptor_suffix": _str(p, "statement_descriptor_suffix"),
            "status": "requires_confirmation" if pm else "requires_payment_method",
            "_return_url": return_url,
        }
        sb.store.put(pi)
        _emit("payment_intent.created", pi)
        if confirm:
            return _confirm(pi, return_url=return_url, off_session=_bool(p, "off_session"))
    return _json(_render(pi))


@bp.post("/v1/payment_intents/<pi_id>/confirm")
@idempotent
def confirm_payment_intent(pi_id: str) -> Response:
    p = _params()
    _check_known(p, {"payment_method", "return_url", "off_session", "receipt_email", "use_stripe_sdk",
                     "error_on_requires_action", "setup_future_usage"})
    with _sb().store.lock:
        pi = _get("payment_intent", pi_id)
        if pi["status"] not in ("requires_payment_method", "requires_confirmation"):
            raise StripeApiError(
                400,
                f"This PaymentIntent's status is {pi['status']}, but it must be requires_payment_method or "
                "requires_confirmation to be confirmed.",
                code="payment_intent_unexpected_state",
                extra=_pi_error_extra(pi),
            )
        pm_ref = _str(p, "payment_method")
        if pm_ref:
            pi["payment_method"] = _resolve_payment_method(pm_ref)["id"]
        if not pi["payment_method"]:
            raise StripeApiError(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
                extra=_pi_error_extra(pi),
            )
        return_url = _str(p, "return_url") or pi.get("_return_url")
        pi["_return_url"] = return_url
        return _confirm(pi, return_url=return_url, off_session=_bool(p, "off_session"))


def _confirm(pi: dict[str, Any], *, return_url: str | None, off_session: bool) -> Response:
    """Confirm a payment intent that has a payment method: charge it, or ask for 3-D Secure."""
    pm = _get("payment_method", pi["payment_method"])
    card = _test_card_of(pm)
    pi["last_payment_error"] = None
    # The card may demand 3-D Secure, or the merchant may ask for it (request_three_d_secure any/challenge).
    asked = pi["payment_method_options"]["card"]["request_three_d_secure"] in ("any", "challenge")
    if card.three_d_secure or asked:
        if off_session:
            return _fail_charge(pi, pm, Decline("authentication_required", "authentication_required",
                                                "Your card was declined. This transaction requires authentication."))
        pi["status"] = "requires_action"
        challenge = f"{_sb().config.public_url.rstrip('/')}/stripe/3ds/{pi['id']}"
        pi["next_action"] = {
            "type": "redirect_to_url",
            "redirect_to_url": {"url": challenge, "return_url": return_url},
        }
        _emit("payment_intent.requires_action", pi)
        return _json(_render(pi))
    if card.decline is not None:
        return _fail_charge(pi, pm, card.decline)
    _succeed(pi, pm)
    return _json(_render(pi))


def _succeed(pi: dict[str, Any], pm: dict[str, Any]) -> None:
    charge = _new_charge(pi, pm, None)
    pi.update(
        status="succeeded",
        amount_received=pi["amount"],
        latest_charge=charge["id"],
        next_action=None,
        last_payment_error=None,
    )
    _emit("charge.succeeded", charge)
    _emit("payment_intent.succeeded", pi)


def _decline_pi(pi: dict[str, Any], pm: dict[str, Any], decline: Decline) -> dict[str, Any]:
    charge = _new_charge(pi, pm, decline)
    error: dict[str, Any] = {
        "type": "card_error",
        "code": decline.code,
        "decline_code": decline.decline_code,
        "message": decline.message,
        "charge": charge["id"],
        "doc_url": f"{DOC_URL}#{decline.code.replace('_', '-')}",
        "payment_method": _public(pm),
    }
    if decline.param:
        error["param"] = decline.param
    pi.update(
        status="requires_payment_method",
        latest_charge=charge["id"],
        last_payment_error=error,
        payment_method=None,
        next_action=None,
    )
    _emit("charge.failed", charge)
    _emit("payment_intent.payment_failed", pi)
    return charge


def _fail_charge(pi: dict[str, Any], pm: dict[str, Any], decline: Decline) -> Response:
    charge = _decline_pi(pi, pm, decline)
    raise StripeApiError(
        402,
        decline.message,
        type="card_error",
        code=decline.code,
        decline_code=decline.decline_code,
        param=decline.param,
        extra={"charge": charge["id"], "payment_intent": _public(pi), "payment_method": _public(pm)},
    )


@bp.get("/v1/payment_intents/<pi_id>")
def retrieve_payment_intent(pi_id: str) -> Response:
    return _json(_render(_get("payment_intent", pi_id)))


@bp.post("/v1/payment_intents/<pi_id>/cancel")
@idempotent
def cancel_payment_intent(pi_id: str) -> Response:
    p = _params()
    _check_known(p, {"cancellation_reason"})
    reason = _str(p, "cancellation_reason")
    if reason not in (None, "duplicate", "fraudulent", "requested_by_customer", "abandoned"):
        raise StripeApiError(400, f"Invalid cancellation_reason: {reason}", param="cancellation_reason")
    with _sb().store.lock:
        pi = _get("payment_intent", pi_id)
        if pi["status"] not in ("requires_payment_method", "requires_confirmation", "requires_action",
                                "requires_capture", "processing"):
            raise StripeApiError(
                400,
                f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}. Only a "
                "PaymentIntent with one of the following statuses may be canceled: requires_payment_method, "
                "requires_capture, requires_confirmation, requires_action, processing.",
                code="payment_intent_unexpected_state",
                extra=_pi_error_extra(pi),
            )
        pi.update(status="canceled", canceled_at=_now(), cancellation_reason=reason, next_action=None)
    _emit("payment_intent.canceled", pi)
    return _json(_render(pi))


@bp.get("/v1/payment_intents")
def list_payment_intents() -> Response:
    p = _params()
    customer = _str(p, "customer")
    created = _created_filter(p)
    items = _sb().store.find(
        lambda o: o.get("object") == "payment_intent"
        and (customer is None or o.get("customer") == customer)
        and created(o)
    )
    return _paginate(items, "/v1/payment_intents")


_CLAUSE = re.compile(
    r"""^(?P<neg>-)?(?:metadata\[(?P<q>["'])(?P<mkey>.+?)(?P=q)\]|(?P<field>[a-z_]+))"""
    r"""(?P<op>:|>=|<=|>|<)(?:(?P<vq>["'])(?P<sval>.*?)(?P=vq)|(?P<nval>-?\d+))$"""
)


def _search_predicate(query: str) -> Callable[[dict[str, Any]], bool]:
    """A small subset of Stripe's search query language: clauses joined by AND or by OR (not both)."""
    if not query.strip():
        raise StripeApiError(400, "Missing required param: query.", code="parameter_missing", param="query")
    joiner = " OR " if " OR " in query else " AND "
    if " OR " in query and " AND " in query:
        raise StripeApiError(400, "Search queries cannot mix AND and OR.", param="query")
    clauses = []
    for text in query.split(joiner):
        m = _CLAUSE.match(text.strip())
        if not m:
            raise StripeApiError(400, f"Invalid search query clause: {text.strip()!r}", param="query")
        field, op = m.group("field"), m.group("op")
        if field is not None and field not in ("status", "currency", "customer", "amount", "created"):
            raise StripeApiError(400, f"Field {field!r} is not supported in search queries.", param="query")
        clauses.append((m.group("neg") is not None, m.group("mkey"), field, op, m.group("sval"), m.group("nval")))

    def one(obj: dict[str, Any], clause: tuple[bool, str | None, str | None, str, str | None, str | None]) -> bool:
        neg, mkey, field, op, sval, nval = clause
        actual = obj.get("metadata", {}).get(mkey) if mkey is not None else obj.get(field or "")
        if op == ":":
            expected: Any = sval if sval is not None else nval
            result = actual is not None and str(actual) == str(expected)
        else:
            if nval is None or not isinstance(actual, int):
                return False
            number = int(nval)
            result = {">": actual > number, "<": actual < number, ">=": actual >= number, "<=": actual <= number}[op]
        return result != neg

    def predicate(obj: dict[str, Any]) -> bool:
        results = (one(obj, c) for c in clauses)
        return any(results) if joiner == " OR " else all(results)

    return predicate


@bp.get("/v1/payment_intents/search")
def search_payment_intents() -> Response:
    p = _params()
    predicate = _search_predicate(_str(p, "query") or "")
    limit = _int(p, "limit") or 10
    items = _sb().store.find(lambda o: o.get("object") == "payment_intent" and predicate(o))
    items.sort(key=lambda o: (o["created"], o["id"]), reverse=True)
    body = {
        "object": "search_result",
        "data": [_render(o, []) for o in items[:limit]],
        "has_more": len(items) > limit,
        "next_page": None,
        "url": "/v1/payment_intents/search",
    }
    return _json(_render(body))


# ---------------------------------------------------------------------------------------------
# Refunds
# ---------------------------------------------------------------------------------------------


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


@bp.get("/v1/events/<event_id>")
def retrieve_event(event_id: str) -> Response:
    return _json(_get("event", event_id))


# ---------------------------------------------------------------------------------------------
# 3-D Secure challenge (the customer's browser, no API key)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Sandbox admin, no API key (docs/sandbox.md): back-date objects and seed a day in bulk, for the
# settlement reconciliation's tests and benchmark. Not in Stripe's API.
# ---------------------------------------------------------------------------------------------


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
