"""Statuses and the transitions allowed between them. The SQL guards in adapters/ use these sets."""

from __future__ import annotations

import enum


class PaymentStatus(str, enum.Enum):
    PENDING = "PENDING"
    PENDING_3DS = "PENDING_3DS"
    CAPTURED = "CAPTURED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class RefundStatus(str, enum.Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class WithdrawalStatus(str, enum.Enum):
    REQUESTED = "REQUESTED"
    PROCESSING = "PROCESSING"
    SETTLED = "SETTLED"
    FAILED = "FAILED"
    REVERSED = "REVERSED"


class WithdrawalMode(str, enum.Enum):
    NEFT = "NEFT"
    IMPS = "IMPS"
    UPI = "UPI"


class GatewayName(str, enum.Enum):
    STRIPE = "stripe"
    RAZORPAY = "razorpay"


# For each target status, the statuses a payment may move to it from. Terminal states
# (CAPTURED, FAILED) appear on no right-hand side, so they never move back. EXPIRED may
# become CAPTURED only through the late-success path of the expiry job (CONTRACT.md).
PAYMENT_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.PENDING_3DS: frozenset({PaymentStatus.PENDING}),
    PaymentStatus.CAPTURED: frozenset({PaymentStatus.PENDING, PaymentStatus.PENDING_3DS}),
    PaymentStatus.FAILED: frozenset({PaymentStatus.PENDING, PaymentStatus.PENDING_3DS}),
    PaymentStatus.EXPIRED: frozenset({PaymentStatus.PENDING_3DS}),
}

REFUND_TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    RefundStatus.SUCCEEDED: frozenset({RefundStatus.PENDING}),
    RefundStatus.FAILED: frozenset({RefundStatus.PENDING}),
}

WITHDRAWAL_TRANSITIONS: dict[WithdrawalStatus, frozenset[WithdrawalStatus]] = {
    WithdrawalStatus.PROCESSING: frozenset({WithdrawalStatus.REQUESTED}),
    WithdrawalStatus.SETTLED: frozenset({WithdrawalStatus.PROCESSING}),
    WithdrawalStatus.FAILED: frozenset({WithdrawalStatus.REQUESTED, WithdrawalStatus.PROCESSING}),
    WithdrawalStatus.REVERSED: frozenset({WithdrawalStatus.SETTLED}),
}


def payment_can_move(current: PaymentStatus, new: PaymentStatus) -> bool:
    return current in PAYMENT_TRANSITIONS.get(new, frozenset())


def withdrawal_can_move(current: WithdrawalStatus, new: WithdrawalStatus) -> bool:
    return current in WITHDRAWAL_TRANSITIONS.get(new, frozenset())
