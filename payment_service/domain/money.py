"""Money is an integer in the currency's minor unit; this module knows each currency's exponent."""

from __future__ import annotations

from .errors import ValidationFailed

# ISO 4217 exponents that differ from 2. Every other supported currency has 2.
_ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
_THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})

SUPPORTED_CURRENCIES = frozenset(
    {"INR", "USD", "EUR", "GBP", "SGD", "AED", "AUD", "CAD", "JPY", "KWD", "BHD", "OMR", "JOD"}
)

# Above this many minor units a top-up is refused outright (10^12 fits a signed BIGINT with room).
MAX_AMOUNT = 10**12


def exponent(currency: str) -> int:
    if currency in _ZERO_DECIMAL:
        return 0
    if currency in _THREE_DECIMAL:
        return 3
    return 2


def validate_currency(currency: object, field: str = "currency") -> str:
    if not isinstance(currency, str) or currency.upper() != currency or currency not in SUPPORTED_CURRENCIES:
        raise ValidationFailed(f"{field} must be one of {sorted(SUPPORTED_CURRENCIES)}", field=field)
    return currency


def validate_amount(amount: object, field: str = "amount") -> int:
    # bool is an int in Python; a JSON `true` is not an amount.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValidationFailed(f"{field} must be an integer in the currency's minor unit", field=field)
    if amount <= 0:
        raise ValidationFailed(f"{field} must be greater than zero", field=field)
    if amount > MAX_AMOUNT:
        raise ValidationFailed(f"{field} must be at most {MAX_AMOUNT}", field=field)
    return amount


def format_major(amount: int, currency: str) -> str:
    """Human-readable amount, for pages and logs only; never used for arithmetic."""
    exp = exponent(currency)
    if exp == 0:
        return f"{amount} {currency}"
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**exp)
    return f"{sign}{whole}.{frac:0{exp}d} {currency}"
