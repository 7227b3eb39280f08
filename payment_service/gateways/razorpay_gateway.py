"""The Razorpay adapter: the `Gateway` interface over the official `razorpay` SDK.

How our operations map onto Razorpay:

- charge: an order (receipt = our payment id, notes.payment_id = our payment id, payment_capture=1), then
  an S2S JSON payment on it with the card token (a saved `token_...` with its `cust_...`, or a client-side
  token). Razorpay payments have no idempotency key, so the order's receipt is the key: a retry looks
  the order up by receipt first and answers from the payment already made on it, so it never charges twice.
- 3-D Secure: the payment answers with a `next` redirect action; the customer completes it in the browser
  and Razorpay captures (the order says payment_capture=1).
- cancel: Razorpay cannot void a payment; a payment not captured is marked in its notes and left for
  Razorpay to expire (created) or auto-refund (authorized but never captured).
- refund: `receipt` = our refund id, looked up on the payment's refunds before creating one, and the creation
  sent with `X-Refund-Idempotency` derived from our idempotency key, so two callers racing past the lookup
  (a request and a worker, two workers) still make one refund.
- payouts (RazorpayX): contact -> fund account -> payout, through the SDK's HTTP client where it has no
  method, with `X-Payout-Idempotency` derived from our idempotency key.

SDK exceptions carry only Razorpay's description, so the adapter's own requests session remembers the last
HTTP response per thread: its status decides GatewayError (4xx) vs GatewayUnavailableError (5xx, timeout,
connection), and its error body gives the failure reason. Full account numbers never leave this module.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import razorpay
import razorpay.errors
import requests

from payment_service.domain.money import exponent

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
    PayoutStatus,
    RefundResult,
    RefundStatus,
    SavedMethod,
    SettledCharge,
    SettledRefund,
    WebhookEvent,
)
from .resilience import RATE_LIMIT_WAITS, http_session, retry_rate_limited

logger = logging.getLogger(__name__)

# Razorpay error_reason -> our failure code.
FAILURE_CODES = {
    "payment_failed": "card_declined",
    "payment_declined": "card_declined",
    "card_declined": "card_declined",
    "insufficient_funds": "insufficient_funds",
    "insufficient_balance": "insufficient_funds",
    "authentication_failed": "authentication_failed",
    "payment_authentication_failed": "authentication_failed",
    "payment_timed_out": "authentication_timeout",
    "payment_cancelled": "canceled",
    "card_expired": "expired_card",
    "incorrect_cvv": "incorrect_cvc",
    "order_already_paid": "duplicate_transaction",
}

PAYOUT_STATUSES = {
    "queued": PayoutStatus.PROCESSING,
    "pending": PayoutStatus.PROCESSING,
    "scheduled": PayoutStatus.PROCESSING,
    "processing": PayoutStatus.PROCESSING,
    "processed": PayoutStatus.SETTLED,
    "reversed": PayoutStatus.REVERSED,
    "failed": PayoutStatus.FAILED,
    "rejected": PayoutStatus.FAILED,
    "cancelled": PayoutStatus.FAILED,
}

REFUND_STATUSES = {
    "created": RefundStatus.PENDING,
    "pending": RefundStatus.PENDING,
    "processed": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
}

_BRANDS = {
    "visa": "visa",
    "mastercard": "mastercard",
    "rupay": "rupay",
    "american express": "amex",
    "amex": "amex",
    "diners club": "diners",
    "maestro": "maestro",
    "jcb": "jcb",
}

# Which payment to believe when an order has several attempts: money taken first, then pending, then failed.
_PAYMENT_RANK = {"captured": 0, "refunded": 0, "authorized": 1, "created": 2, "failed": 3}

_PAYOUT_KEY = re.compile(r"^[A-Za-z0-9_\- ]{4,36}$")
_REFUND_KEY = re.compile(r"^[A-Za-z0-9_-]{10,36}$")  # Razorpay: 10 or more; longer keys map to a UUID too
REFUND_KEY_HEADER = "X-Refund-Idempotency"
# Waits between tries while Razorpay answers 409 (the same refund key in progress elsewhere), in seconds.
REFUND_IN_PROGRESS_WAITS = (0.1, 0.2, 0.4, 0.8)
LIST_PAGE_SIZE = 100  # Razorpay's largest `count`
_KEY_NAMESPACE = uuid.UUID("1f0c6c8e-7f4e-4c36-9a57-2b5d3e9b6a10")


class RazorpayAPIError(GatewayError):
    """A 4xx from Razorpay, with the parts of its error body the adapter acts on."""

    def __init__(
        self, message: str, *, code: str, http_status: int | None, reason: str | None, metadata: Mapping[str, Any]
    ) -> None:
        super().__init__(message, code=code, http_status=http_status)
        self.reason = reason
        self.metadata = dict(metadata)


class _RecordingSession(requests.Session):
    """A session with a default timeout that remembers the last response of each thread."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout
        self.local = threading.local()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.default_timeout)
        response = super().request(method, url, *args, **kwargs)
        self.local.last = response
        return response

    def forget(self) -> None:
        self.local.last = None

    def last(self) -> requests.Response | None:
        last: requests.Response | None = getattr(self.local, "last", None)
        return last


