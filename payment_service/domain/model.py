"""Statuses and other closed vocabularies. Which status may move to which: lifecycle.py."""

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
