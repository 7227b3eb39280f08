"""Payments, saved payment methods and refunds as plain dataclasses; the state rules live in model.py."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from .model import PaymentStatus


@dataclass
class Payment:
    id: str
    user_id: str
    amount: int
    currency: str
    gateway: str
    status: str
    created_at: datetime
    updated_at: datetime
    gateway_payment_id: str | None = None
    payment_method_id: str | None = None
    gateway_token: str | None = None
    card_brand: str | None = None
    card_last4: str | None = None
    card_country: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    next_action_url: str | None = None
    return_url: str | None = None
    refunded_amount: int = 0
    device_id: str | None = None
    client_ip: str | None = None
    risk_decision: str | None = None
    risk_reasons: str | None = None
    captured_at: datetime | None = None
    expires_at: datetime | None = None
    # Ownership while a gateway call is in flight, and a sweep's bookkeeping (DESIGN.md rule 7).
    claimed_until: datetime | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    # The amount in CANONICAL_CURRENCY at the rate in force when the record was created (domain/fx.py);
    # None when no fresh rate was available.
    canonical_amount: int | None = None
    canonical_currency: str | None = None
    fx_rate: Decimal | None = None
    fx_rate_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in (PaymentStatus.CAPTURED, PaymentStatus.FAILED, PaymentStatus.EXPIRED)


@dataclass
class PaymentMethod:
    id: str
    user_id: str
    gateway: str
    gateway_customer_ref: str
    gateway_token: str
    brand: str
    last4: str
    created_at: datetime
    exp_month: int | None = None
    exp_year: int | None = None
    country: str | None = None
    iin: str | None = None
    fingerprint: str | None = None
    deleted_at: datetime | None = None


@dataclass
class Refund:
    id: str
    payment_id: str
    user_id: str
    amount: int
    currency: str
    status: str
    created_at: datetime
    updated_at: datetime
    reason: str | None = None
    gateway_refund_id: str | None = None
    failure_reason: str | None = None
    # The charge this refund gives back when it is not the payment's own (a late success of another
    # attempt); None: the payment's gateway_payment_id.
    gateway_payment_id: str | None = None
    claimed_until: datetime | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    # The amount in CANONICAL_CURRENCY at the rate in force when the record was created (domain/fx.py);
    # None when no fresh rate was available.
    canonical_amount: int | None = None
    canonical_currency: str | None = None
    fx_rate: Decimal | None = None
    fx_rate_at: datetime | None = None


@dataclass
class IdempotencyRecord:
    id: int
    caller: str
    key: str
    method: str
    path: str
    request_hash: str
    status: str  # IN_PROGRESS, COMPLETED
    created_at: datetime
    expires_at: datetime
    response_status: int | None = None
    response_body: str | None = None
    resource_id: str | None = None
    locked_until: datetime | None = None
    # How far the request got (Brandur Leach's recovery point): STARTED -> RECORDED -> FINISHED.
    recovery_point: str = "STARTED"


@dataclass
class InboxEvent:
    """A stored webhook (the inbox row), applied asynchronously by the worker."""

    id: int
    gateway: str
    gateway_event_id: str
    event_type: str
    payload: str
    status: str  # RECEIVED, PROCESSING, APPLIED, IGNORED, RETRY, FAILED
    attempts: int
    next_attempt_at: datetime
    received_at: datetime
    object_id: str | None = None
    reference: str | None = None
    last_error: str | None = None
    applied_at: datetime | None = None


@dataclass(frozen=True)
class PageCursor:
    created_at: datetime
    id: str


@dataclass
class Page:
    items: list[Any] = field(default_factory=list)
    next_cursor: PageCursor | None = None


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]
