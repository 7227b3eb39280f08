"""The one small interface every gateway adapter implements.

Adapters take and return the plain dataclasses below: amounts in our minor units, statuses in
our vocabulary. SDK objects, SDK exceptions and amount conversion never leave an adapter.
Every mutating call takes an `idempotency_key` that the caller derives from our own record id
(see `idempotency_key_for`), so a retry after a crash can never charge, refund or pay out twice.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class ChargeStatus(str, enum.Enum):
    SUCCEEDED = "succeeded"  # money captured
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate (3-D Secure): see redirect_url
    PROCESSING = "processing"  # the gateway has not decided yet; ask again later
    FAILED = "failed"  # declined or otherwise failed; see failure_code
    CANCELED = "canceled"  # canceled before capture (e.g. 3-D Secure abandoned and canceled by us)


class RefundStatus(str, enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class PayoutStatus(str, enum.Enum):
    PROCESSING = "processing"  # queued / pending / processing at the bank
    SETTLED = "settled"  # processed, UTR known
    FAILED = "failed"  # rejected, failed or cancelled
    REVERSED = "reversed"  # settled, then returned by the beneficiary bank


@dataclass(frozen=True)
class CardDetails:
    brand: str  # visa, mastercard, amex, rupay, ...
    last4: str
    exp_month: int | None = None
    exp_year: int | None = None
    country: str | None = None  # issuing country, ISO 3166-1 alpha-2
    iin: str | None = None  # first six digits (BIN), when the gateway tells it
    fingerprint: str | None = None


@dataclass(frozen=True)
class SavedMethod:
    """A card token attached to a gateway customer: only the reference and metadata."""

    token_ref: str  # Stripe pm_..., Razorpay token_...
    customer_ref: str  # Stripe cus_..., Razorpay cust_...
    card: CardDetails


@dataclass(frozen=True)
class ChargeRequest:
    reference: str  # our payment id (pay_...); stored as gateway metadata / receipt
    amount: int  # minor units
    currency: str
    idempotency_key: str
    token: str  # one-time token or saved method reference (pm_card_visa, pm_..., token_...)
    customer_ref: str | None = None
    return_url: str | None = None
    description: str | None = None
    customer_email: str | None = None
    customer_contact: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Ask the issuer to authenticate even if it would not (the fraud pre-check's step-up).
    request_three_d_secure: bool = False


@dataclass(frozen=True)
class ChargeResult:
    status: ChargeStatus
    gateway_payment_id: str | None
    amount: int | None = None
    currency: str | None = None
    redirect_url: str | None = None  # set when status is REQUIRES_ACTION
    failure_code: str | None = None  # our vocabulary: card_declined, insufficient_funds, authentication_failed, ...
    failure_message: str | None = None
    card: CardDetails | None = None
    reference: str | None = None  # our payment id, as the gateway echoes it back
    raw_status: str | None = None  # the gateway's own status word, for logs


@dataclass(frozen=True)
class RefundResult:
    gateway_refund_id: str
    status: RefundStatus
    amount: int
    failure_reason: str | None = None


@dataclass(frozen=True)
class SettledCharge:
    """One charge as the gateway lists it for a day (settlement reconciliation)."""

    gateway_payment_id: str  # pi_..., pay_...
    status: ChargeStatus  # SUCCEEDED: the gateway took the money
    amount: int  # our minor units
    currency: str  # ISO 4217, upper case
    created_at: datetime | None  # aware, UTC; None when looked up one by one rather than listed
    reference: str | None  # our payment id from metadata / notes, None for a charge we did not make
    raw_status: str | None = None


@dataclass(frozen=True)
class SettledRefund:
    """One refund as the gateway lists it for a day (settlement reconciliation)."""

    gateway_refund_id: str
    gateway_payment_id: str | None  # the charge it gives money back from
    status: RefundStatus
    amount: int  # our minor units
    currency: str | None  # None when looked up one by one (a refund lookup does not say)
    created_at: datetime | None
    reference: str | None  # our refund id from metadata / receipt, None for a refund we did not make
    raw_status: str | None = None


@dataclass(frozen=True)
class Beneficiary:
    name: str
    # NEFT / IMPS; never stored or logged by us, and kept out of repr() so a stray log line cannot show it.
    account_number: str | None = field(default=None, repr=False)
    ifsc: str | None = None
    vpa: str | None = None  # UPI


@dataclass(frozen=True)
class PayoutRequest:
    reference: str  # our withdrawal id (wd_...)
    amount: int
    currency: str
    mode: str  # NEFT, IMPS, UPI
    beneficiary: Beneficiary
    idempotency_key: str
    contact_ref: str | None = None
    fund_account_ref: str | None = None  # reuse an existing fund account


@dataclass(frozen=True)
class PayoutResult:
    gateway_payout_id: str
    status: PayoutStatus
    fund_account_ref: str | None = None
    utr: str | None = None
    failure_reason: str | None = None


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook, reduced to what the service needs to apply it."""

    gateway: str
    event_id: str  # the gateway's event id; UNIQUE per gateway in our inbox
    type: str  # the gateway's event type, e.g. payment_intent.succeeded, payment.captured
    object_id: str | None  # pi_..., pay_..., re_..., pout_...
    reference: str | None  # our id echoed back (metadata / notes / receipt), when present
    payload: dict[str, Any]  # the parsed body, as received


