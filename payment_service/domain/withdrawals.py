"""Withdrawals (payouts to a bank account or a UPI address): the record and the input rules.

The full bank account number is never part of a `Withdrawal`: only its last four digits are. The
number lives in memory for the one request that sends it to the gateway, and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from .model import WithdrawalMode

IFSC = re.compile(r"^[A-Z]{4}0[A-Z0-9]{6}$")
ACCOUNT_NUMBER = re.compile(r"^[0-9]{9,18}$")
VPA = re.compile(r"^[a-zA-Z0-9.\-_]{2,256}@[a-zA-Z]{2,64}$")
NAME_MIN, NAME_MAX = 3, 100

WITHDRAWAL_CURRENCIES = frozenset({"INR"})
# Per-payout limits in paise. UPI: NPCI's Rs 1,00,000 per transaction; IMPS: Rs 5,00,000.
# NEFT has no upper limit of its own; the service-wide MAX_AMOUNT applies. RazorpayX's minimum is Rs 1.
MIN_AMOUNT = 100
MODE_LIMITS: dict[str, int] = {
    WithdrawalMode.UPI.value: 1_00_000_00,
    WithdrawalMode.IMPS.value: 5_00_000_00,
}


@dataclass
class Withdrawal:
    id: str
    user_id: str
    amount: int
    currency: str
    mode: str
    status: str
    beneficiary_name: str
    created_at: datetime
    updated_at: datetime
    account_last4: str | None = None  # never the full account number
    ifsc: str | None = None
    vpa: str | None = None
    contact_ref: str | None = None
    fund_account_ref: str | None = None
    gateway_payout_id: str | None = None
    utr: str | None = None
    failure_reason: str | None = None
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

    def beneficiary_summary(self) -> dict[str, Any]:
        """What may be shown of the beneficiary: the name and the last four digits, or the VPA."""
        if self.vpa is not None:
            return {"name": self.beneficiary_name, "vpa": self.vpa}
        return {"name": self.beneficiary_name, "account_last4": self.account_last4}


def withdrawal_errors(
    amount: int,
    currency: str,
    mode: str,
    name: str | None,
    account_number: str | None,
    ifsc: str | None,
    vpa: str | None,
) -> list[dict[str, str]]:
    """Every problem with a withdrawal request, one entry per field. Messages never echo a value."""
    errors: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    if currency not in WITHDRAWAL_CURRENCIES:
        bad("currency", "withdrawals are paid out in INR only")
    modes = [m.value for m in WithdrawalMode]
    if mode not in modes:
        bad("mode", f"must be one of {', '.join(modes)}")
    if amount < MIN_AMOUNT:
        bad("amount", f"must be at least {MIN_AMOUNT} paise (Rs 1)")
    elif mode in MODE_LIMITS and amount > MODE_LIMITS[mode]:
        bad("amount", f"{mode} payouts are limited to {MODE_LIMITS[mode]} paise")
    if name is None or not NAME_MIN <= len(name) <= NAME_MAX:
        bad("beneficiary.name", f"must be {NAME_MIN} to {NAME_MAX} characters")
    if mode == WithdrawalMode.UPI.value:
        if vpa is None:
            bad("beneficiary.vpa", "is required for UPI")
        elif not VPA.match(vpa):
            bad("beneficiary.vpa", "must be a UPI address like name@bank")
        if account_number is not None:
            bad("beneficiary.account_number", "is not allowed for UPI; give vpa")
        if ifsc is not None:
            bad("beneficiary.ifsc", "is not allowed for UPI; give vpa")
    elif mode in modes:
        if account_number is None:
            bad("beneficiary.account_number", f"is required for {mode}")
        elif not ACCOUNT_NUMBER.match(account_number):
            bad("beneficiary.account_number", "must be 9 to 18 digits")
        if ifsc is None:
            bad("beneficiary.ifsc", f"is required for {mode}")
        elif not IFSC.match(ifsc):
            bad("beneficiary.ifsc", "must be 4 capital letters, 0, then 6 capital letters or digits (e.g. HDFC0000123)")
        if vpa is not None:
            bad("beneficiary.vpa", f"is not allowed for {mode}; give account_number and ifsc")
    return errors


_LONG_DIGITS = re.compile(r"\d{5,}")


def mask_long_digit_runs(text: str) -> str:
    """Keep only the last four digits of any run of five or more (gateway messages may echo input)."""
    return _LONG_DIGITS.sub(lambda m: "*" * (len(m.group()) - 4) + m.group()[-4:], text)
