"""Card-number detection (regex plus Luhn), used on requests, log lines and outgoing events.

A primary account number is 13 to 19 digits; people and systems write it with spaces or dashes
between groups, so separators are allowed between digits. Only a run that passes the Luhn
check counts, which keeps order ids and phone numbers from being taken for cards.
"""

from __future__ import annotations

import re
from typing import Any

# A run of 13-19 digits, optionally separated by single spaces or dashes, standing on its own:
# not touching another letter or digit. Gateway and our own ids are alphanumeric strings in which
# a long digit run can occur by chance (pi_3Mtw...); a PAN is written as a number of its own, so
# requiring a boundary keeps ids from being taken for cards, which would block a captured payment.
_CANDIDATE = re.compile(r"(?<![0-9A-Za-z])(?:[0-9][ -]?){12,18}[0-9](?![0-9A-Za-z])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            spans.append(m.span())
    return spans


def contains_card_number(text: str) -> bool:
    return bool(_card_spans(text))


def mask_card_numbers(text: str) -> str:
    """Replace each card number with a mask that keeps only its last four digits."""
    spans = _card_spans(text)
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        digits = re.sub(r"[ -]", "", text[start:end])
        out.append(text[last:start])
        out.append("[card ****" + digits[-4:] + "]")
        last = end
    out.append(text[last:])
    return "".join(out)


def find_card_number_field(value: Any, path: str = "") -> str | None:
    """The path of the first field of a JSON-like value holding a card number, or None.

    Numbers are checked too: a JSON body may carry the PAN as a bare integer.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            if contains_card_number(key):
                return path or "(body)"
            found = find_card_number_field(v, f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_card_number_field(v, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, str)):
        return (path or "(body)") if contains_card_number(str(value)) else None
    return None
