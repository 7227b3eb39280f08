"""The Stripe adapter: the `Gateway` interface over the official `stripe` SDK (PaymentIntents API).

Every call goes through one `stripe.StripeClient` built with this adapter's own credentials (never the
SDK's global `stripe.api_key`), pointed at `api_base` when given (the sandbox, `STRIPE_API_BASE`).
SDK objects and exceptions never leave this module: results are base.py dataclasses, failures are
`GatewayError` (retrying will not help) or `GatewayUnavailableError` (outcome unknown; retry with
the same idempotency key).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import stripe

from .base import (
    CardDetails,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    GatewayError,
    GatewayUnavailableError,
    InvalidWebhook,
    PayoutRequest,
    PayoutResult,
    RefundResult,
    RefundStatus,
    SavedMethod,
    SettledCharge,
    SettledRefund,
    WebhookEvent,
)
from .resilience import RATE_LIMIT_WAITS, retry_rate_limited
from .stripe_http import Urllib3Client

logger = logging.getLogger(__name__)

T = TypeVar("T")

WEBHOOK_TOLERANCE_SECONDS = 300

# Stripe's view of currency minor units, where it differs from ISO 4217 (docs.stripe.com/currencies).
_STRIPE_ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "VND", "VUV", "XAF", "XOF", "XPF"}
)
# Zero-decimal in ISO 4217, but Stripe takes them as two-decimal amounts that must be whole units.
_STRIPE_TWO_DECIMAL_WHOLE = frozenset({"ISK", "UGX"})
# Three-decimal: Stripe takes the minor unit but the last digit must be 0.
_STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# Three-decimal in ISO 4217, not charged through Stripe.
_STRIPE_UNSUPPORTED = frozenset({"IQD", "LYD"})

# Stripe error code / decline code -> our failure_code vocabulary.
_FAILURE_CODES = {
    "insufficient_funds": "insufficient_funds",
    "expired_card": "expired_card",
    "incorrect_cvc": "incorrect_cvc",
    "invalid_cvc": "incorrect_cvc",
    "incorrect_number": "incorrect_number",
    "invalid_number": "incorrect_number",
    "invalid_expiry_month": "expired_card",
    "invalid_expiry_year": "expired_card",
    "processing_error": "processing_error",
    "authentication_required": "authentication_failed",
    "payment_intent_authentication_failure": "authentication_failed",
    "card_velocity_exceeded": "card_declined",
}

_CHARGE_STATUS = {
    "succeeded": ChargeStatus.SUCCEEDED,
    "requires_action": ChargeStatus.REQUIRES_ACTION,
    "processing": ChargeStatus.PROCESSING,
    "requires_confirmation": ChargeStatus.PROCESSING,
    "requires_capture": ChargeStatus.PROCESSING,
    "requires_payment_method": ChargeStatus.FAILED,
    "canceled": ChargeStatus.CANCELED,
}

_REFUND_STATUS = {
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "succeeded": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}

_EXPAND = ["payment_method", "latest_charge"]

LIST_PAGE_SIZE = 100  # Stripe's largest `limit`


def to_stripe_amount(amount: int, currency: str) -> int:
    """Our minor units -> the integer Stripe expects for `currency`; GatewayError if Stripe cannot take it."""
    cur = currency.upper()
    if cur in _STRIPE_UNSUPPORTED:
        raise GatewayError(f"Stripe does not support {cur}", code="currency_not_supported")
    if cur in _STRIPE_TWO_DECIMAL_WHOLE:
        return amount * 100
    if cur in _STRIPE_THREE_DECIMAL and amount % 10 != 0:
        raise GatewayError(
            f"Stripe requires {cur} amounts to end in 0 (got {amount} minor units)", code="amount_not_supported"
        )
    return amount


def from_stripe_amount(amount: int, currency: str) -> int:
    if currency.upper() in _STRIPE_TWO_DECIMAL_WHOLE:
        return amount // 100
    return amount


def failure_code_for(error: Mapping[str, Any] | None) -> str:
    """Our failure_code for a Stripe error object (an API error body or `last_payment_error`)."""
    if not error:
        return "card_declined"
    for key in (error.get("decline_code"), error.get("code")):
        if key and key in _FAILURE_CODES:
            return _FAILURE_CODES[key]
    return "card_declined"


def _card(data: Mapping[str, Any] | None) -> CardDetails | None:
    if not data or not data.get("last4"):
        return None
    return CardDetails(
        brand=str(data.get("brand") or "unknown"),
        last4=str(data["last4"]),
        exp_month=data.get("exp_month"),
        exp_year=data.get("exp_year"),
        country=data.get("country"),
        iin=data.get("iin"),
        fingerprint=data.get("fingerprint"),
    )


def _card_of_intent(pi: Mapping[str, Any]) -> CardDetails | None:
    pm = pi.get("payment_method")
    if isinstance(pm, Mapping) and pm.get("card"):
        return _card(pm["card"])
    charge = pi.get("latest_charge")
    if isinstance(charge, Mapping):
        details = (charge.get("payment_method_details") or {}).get("card")
        if details:
            return _card(details)
    error = pi.get("last_payment_error") or {}
    error_pm = error.get("payment_method")
    if isinstance(error_pm, Mapping) and error_pm.get("card"):
        return _card(error_pm["card"])
    return None


def _get_header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


class StripeGateway:
    """`Gateway` for Stripe. Amounts in and out are our minor units; statuses are base.ChargeStatus."""

    name = "stripe"

    def __init__(
        self,
        api_key: str,
        webhook_secret: str,
        api_base: str | None = None,
        timeout: float = 10.0,
        max_network_retries: int = 0,
        max_connections: int = 100,
        rate_limit_waits: Sequence[float] = RATE_LIMIT_WAITS,
    ) -> None:
        if not api_key:
            raise ValueError("a Stripe API key is required")
        self._api_key = api_key
        self._webhook_secret = webhook_secret
        self._rate_limit_waits = tuple(rate_limit_waits)
        # The SDK's transport: urllib3 without `requests` (stripe_http.py), one keep-alive pool per process
        # (the SDK's default makes a session, so a connection, per thread: under gevent, per request).
        self.http_client = Urllib3Client(timeout, max_connections)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            max_network_retries=max_network_retries,
            http_client=self.http_client,
        )

    # -- errors -------------------------------------------------------------------------------

    @contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        """SDK exceptions -> GatewayError / GatewayUnavailableError. CardError is handled by callers first."""
        try:
            yield
        except stripe.APIConnectionError as exc:
            raise GatewayUnavailableError(f"stripe {operation}: connection failed: {exc.user_message}") from exc
        except stripe.RateLimitError as exc:
            raise GatewayUnavailableError(f"stripe {operation}: rate limited", http_status=exc.http_status) from exc
        except stripe.IdempotencyError as exc:
            raise GatewayError(
                f"stripe {operation}: idempotency key reused with other parameters",
                code="idempotency_key_reused",
                http_status=exc.http_status,
            ) from exc
        except stripe.AuthenticationError as exc:
            raise GatewayError(
                f"stripe {operation}: authentication failed", code="gateway_auth_failed", http_status=exc.http_status
            ) from exc
        except stripe.CardError as exc:
            raise GatewayError(
                f"stripe {operation}: {exc.user_message}",
                code=failure_code_for(_error_body(exc)),
                http_status=exc.http_status,
            ) from exc
        except stripe.InvalidRequestError as exc:
            code = exc.code or "invalid_request"
            if exc.http_status == 404 or code == "resource_missing":
                code = "not_found"
            message = f"stripe {operation}: {exc.user_message}"
            raise GatewayError(message, code=code, http_status=exc.http_status) from exc
        except stripe.StripeError as exc:
            status = exc.http_status
            # 5xx, a lost response, or 409 (the same key still running at Stripe): the outcome is unknown.
            if status is None or status >= 500 or status == 409:
                raise GatewayUnavailableError(
                    f"stripe {operation}: {type(exc).__name__} {status}: {exc.user_message}", http_status=status
                ) from exc
            raise GatewayError(
                f"stripe {operation}: {exc.user_message}", code=exc.code or "gateway_error", http_status=status
            ) from exc

    def _call(self, operation: str, fn: Callable[[], Any]) -> dict[str, Any]:
        def once() -> Any:
            with self._translate(operation):
                return fn()

        # A 429 is retried with the same call, so with the same idempotency key.
        obj = retry_rate_limited(self.name, once, self._rate_limit_waits)
        if isinstance(obj, stripe.StripeResponse):  # raw_request: the parsed body, no StripeObject tree
            raw: dict[str, Any] = obj.data  # type: ignore[assignment]
            return raw
        result: dict[str, Any] = obj.to_dict()
        return result

    # -- customers and payment methods --------------------------------------------------------

    def create_customer(self, user_id: str, *, idempotency_key: str) -> str:
        customer = self._call(
            "create customer",
            lambda: self._client.v1.customers.create(
                {"metadata": {"user_id": user_id}}, {"idempotency_key": idempotency_key}
            ),
        )
        return str(customer["id"])

    def attach_payment_method(self, customer_ref: str, token: str, *, idempotency_key: str) -> SavedMethod:
        pm_id = token
        if token.startswith("tok_"):
            # A legacy card token: make it a PaymentMethod first.
            created = self._call(
                "create payment method",
                lambda: self._client.v1.payment_methods.create(
                    {"type": "card", "card": {"token": token}}, {"idempotency_key": idempotency_key + ":pm"}
                ),
            )
            pm_id = str(created["id"])
        pm = self._call(
            "attach payment method",
            lambda: self._client.v1.payment_methods.attach(
                pm_id, {"customer": customer_ref}, {"idempotency_key": idempotency_key}
            ),
        )
        card = _card(pm.get("card"))
        if card is None:
            raise GatewayError("stripe attach payment method: not a card", code="unsupported_payment_method")
        return SavedMethod(token_ref=str(pm["id"]), customer_ref=customer_ref, card=card)

    def detach_payment_method(self, saved: SavedMethod) -> None:
        try:
            self._call("detach payment method", lambda: self._client.v1.payment_methods.detach(saved.token_ref))
        except GatewayUnavailableError:
            raise
        except GatewayError as exc:
            if exc.code in ("payment_method_unexpected_state", "not_found"):
                return  # already detached (or gone): detaching twice is not an error
            raise

    # -- charges ------------------------------------------------------------------------------

    def charge(self, request: ChargeRequest) -> ChargeResult:
        amount = to_stripe_amount(request.amount, request.currency)
        params: dict[str, Any] = {
            "amount": amount,
            "currency": request.currency.lower(),
            "payment_method": request.token,
            "payment_method_types": ["card"],
            "confirm": True,
            "metadata": {**request.metadata, "payment_id": request.reference},
            "expand": _EXPAND,
        }
        if request.customer_ref:
            params["customer"] = request.customer_ref
        if request.return_url:
            params["return_url"] = request.return_url
        if request.description:
            params["description"] = request.description
        if request.customer_email:
            params["receipt_email"] = request.customer_email
        if request.request_three_d_secure:
            params["payment_method_options"] = {"card": {"request_three_d_secure": "any"}}
        try:
            # The SDK's raw_request on the hot path: the same request, the same errors (CardError with its
            # body), but the answer stays the parsed JSON. Building the StripeObject tree and turning it
            # back into a dict was ~10 % of a top-up's CPU.
            pi = self._call(
                "create payment intent",
                lambda: self._client.raw_request(
                    "post", "/v1/payment_intents", **params, idempotency_key=request.idempotency_key
                ),
            )
        except GatewayError as exc:
            card_error = exc.__cause__
            if isinstance(card_error, stripe.CardError):
                return self._declined(card_error, request)
            raise
        return self._result(pi)

    def _declined(self, exc: stripe.CardError, request: ChargeRequest) -> ChargeResult:
        body = _error_body(exc)
        pi = body.get("payment_intent") or {}
        pm = body.get("payment_method") or {}
        return ChargeResult(
            status=ChargeStatus.FAILED,
            gateway_payment_id=pi.get("id"),
            amount=request.amount,
            currency=request.currency.upper(),
            failure_code=failure_code_for(body),
            failure_message=body.get("message") or exc.user_message,
            card=_card(pm.get("card")) if isinstance(pm, Mapping) else None,
            reference=(pi.get("metadata") or {}).get("payment_id", request.reference),
            raw_status=pi.get("status", "requires_payment_method"),
        )

    def _result(self, pi: Mapping[str, Any]) -> ChargeResult:
        raw = str(pi.get("status"))
        status = _CHARGE_STATUS.get(raw, ChargeStatus.PROCESSING)
        currency = str(pi.get("currency", "")).upper()
        redirect_url = None
        failure_code = failure_message = None
        if status is ChargeStatus.REQUIRES_ACTION:
            action = pi.get("next_action") or {}
            redirect_url = (action.get("redirect_to_url") or {}).get("url")
        if status is ChargeStatus.FAILED:
            error = pi.get("last_payment_error")
            failure_code = failure_code_for(error) if error else "payment_failed"
            failure_message = (error or {}).get("message") or "The payment was not completed."
        amount = pi.get("amount")
        return ChargeResult(
            status=status,
            gateway_payment_id=pi.get("id"),
            amount=from_stripe_amount(int(amount), currency) if amount is not None else None,
            currency=currency or None,
            redirect_url=redirect_url,
            failure_code=failure_code,
            failure_message=failure_message,
            card=_card_of_intent(pi),
            reference=(pi.get("metadata") or {}).get("payment_id"),
            raw_status=raw,
        )

    def retrieve_charge(self, gateway_payment_id: str) -> ChargeResult:
        pi = self._call(
            "retrieve payment intent",
            lambda: self._client.v1.payment_intents.retrieve(gateway_payment_id, {"expand": _EXPAND}),
        )
        return self._result(pi)

    def find_charge(self, reference: str) -> ChargeResult | None:
        if "'" in reference or "\\" in reference:
            raise GatewayError(f"invalid reference {reference!r}", code="invalid_request")
        found = self._call(
            "search payment intents",
            lambda: self._client.v1.payment_intents.search(
                {"query": f"metadata['payment_id']:'{reference}'", "limit": 10, "expand": ["data.payment_method"]}
            ),
        )
        intents = [pi for pi in found.get("data", []) if (pi.get("metadata") or {}).get("payment_id") == reference]
        if not intents:
            return None
        # One key per payment means one intent; should there be more, the one that took money wins.
        intents.sort(key=lambda pi: (pi.get("status") == "succeeded", pi.get("created", 0)), reverse=True)
        return self._result(intents[0])

    def cancel_charge(self, gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        try:
            pi = self._call(
                "cancel payment intent",
                lambda: self._client.v1.payment_intents.cancel(
                    gateway_payment_id,
                    {"cancellation_reason": "abandoned", "expand": _EXPAND},
                    {"idempotency_key": idempotency_key},
                ),
            )
        except GatewayUnavailableError:
            raise
        except GatewayError as exc:
            if exc.code != "payment_intent_unexpected_state":
                raise
            # Already succeeded (late 3-D Secure success) or already canceled: say what it is.
            return self.retrieve_charge(gateway_payment_id)
        return self._result(pi)

    # -- refunds ------------------------------------------------------------------------------

    def refund(
        self, gateway_payment_id: str, amount: int, currency: str, *, reference: str, idempotency_key: str
    ) -> RefundResult:
        params = {
            "payment_intent": gateway_payment_id,
            "amount": to_stripe_amount(amount, currency),
            "metadata": {"refund_id": reference},
        }
        try:
            refund = self._call(
                "create refund",
                lambda: self._client.v1.refunds.create(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": idempotency_key},
                ),
            )
        except GatewayUnavailableError:
            raise
        except GatewayError as exc:
            if exc.code in ("charge_already_refunded", "amount_too_large"):
                raise GatewayError(str(exc), code="refund_exceeds_captured", http_status=exc.http_status) from exc
            raise
        return self._refund_result(refund)

    def retrieve_refund(self, gateway_refund_id: str, gateway_payment_id: str | None = None) -> RefundResult:
        refund = self._call("retrieve refund", lambda: self._client.v1.refunds.retrieve(gateway_refund_id))
        return self._refund_result(refund)

    @staticmethod
    def _refund_result(refund: Mapping[str, Any]) -> RefundResult:
        return RefundResult(
            gateway_refund_id=str(refund["id"]),
            status=_REFUND_STATUS.get(str(refund.get("status")), RefundStatus.PENDING),
            amount=from_stripe_amount(int(refund["amount"]), str(refund.get("currency", ""))),
            failure_reason=refund.get("failure_reason"),
        )

    # -- settlement reconciliation --------------------------------------------------------------

    def _list_all(self, operation: str, path: str, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
        """Every object of a list endpoint created in [start, end): `created[gte]`/`created[lt]`, pages of
        100 chained by `starting_after` until `has_more` is false (Stripe's cursor pagination)."""
        params: dict[str, Any] = {
            "created": {"gte": int(start.timestamp()), "lt": int(end.timestamp())},
            "limit": LIST_PAGE_SIZE,
        }
        while True:
            # raw_request: the parsed JSON of each page, without building a StripeObject per item (a day
            # can hold tens of thousands).
            page = self._call(operation, lambda: self._client.raw_request("get", path, **params))
            items = page.get("data") or []
            yield from items
            if not page.get("has_more") or not items:
                return
            params["starting_after"] = items[-1]["id"]

    def list_charges(self, start: datetime, end: datetime) -> Iterator[SettledCharge]:
        # PaymentIntents, not Charges: our gateway_payment_id is the intent, and an intent holds the amount
        # received whichever of its charge attempts took it.
        for pi in self._list_all("list payment intents", "/v1/payment_intents", start, end):
            currency = str(pi.get("currency", "")).upper()
            raw = str(pi.get("status"))
            yield SettledCharge(
                gateway_payment_id=str(pi["id"]),
                status=_CHARGE_STATUS.get(raw, ChargeStatus.PROCESSING),
                amount=from_stripe_amount(int(pi.get("amount") or 0), currency),
                currency=currency,
                created_at=datetime.fromtimestamp(int(pi["created"]), UTC),
                reference=(pi.get("metadata") or {}).get("payment_id"),
                raw_status=raw,
            )

    def list_refunds(self, start: datetime, end: datetime) -> Iterator[SettledRefund]:
        for refund in self._list_all("list refunds", "/v1/refunds", start, end):
            currency = str(refund.get("currency", "")).upper()
            raw = str(refund.get("status"))
            pi = refund.get("payment_intent")
            yield SettledRefund(
                gateway_refund_id=str(refund["id"]),
                gateway_payment_id=str(pi["id"] if isinstance(pi, Mapping) else pi) if pi else None,
                status=_REFUND_STATUS.get(raw, RefundStatus.PENDING),
                amount=from_stripe_amount(int(refund.get("amount") or 0), currency),
                currency=currency,
                created_at=datetime.fromtimestamp(int(refund["created"]), UTC),
                reference=(refund.get("metadata") or {}).get("refund_id"),
                raw_status=raw,
            )

    # -- payouts ------------------------------------------------------------------------------

    def create_payout(self, request: PayoutRequest) -> PayoutResult:
        raise GatewayError("stripe payouts not supported", code="not_supported")

    def retrieve_payout(self, gateway_payout_id: str) -> PayoutResult:
        raise GatewayError("stripe payouts not supported", code="not_supported")

    # --- withdrawals ---
    def find_payout(self, reference: str) -> PayoutResult | None:
        raise GatewayError("stripe payouts not supported", code="not_supported")

    # --- end withdrawals ---

    # -- webhooks -----------------------------------------------------------------------------

    def verify_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        signature = _get_header(headers, "Stripe-Signature")
        if not signature:
            raise InvalidWebhook("missing Stripe-Signature header")
        try:
            payload = raw_body.decode("utf-8")
            # The SDK's helper for "verify before storing": checks the signature and the timestamp
            # without building a StripeObject we would throw away (the body is parsed once, below).
            stripe.WebhookSignature.verify_header(
                payload, signature, self._webhook_secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
            event = json.loads(payload)
            event_id, event_type = event["id"], event["type"]
            obj = event["data"]["object"]
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhook(f"bad Stripe signature: {exc.user_message}") from exc
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InvalidWebhook(f"unparsable Stripe webhook: {type(exc).__name__}") from exc
        if not isinstance(event_id, str) or not isinstance(event_type, str) or not isinstance(obj, dict):
            raise InvalidWebhook("unparsable Stripe webhook: unexpected shape")
        metadata = obj.get("metadata") or {}
        reference = metadata.get("payment_id") or metadata.get("refund_id") if isinstance(metadata, dict) else None
        return WebhookEvent(
            gateway=self.name,
            event_id=event_id,
            type=event_type,
            object_id=obj.get("id"),
            reference=reference,
            payload=event,
        )


    # -- events ---------------------------------------------------------------------------------

    # The intent's events that report an outcome (or progress towards one). `created`,
    # `amount_capturable_updated` and `partially_funded` do not: a new intent reads
    # `requires_payment_method`, which is no failure. They are settled as types we do not act on.
    _CHARGE_EVENTS = frozenset({
        "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
        "payment_intent.requires_action", "payment_intent.processing",
    })

    def charge_result_from_event(self, event: WebhookEvent) -> ChargeResult | None:
        obj = event.payload["data"]["object"]
        if event.type in self._CHARGE_EVENTS and obj.get("object") == "payment_intent":
            return self._result(obj)
        return None

    def refund_result_from_event(self, event: WebhookEvent) -> RefundResult | None:
        obj = event.payload["data"]["object"]
        if event.type.startswith("refund.") and obj.get("object") == "refund":
            return self._refund_result(obj)
        return None

    def payout_result_from_event(self, event: WebhookEvent) -> PayoutResult | None:
        return None


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}