def to_razorpay_amount(amount: int, currency: str) -> int:
    """Our minor units -> Razorpay's. Razorpay takes currency subunits too, except that for three-decimal
    currencies (KWD, BHD, OMR, ...) the last digit must be 0: it only settles to two decimals."""
    if exponent(currency) == 3 and amount % 10:
        raise GatewayError(
            f"{currency} amounts must be a multiple of 10 minor units at Razorpay", code="amount_not_supported"
        )
    return amount


def _notes(obj: Mapping[str, Any]) -> dict[str, Any]:
    notes = obj.get("notes")
    return notes if isinstance(notes, dict) else {}  # Razorpay sends [] for empty notes


def _card(card: Mapping[str, Any] | None) -> CardDetails | None:
    if not card:
        return None
    network = str(card.get("network") or "unknown")
    return CardDetails(
        brand=_BRANDS.get(network.lower(), network.lower()),
        last4=str(card.get("last4") or ""),
        exp_month=card.get("expiry_month"),
        exp_year=card.get("expiry_year"),
        country=None if card.get("international", True) else "IN",
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def _mask(account_number: str | None) -> str:
    return f"****{account_number[-4:]}" if account_number else "-"


class RazorpayGateway:
    name = "razorpay"

    def __init__(
        self,
        key_id: str,
        key_secret: str,
        webhook_secret: str,
        api_base: str | None = None,
        payout_account_number: str = "2323230041626905",
        timeout: float = 10.0,
        max_connections: int = 100,
        rate_limit_waits: Sequence[float] = RATE_LIMIT_WAITS,
    ) -> None:
        self._session = _RecordingSession(timeout)
        http_session(max_connections, self._session)
        self._rate_limit_waits = tuple(rate_limit_waits)
        options: dict[str, Any] = {"base_url": api_base.rstrip("/")} if api_base else {}
        self.client = razorpay.Client(session=self._session, auth=(key_id, key_secret), **options)
        self.client.set_app_details({"title": "payment-service", "version": "0.1.0"})
        self.webhook_secret = webhook_secret
        self.payout_account_number = payout_account_number

    # ------------------------------------------------------------ calls and errors

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One SDK call; SDK and transport exceptions become GatewayError / GatewayUnavailableError.
        A 429 is retried with the same call (the same idempotency header, where it has one)."""
        return retry_rate_limited(self.name, lambda: self._call_once(fn, *args, **kwargs), self._rate_limit_waits)

    def _call_once(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._session.forget()
        try:
            return fn(*args, **kwargs)
        except requests.RequestException as exc:
            last = self._session.last()
            status = last.status_code if last is not None else None
            raise GatewayUnavailableError(f"razorpay: {type(exc).__name__}", http_status=status) from exc
        except (razorpay.errors.BadRequestError, razorpay.errors.GatewayError, razorpay.errors.ServerError) as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> GatewayError:
        last = self._session.last()
        status = last.status_code if last is not None else None
        if status is None or status >= 500 or status == 429 or isinstance(exc, razorpay.errors.GatewayError):
            return GatewayUnavailableError(f"razorpay: {exc}", http_status=status)
        error: dict[str, Any] = {}
        try:
            body = last.json() if last is not None else {}
        except ValueError:
            body = {}
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
        reason = error.get("reason")
        description = str(error.get("description") or exc)
        code = "gateway_error"
        if status in (401, 403):
            code = "authentication_error"
        elif "greater than amount captured" in description or "greater than the refund" in description:
            code = "refund_exceeds_captured"
        elif description.startswith("The id provided does not exist"):
            code = "not_found"
        elif "idempotency key" in description.lower():
            code = "idempotency_error"
        elif reason in FAILURE_CODES:
            code = FAILURE_CODES[reason]
        metadata = error.get("metadata") if isinstance(error.get("metadata"), dict) else {}
        return RazorpayAPIError(
            f"razorpay: {description}", code=code, http_status=status, reason=reason, metadata=metadata or {}
        )

    # ------------------------------------------------------------ customers and saved cards

    def create_customer(self, user_id: str, *, idempotency_key: str) -> str:
        # fail_existing=0 makes creation idempotent: Razorpay answers with the customer that has the same
        # email and contact. The address is derived from our user id under the reserved .invalid TLD,
        # so it is stable per user and never deliverable.
        local = re.sub(r"[^A-Za-z0-9._-]", "-", user_id)[:64] or uuid.uuid5(_KEY_NAMESPACE, user_id).hex
        customer = self._call(
            self.client.customer.create,
            {
                "name": user_id[:50],
                "email": f"{local}@wallet-users.invalid",
                "fail_existing": "0",
                "notes": {"user_id": user_id},
            },
        )
        return str(customer["id"])

    def attach_payment_method(self, customer_ref: str, token: str, *, idempotency_key: str) -> SavedMethod:
        if token.startswith("token_"):  # already a saved token of this customer
            saved = self._call(self.client.token.fetch, customer_ref, token)
        else:
            # Razorpay keeps one token per card and customer, so saving the same card again returns it.
            saved = self._call(
                self.client.token.create, {"customer_id": customer_ref, "method": "card", "token": token}
            )
        card = _card(saved.get("card")) or CardDetails(brand="unknown", last4="")
        return SavedMethod(token_ref=str(saved["id"]), customer_ref=customer_ref, card=card)

    def detach_payment_method(self, saved: SavedMethod) -> None:
        try:
            self._call(self.client.token.delete, saved.customer_ref, saved.token_ref)
        except RazorpayAPIError as exc:
            if exc.code != "not_found":  # deleted already: detaching twice is not an error
                raise

    # ------------------------------------------------------------ charges

    def charge(self, request: ChargeRequest) -> ChargeResult:
        amount = to_razorpay_amount(request.amount, request.currency)
        order = self._find_order(request.reference)
        if order is None:
            order = self._call(
                self.client.order.create,
                {
                    "amount": amount,
                    "currency": request.currency,
                    "receipt": request.reference,
                    "payment_capture": 1,
                    "notes": {"payment_id": request.reference},
                },
            )
        elif order["amount"] != amount or order["currency"] != request.currency:
            raise GatewayError(
                f"razorpay order {order['id']} for {request.reference} has a different amount or currency",
                code="reference_mismatch",
            )
        existing = self._best_payment(order["id"])
        if existing is not None and existing["status"] != "created":
            # A retry: the order was already paid (or declined). Answer from it, never charge again.
            return self._settle(existing, request.reference)
        # No attempt yet, or one waiting for 3-D Secure whose redirect URL was lost with its response: a new
        # attempt on the same order gets a fresh URL. Razorpay captures at most one payment per paid order.
        body: dict[str, Any] = {
            "amount": amount,
            "currency": request.currency,
            "order_id": order["id"],
            "method": "card",
            "token": request.token,
            "notes": {**dict(request.metadata), "payment_id": request.reference},
        }
        if request.customer_ref:
            body["customer_id"] = request.customer_ref
        if request.return_url:
            body["callback_url"] = request.return_url
        if request.request_three_d_secure:
            body["auth_type"] = "3ds"  # step-up asked for by the fraud pre-check
        if request.description:
            body["description"] = request.description
        if request.customer_email:
            body["email"] = request.customer_email
        if request.customer_contact:
            body["contact"] = request.customer_contact
        try:
            response = self._call(self.client.payment.createPaymentJson, body)
        except RazorpayAPIError as exc:
            payment_id = exc.metadata.get("payment_id")
            if not payment_id:
                raise
            # Declined: the payment exists, failed; its own error fields say why.
            return self._result(self._call(self.client.payment.fetch, payment_id), request.reference)
        payment = self._call(self.client.payment.fetch, response["razorpay_payment_id"])
        if payment["status"] == "created":
            redirect = next(
                (a.get("url") for a in response.get("next") or [] if a.get("action") in ("redirect", "authenticate")),
                None,
            )
            if redirect:
                return self._result(payment, request.reference, redirect_url=str(redirect))
        return self._settle(payment, request.reference)

    def retrieve_charge(self, gateway_payment_id: str) -> ChargeResult:
        payment = self._call(self.client.payment.fetch, gateway_payment_id)
        return self._result(payment, _notes(payment).get("payment_id"))

    def find_charge(self, reference: str) -> ChargeResult | None:
        """The charge made for our payment id, found through the order's receipt.

        None when there is no order, or an order without any payment: nothing was charged."""
        order = self._find_order(reference)
        if order is None:
            return None
        payment = self._best_payment(order["id"])
        return self._result(payment, reference) if payment is not None else None

    def cancel_charge(self, gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        payment = self._call(self.client.payment.fetch, gateway_payment_id)
        reference = _notes(payment).get("payment_id")
        if payment["status"] in {"created", "authorized"}:
            # Razorpay has no void: record the cancellation on the payment. A created payment expires
            # unpaid; an authorized one is never captured by us and Razorpay refunds it automatically.
            payment = self._call(
                self.client.payment.edit,
                gateway_payment_id,
                {"notes": {**_notes(payment), "cancelled": "true", "cancel_key": idempotency_key[:200]}},
            )
            result = self._result(payment, reference)
            return ChargeResult(
                status=ChargeStatus.CANCELED,
                gateway_payment_id=result.gateway_payment_id,
                amount=result.amount,
                currency=result.currency,
                card=result.card,
                reference=reference,
                raw_status=result.raw_status,
            )
        return self._result(payment, reference)

    def _find_order(self, reference: str) -> dict[str, Any] | None:
        orders = self._call(self.client.order.all, {"receipt": reference, "count": 10})
        items = [o for o in orders.get("items", []) if o.get("receipt") == reference]
        if not items:
            return None
        # Several orders for one receipt only if creation raced; prefer the one that was paid.
        items.sort(key=lambda o: (o.get("status") != "paid", -int(o.get("created_at") or 0)))
        order: dict[str, Any] = items[0]
        return order

    def _best_payment(self, order_id: str) -> dict[str, Any] | None:
        payments = self._call(self.client.order.payments, order_id).get("items", [])
        if not payments:
            return None
        # Collections are newest first; sorted() is stable, so the newest of the best status wins.
        best: dict[str, Any] = sorted(payments, key=lambda p: _PAYMENT_RANK.get(p.get("status"), 9))[0]
        return best

    def _settle(self, payment: dict[str, Any], reference: str | None) -> ChargeResult:
        """Capture an authorized payment (orders made elsewhere may say payment_capture=0), then map it."""
        if payment["status"] == "authorized":
            try:
                payment = self._call(
                    self.client.payment.capture, payment["id"], payment["amount"], {"currency": payment["currency"]}
                )
            except RazorpayAPIError:
                payment = self._call(self.client.payment.fetch, payment["id"])  # captured meanwhile
        return self._result(payment, reference)

    def _result(
        self, payment: Mapping[str, Any], reference: str | None, redirect_url: str | None = None
    ) -> ChargeResult:
        raw = str(payment.get("status"))
        failure_code = failure_message = None
        if raw in {"captured", "refunded"}:
            status = ChargeStatus.SUCCEEDED
        elif raw == "failed":
            status = ChargeStatus.FAILED
            reason = payment.get("error_reason")
            failure_code = FAILURE_CODES.get(str(reason), "processing_error")
            failure_message = payment.get("error_description")
        elif raw == "created":
            # Waiting for the customer's 3-D Secure; Razorpay only gives the URL in the creation response.
            status = ChargeStatus.REQUIRES_ACTION
        else:  # authorized, not captured yet
            status = ChargeStatus.PROCESSING
        return ChargeResult(
            status=status,
            gateway_payment_id=str(payment["id"]),
            amount=payment.get("amount"),
            currency=payment.get("currency"),
            redirect_url=redirect_url,
            failure_code=failure_code,
            failure_message=failure_message,
            card=_card(payment.get("card")),
            reference=reference or _notes(payment).get("payment_id"),
            raw_status=raw,
        )

    # ------------------------------------------------------------ refunds

    def refund(
        self, gateway_payment_id: str, amount: int, currency: str, *, reference: str, idempotency_key: str
    ) -> RefundResult:
        # `receipt` = our refund id is looked up first, so a retry after a lost response finds the refund. The
        # lookup alone is check-then-create: two callers at once would both find nothing and both create. The
        # creation therefore carries X-Refund-Idempotency, derived from our key: Razorpay makes one refund per
        # key and answers the same key with the same refund (or 409 while the first request still runs).
        refunds = self._call(self.client.payment.fetch_multiple_refund, gateway_payment_id, {"count": 100})
        for existing in refunds.get("items", []):
            if existing.get("receipt") == reference:
                return self._refund_result(existing)
        body = {
            "amount": to_razorpay_amount(amount, currency),
            "speed": "normal",
            "receipt": reference,
            "notes": {"refund_id": reference},
        }
        key = refund_idempotency_key(idempotency_key)
        for wait in (*REFUND_IN_PROGRESS_WAITS, None):
            try:
                created = self._call(
                    self.client.payment.refund, gateway_payment_id, dict(body), headers={REFUND_KEY_HEADER: key}
                )
            except RazorpayAPIError as exc:
                if exc.http_status != 409:
                    raise
                # The same key is being processed by another caller: its refund is the one; ask again shortly
                # and get it. If it is still running after that, the outcome is unknown: retry later.
                if wait is None:
                    raise GatewayUnavailableError(
                        "razorpay: a refund with the same idempotency key is still in progress", http_status=409
                    ) from exc
                time.sleep(wait)
                continue
            return self._refund_result(created)
        raise AssertionError("unreachable")  # pragma: no cover

    def retrieve_refund(self, gateway_refund_id: str, gateway_payment_id: str | None = None) -> RefundResult:
        if gateway_payment_id:
            refund = self._call(self.client.payment.fetch_refund_id, gateway_payment_id, gateway_refund_id)
        else:
            refund = self._call(self.client.refund.fetch, gateway_refund_id)
        return self._refund_result(refund)

    @staticmethod
    def _refund_result(refund: Mapping[str, Any]) -> RefundResult:
        status = REFUND_STATUSES.get(str(refund.get("status")), RefundStatus.PENDING)
        return RefundResult(
            gateway_refund_id=str(refund["id"]),
            status=status,
            amount=int(refund["amount"]),
            failure_reason="refund failed at Razorpay" if status is RefundStatus.FAILED else None,
        )

    # ------------------------------------------------------------ settlement reconciliation

    def _list_all(self, fetch: Callable[..., Any], start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
        """Every entity of a collection created in [start, end): `from` and `to` are unix seconds and both
        inclusive at Razorpay, so `to` is the last second before `end`; pages of `count` 100 walked with
        `skip` until a short page."""
        params = {"from": int(start.timestamp()), "to": int(end.timestamp()) - 1, "count": LIST_PAGE_SIZE, "skip": 0}
        while True:
            page = self._call(fetch, dict(params))
            items = page.get("items") or []
            yield from items
            if len(items) < LIST_PAGE_SIZE:
                return
            params["skip"] += len(items)

    def list_charges(self, start: datetime, end: datetime) -> Iterator[SettledCharge]:
        for payment in self._list_all(self.client.payment.all, start, end):
            result = self._result(payment, None)
            yield SettledCharge(
                gateway_payment_id=str(payment["id"]),
                status=result.status,
                amount=int(payment.get("amount") or 0),
                currency=str(payment.get("currency") or "").upper(),
                created_at=datetime.fromtimestamp(int(payment["created_at"]), UTC),
                reference=_notes(payment).get("payment_id"),
                raw_status=result.raw_status,
            )

    def list_refunds(self, start: datetime, end: datetime) -> Iterator[SettledRefund]:
        for refund in self._list_all(self.client.refund.all, start, end):
            yield SettledRefund(
                gateway_refund_id=str(refund["id"]),
                gateway_payment_id=refund.get("payment_id"),
                status=REFUND_STATUSES.get(str(refund.get("status")), RefundStatus.PENDING),
                amount=int(refund.get("amount") or 0),
                currency=str(refund.get("currency") or "").upper(),
                created_at=datetime.fromtimestamp(int(refund["created_at"]), UTC),
                reference=refund.get("receipt") or _notes(refund).get("refund_id"),
                raw_status=str(refund.get("status")),
            )

    # ------------------------------------------------------------ payouts (RazorpayX)

    def create_payout(self, request: PayoutRequest) -> PayoutResult:
        mode = request.mode.upper()
        if mode not in {"NEFT", "IMPS", "UPI"}:
            raise GatewayError(f"unsupported payout mode {request.mode}", code="invalid_payout_mode")
        fund_account_id = request.fund_account_ref or self._fund_account(request, mode)
        body = {
            "account_number": self.payout_account_number,
            "fund_account_id": fund_account_id,
            "amount": to_razorpay_amount(request.amount, request.currency),
            "currency": request.currency,
            "mode": mode,
            "purpose": "payout",
            "queue_if_low_balance": True,
            "reference_id": request.reference,
            "narration": "Wallet withdrawal",
            "notes": {"withdrawal_id": request.reference},
        }
        headers = {"X-Payout-Idempotency": payout_idempotency_key(request.idempotency_key)}
        payout = self._call(self.client.post, "/v1/payouts", body, headers=headers)
        logger.info(
            "razorpay payout created",
            extra={"withdrawal_id": request.reference, "payout_id": payout.get("id"), "mode": mode},
        )
        return self._payout_result(payout)

    def _fund_account(self, request: PayoutRequest, mode: str) -> str:
        beneficiary = request.beneficiary
        if mode == "UPI":
            if not beneficiary.vpa:
                raise GatewayError("a UPI payout needs beneficiary.vpa", code="invalid_beneficiary")
            account: dict[str, Any] = {"account_type": "vpa", "vpa": {"address": beneficiary.vpa}}
        else:
            if not (beneficiary.account_number and beneficiary.ifsc):
                raise GatewayError(
                    f"a {mode} payout needs beneficiary.account_number and ifsc", code="invalid_beneficiary"
                )
            account = {
                "account_type": "bank_account",
                "bank_account": {
                    "name": beneficiary.name,
                    "ifsc": beneficiary.ifsc,
                    "account_number": beneficiary.account_number,
                },
            }
        contact_id = request.contact_ref
        if contact_id is None:
            # RazorpayX returns the existing contact / fund account for identical details, so a retry
            # reuses them rather than creating duplicates.
            contact = self._call(
                self.client.post,
                "/v1/contacts",
                {"name": beneficiary.name, "type": "customer", "reference_id": request.reference},
            )
            contact_id = str(contact["id"])
        try:
            fund_account = self._call(self.client.fund_account.create, {"contact_id": contact_id, **account})
        except GatewayError as exc:
            # Razorpay's message may echo what was sent; keep only the last four digits of an account number.
            logger.warning(
                "razorpay fund account refused",
                extra={"withdrawal_id": request.reference, "account": _mask(beneficiary.account_number)},
            )
            raise GatewayError(
                f"razorpay refused the beneficiary ({_mask(beneficiary.account_number)})",
                code="invalid_beneficiary" if exc.http_status and exc.http_status < 500 else exc.code,
                http_status=exc.http_status,
            ) from None
        return str(fund_account["id"])

    def retrieve_payout(self, gateway_payout_id: str) -> PayoutResult:
        return self._payout_result(self._call(self.client.get, f"/v1/payouts/{gateway_payout_id}", {}))

    # --- withdrawals: find a payout by our id, for a withdrawal whose creation response was lost ---
    def find_payout(self, reference: str) -> PayoutResult | None:
        found = self._call(
            self.client.get,
            "/v1/payouts",
            {"account_number": self.payout_account_number, "reference_id": reference},
        )
        items = [p for p in found.get("items", []) if p.get("reference_id") == reference]
        return self._payout_result(items[0]) if items else None

    # --- end withdrawals ---

    @staticmethod
    def _payout_result(payout: Mapping[str, Any]) -> PayoutResult:
        status = PAYOUT_STATUSES.get(str(payout.get("status")), PayoutStatus.PROCESSING)
        details = payout.get("status_details") or {}
        failure = None
        if status in {PayoutStatus.FAILED, PayoutStatus.REVERSED}:
            failure = payout.get("failure_reason") or details.get("description") or details.get("reason")
        return PayoutResult(
            gateway_payout_id=str(payout["id"]),
            status=status,
            fund_account_ref=payout.get("fund_account_id"),
            utr=payout.get("utr") or None,
            failure_reason=failure,
        )

    # ------------------------------------------------------------ webhooks

    def verify_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        signature = _header(headers, "X-Razorpay-Signature")
        event_id = _header(headers, "X-Razorpay-Event-Id")
        if not signature:
            raise InvalidWebhook("missing X-Razorpay-Signature")
        if not event_id:
            raise InvalidWebhook("missing X-Razorpay-Event-Id")
        try:
            body = raw_body.decode("utf-8")
            self.client.utility.verify_webhook_signature(body, signature, self.webhook_secret)
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError, razorpay.errors.SignatureVerificationError) as exc:
            raise InvalidWebhook(f"razorpay webhook rejected: {type(exc).__name__}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
            raise InvalidWebhook("razorpay webhook body is not an event")
        object_id, reference = _subject(payload)
        return WebhookEvent(
            gateway=self.name,
            event_id=event_id,
            type=payload["event"],
            object_id=object_id,
            reference=reference,
            payload=payload,
        )


    def _entity(self, event: WebhookEvent, kind: str) -> dict[str, Any] | None:
        entity = ((event.payload.get("payload") or {}).get(kind) or {}).get("entity")
        return entity if isinstance(entity, dict) else None

    def charge_result_from_event(self, event: WebhookEvent) -> ChargeResult | None:
        # payment.authorized is not an outcome: the adapter captures; captured or failed follow.
        if event.type not in {"payment.captured", "payment.failed"}:
            return None
        payment = self._entity(event, "payment")
        return None if payment is None else self._result(payment, event.reference)

    def refund_result_from_event(self, event: WebhookEvent) -> RefundResult | None:
        if not event.type.startswith("refund."):
            return None
        refund = self._entity(event, "refund")
        return None if refund is None else self._refund_result(refund)

    def payout_result_from_event(self, event: WebhookEvent) -> PayoutResult | None:
        if not event.type.startswith("payout."):
            return None
        payout = self._entity(event, "payout")
        return None if payout is None else self._payout_result(payout)


def _subject(payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The event's main object (first of `contains`) and our id it echoes: notes.payment_id of a payment,
    the receipt of a refund or order, the reference_id of a payout."""
    contains = payload.get("contains") or []
    body = payload.get("payload") or {}
    if not contains or not isinstance(body, dict):
        return None, None
    kind = contains[0]
    entity = (body.get(kind) or {}).get("entity") or {}
    if not isinstance(entity, dict):
        return None, None
    notes = _notes(entity)
    reference = {
        "payment": notes.get("payment_id"),
        "refund": entity.get("receipt") or notes.get("refund_id"),
        "order": entity.get("receipt"),
        "payout": entity.get("reference_id") or notes.get("withdrawal_id"),
    }.get(kind)
    return entity.get("id"), reference


def refund_idempotency_key(key: str) -> str:
    """Razorpay's X-Refund-Idempotency takes at least 10 letters, digits, hyphens or underscores. Our keys
    (`re_...:refund`) hold a colon, so they are mapped, deterministically, to a UUID derived from them."""
    return key if _REFUND_KEY.match(key) else str(uuid.uuid5(_KEY_NAMESPACE, key))


def payout_idempotency_key(key: str) -> str:
    """RazorpayX wants 4 to 36 letters, digits, hyphens, underscores or spaces. Our keys (`wd_...:payout`)
    are longer and hold a colon, so they are mapped, deterministically, to a UUID derived from them."""
    return key if _PAYOUT_KEY.match(key) else str(uuid.uuid5(_KEY_NAMESPACE, key))
