"""Amounts for people: the `amount_display` of responses, localized by Babel in DISPLAY_LOCALE.

The number of decimals is the currency's exponent from domain/money.py, the same one the amounts
are counted in (Babel's own currency digits are CLDR's, which differ for a few currencies), so what
is shown is always exactly the stored amount: "₹1,234.50", "JP¥1,234", "KWD1.234" in en_IN.
"""

from __future__ import annotations

import copy
import functools
from decimal import Decimal

from babel import Locale
from babel.numbers import NumberPattern

from ..domain.money import exponent


@functools.lru_cache(maxsize=64)
def _pattern(locale_name: str, places: int) -> tuple[Locale, NumberPattern]:
    locale = Locale.parse(locale_name)
    pattern = copy.copy(locale.currency_formats["standard"])
    pattern.frac_prec = (places, places)
    return locale, pattern


def amount_display(amount: int, currency: str, locale_name: str) -> str:
    places = exponent(currency)
    locale, pattern = _pattern(locale_name, places)
    return pattern.apply(Decimal(amount).scaleb(-places), locale, currency=currency, currency_digits=False)
