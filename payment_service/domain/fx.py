"""Canonical amounts: an amount in another currency at a reference rate, on Decimal, half-even.

A rate table quotes every currency against one base (the ECB's: units per 1 EUR); a cross rate
goes through the base. The rate used for a record is the cross rate rounded to `RATE_PLACES`
decimal places, and the canonical amount is computed from that rounded rate, so the stored rate
reproduces the stored amount exactly. Exponents come from money.py (the one source of truth).

Standard library only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from .money import exponent

# The stored rate's scale (DECIMAL(38, 20)): 1e-20 relative to a rate of 1e-8 (IDR to KWD) is
# still far below a minor unit of any amount up to MAX_AMOUNT.
RATE_PLACES = 20
_RATE_QUANTUM = Decimal(1).scaleb(-RATE_PLACES)
# Enough digits that no product or quotient here is ever rounded before the one rounding we mean:
# an amount (13 digits) times a rate (38 digits).
_CTX = Context(prec=80, rounding=ROUND_HALF_EVEN)


class Missing(str, enum.Enum):
    """Why a record has no canonical amount (the label of the metric that counts them)."""

    NO_RATES = "no_rates"  # no rate table loaded yet (first start, or the source never answered)
    STALE = "stale"  # the newest table is older than the allowed age
    UNKNOWN_CURRENCY = "unknown_currency"  # the table quotes no rate for the currency


@dataclass(frozen=True)
class RateTable:
    """Reference rates: units of each currency per one unit of `base`, as of `as_of` (UTC)."""

    base: str
    rates: Mapping[str, Decimal]
    as_of: datetime

    def per_base(self, currency: str) -> Decimal | None:
        return Decimal(1) if currency == self.base else self.rates.get(currency)

    def rate(self, source: str, target: str) -> Decimal | None:
        """Units of `target` per one unit of `source` (major units), rounded to RATE_PLACES."""
        s, t = self.per_base(source), self.per_base(target)
        if s is None or t is None or s <= 0 or t <= 0:
            return None
        return _CTX.divide(t, s).quantize(_RATE_QUANTUM, rounding=ROUND_HALF_EVEN, context=_CTX)


@dataclass(frozen=True)
class CanonicalAmount:
    amount: int  # minor units of `currency`
    currency: str
    rate: Decimal  # units of `currency` per unit of the record's currency (major units)
    rate_at: datetime  # when the rate was in force (the table's reference time)


def convert(amount: int, source: str, target: str, rate: Decimal) -> int:
    """`amount` minor units of `source` in minor units of `target`, at `rate` (major per major).

    One rounding, half-even (banker's): a tie such as 4.5 JPY goes to the even 4, so ties neither
    inflate nor deflate a total of many amounts. Never float."""
    scale = exponent(target) - exponent(source)
    exact = _CTX.multiply(_CTX.multiply(Decimal(amount), rate), Decimal(1).scaleb(scale))
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN, context=_CTX))


def canonical(
    amount: int,
    currency: str,
    target: str,
    table: RateTable | None,
    at: datetime,
    max_age_seconds: float,
) -> CanonicalAmount | Missing:
    """`amount` in `target` at the table's rate, or why not. `max_age_seconds` <= 0: no age limit.

    An amount already in `target` needs no rate: it is itself, at rate 1, at `at`."""
    if currency == target:
        return CanonicalAmount(amount, target, Decimal(1), at)
    if table is None:
        return Missing.NO_RATES
    if max_age_seconds > 0 and (at - table.as_of).total_seconds() > max_age_seconds:
        return Missing.STALE
    rate = table.rate(currency, target)
    if rate is None:
        return Missing.UNKNOWN_CURRENCY
    return CanonicalAmount(convert(amount, currency, target, rate), target, rate, table.as_of)


# What the services are given: the canonical amount of (amount, currency) at a time, or None when
# there is no fresh rate. The adapter behind it (adapters/fx_rates.py) never waits for a rate.
Canonicalizer = Callable[[int, str, datetime], "CanonicalAmount | None"]


def no_canonical(amount: int, currency: str, at: datetime) -> CanonicalAmount | None:
    return None


def canonical_fields(value: CanonicalAmount | None) -> dict[str, Any]:
    """The record columns for a canonical amount (all None without one)."""
    if value is None:
        return {"canonical_amount": None, "canonical_currency": None, "fx_rate": None, "fx_rate_at": None}
    return {
        "canonical_amount": value.amount,
        "canonical_currency": value.currency,
        "fx_rate": value.rate,
        "fx_rate_at": value.rate_at,
    }
