"""Stripe payment intents: create, confirm (charge or ask for 3-D Secure), cancel, read, list and search."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

from flask import Response

from ._auth import idempotent
from ._blueprint import bp
from ._common import (
    DOC_URL,
    StripeApiError,
    _bool,
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
    _public,
    _render,
    _sb,
    _str,
)
from .cards import Decline
from .charges import _new_charge
from .customers import _resolve_payment_method, _test_card_of
from .events import _emit

_THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}


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