class GatewayError(Exception):
    """A call failed for a reason that retrying the same call will not fix (bad request, conflict)."""

    def __init__(self, message: str, *, code: str = "gateway_error", http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class GatewayUnavailableError(GatewayError):
    """Timeout, connection failure or 5xx: the outcome is unknown, retrying with the same key is safe."""

    def __init__(self, message: str, *, http_status: int | None = None):
        super().__init__(message, code="gateway_unavailable", http_status=http_status)


class InvalidWebhook(Exception):
    """Bad or missing signature, stale timestamp, or unparsable body."""


class Gateway(Protocol):
    name: str

    def create_customer(self, user_id: str, *, idempotency_key: str) -> str:
        """A gateway customer for our user; returns its reference (cus_..., cust_...)."""

    def attach_payment_method(self, customer_ref: str, token: str, *, idempotency_key: str) -> SavedMethod:
        """Attach a client-side token to the customer, so it can be charged again later."""

    def detach_payment_method(self, saved: SavedMethod) -> None:
        """Detach (Stripe) / delete (Razorpay) a saved token. Detaching twice is not an error."""

    def charge(self, request: ChargeRequest) -> ChargeResult:
        """Create and confirm a charge in one go; capture is automatic on success."""

    def retrieve_charge(self, gateway_payment_id: str) -> ChargeResult:
        """The charge's current state at the gateway."""

    def find_charge(self, reference: str) -> ChargeResult | None:
        """Look a charge up by our own payment id (for reconciliation after a crash); None if unknown."""

    def cancel_charge(self, gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        """Cancel a charge not yet captured. If it already succeeded, returns SUCCEEDED instead of failing."""

    def refund(
        self, gateway_payment_id: str, amount: int, currency: str, *, reference: str, idempotency_key: str
    ) -> RefundResult:
        """Refund part or all of a captured charge. Over-refunds raise GatewayError(code='refund_exceeds_captured')."""

    def retrieve_refund(self, gateway_refund_id: str, gateway_payment_id: str | None = None) -> RefundResult:
        """A refund's current state."""

    def create_payout(self, request: PayoutRequest) -> PayoutResult:
        """Pay out to a bank account or VPA (Razorpay only; Stripe raises GatewayError)."""

    def retrieve_payout(self, gateway_payout_id: str) -> PayoutResult:
        """A payout's current state."""

    # --- withdrawals ---
    def find_payout(self, reference: str) -> PayoutResult | None:
        """Look a payout up by our withdrawal id (after a lost response); None if the gateway has none."""

    # --- end withdrawals ---

    # --- settlement reconciliation ---
    def list_charges(self, start: datetime, end: datetime) -> Iterator[SettledCharge]:
        """Every charge created in [start, end), whatever its status, page after page to the end."""

    def list_refunds(self, start: datetime, end: datetime) -> Iterator[SettledRefund]:
        """Every refund created in [start, end), whatever its status, page after page to the end."""

    # --- end settlement reconciliation ---

    def verify_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Verify the signature over the raw body with the SDK's helper; raise InvalidWebhook otherwise."""

    def charge_result_from_event(self, event: WebhookEvent) -> ChargeResult | None:
        """What a verified event says about a charge, in our vocabulary; None for other events."""

    def refund_result_from_event(self, event: WebhookEvent) -> RefundResult | None:
        """What a verified event says about a refund; None for other events."""

    def payout_result_from_event(self, event: WebhookEvent) -> PayoutResult | None:
        """What a verified event says about a payout; None for other events."""


def idempotency_key_for(record_id: str, operation: str, attempt: int = 0) -> str:
    """The gateway idempotency key for one operation on one of our records.

    Derived only from our own ids, never random: a process that crashed after calling the gateway
    and retries sends the same key, and the gateway answers with the first result.
    """
    key = f"{record_id}:{operation}"
    return key if attempt == 0 else f"{key}:{attempt}"
