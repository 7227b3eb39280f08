"""Card-number detection (regex plus Luhn), used on requests, log lines, webhooks and outgoing events.

A primary account number is 13 to 19 digits; people and systems write it with spaces or dashes
between groups, so separators are allowed between digits. Only a run that passes the Luhn
check counts, which keeps order ids and phone numbers from being taken for cards.

Ids are not card data (DESIGN.md rule 6). A numeric user id or a bank UTR can pass Luhn by chance,
and a state change after money moved must never fail for it, so what we store and send is guarded
field by field: values under an identifier key are left alone, free text (descriptions, messages,
reasons, names, metadata values, URLs) is masked. Request bodies are the exception: they are refused
whole (api/parsing.py), because nothing has happened yet when a request comes in.
"""

from __future__ import annotations

import json
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
    return _first_card_field(value, path, False, ids_too=True, root="(body)")


# --- ids and free text ------------------------------------------------------------------------

# Any card number lies inside a run like this, whatever surrounds it once a JSON string is decoded
# (`\n4242...` reads as a letter before the digits in the raw text, as a line break after decoding);
# JSON can hide a digit only as a \u escape.
_DIGIT_RUN = re.compile(r"[0-9][0-9 -]{11,}[0-9]")

# Keys whose values are identifiers: ours (payment_id, subject, id), the user's (user_id), the
# gateway's (gateway_payment_id, object ids) and the bank's (utr, rrn, arn, bank_reference), and
# amounts. Matched on the key's name, wherever the key sits, so a new *_id field is covered too.
_IDENTIFIER_KEYS = frozenset({"id", "subject", "utr", "rrn", "arn", "reference", "receipt"})
_IDENTIFIER_SUFFIXES = ("_id", "_ids", "_utr", "_rrn", "_reference", "_ref")
# Containers whose values are free text whatever their keys (a caller or a gateway user chooses
# them), except the references we write there ourselves and read back (stripe metadata.payment_id,
# razorpay notes.payment_id, customer metadata.user_id).
_FREE_TEXT_CONTAINERS = frozenset({"metadata", "notes"})
_OUR_REFERENCE_KEYS = frozenset({"payment_id", "refund_id", "withdrawal_id", "user_id"})


def may_hold_card_number(text: str) -> bool:
    """A cheap first look at a JSON text: False means no value in it can hold a card number."""
    return "\\u" in text or _DIGIT_RUN.search(text) is not None


def is_identifier_key(key: str) -> bool:
    """True when a field of this name holds an id, a bank reference or an amount, never card data."""
    k = key.lower()
    return k in _IDENTIFIER_KEYS or k.endswith(_IDENTIFIER_SUFFIXES) or k.startswith("amount")


def _kept_as_is(key: str, value: Any, in_free_text: bool) -> bool:
    """An identifier, or a list of them; a nested object under such a key is still looked into."""
    if isinstance(value, dict) or isinstance(value, (list, tuple)) and any(
        isinstance(v, (dict, list, tuple)) for v in value
    ):
        return False
    return key.lower() in _OUR_REFERENCE_KEYS if in_free_text else is_identifier_key(key)


def _mask_scalar(value: Any) -> Any:
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, int) and not isinstance(value, bool):
        # A bare JSON number can be a card number too; it becomes a string holding the mask.
        text = str(value)
        masked = mask_card_numbers(text)
        return value if masked == text else masked
    return value


def mask_free_text(value: Any, *, _free: bool = False) -> Any:
    """A copy of a JSON-like value in which every card number in free text is masked.

    Values under an identifier key (see `is_identifier_key`) are kept as they are; keys are free
    text. Never raises: the caller is writing something down that must be written.
    """
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = str(k)
            if _kept_as_is(key, v, _free):
                out[_mask_scalar(k)] = v
            else:
                out[_mask_scalar(k)] = mask_free_text(v, _free=_free or key.lower() in _FREE_TEXT_CONTAINERS)
        return out
    if isinstance(value, (list, tuple)):
        return [mask_free_text(v, _free=_free) for v in value]
    return _mask_scalar(value)


def find_card_number_in_free_text(value: Any, path: str = "", *, _free: bool = False) -> str | None:
    """The path of the first free-text field of a JSON-like value that holds a card number, or None.

    Says where, never what. Values under an identifier key are not looked at (see `mask_free_text`).
    """
    return _first_card_field(value, path, _free, ids_too=False, root="(document)")


def _first_card_field(value: Any, path: str, free: bool, *, ids_too: bool, root: str) -> str | None:
    """The one walk behind both finders. `ids_too`: look at every field (a request body, where nothing
    may hold a card number); otherwise pass over identifiers, as `mask_free_text` does. A card number
    in a key is named by the object's path (`ids_too`) or by `<path>.(key)`."""
    if isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            if contains_card_number(key):
                if ids_too:
                    return path or root
                return f"{path}.(key)" if path else "(key)"
            if not ids_too and _kept_as_is(key, v, free):
                continue
            inner = free or (not ids_too and key.lower() in _FREE_TEXT_CONTAINERS)
            found = _first_card_field(v, f"{path}.{key}" if path else key, inner, ids_too=ids_too, root=root)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _first_card_field(v, f"{path}[{i}]", free, ids_too=ids_too, root=root)
            if found is not None:
                return found
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, str)):
        return (path or root) if contains_card_number(str(value)) else None
    return None


def mask_json_text(raw: str) -> str:
    """A JSON document (a webhook body, say) with the card numbers in its free text masked.

    The text is returned as it came (the same object) when there is nothing to mask, so a clean body
    is kept byte for byte; otherwise it is written again as JSON, still valid. Text that is not JSON
    is masked as plain text.
    """
    if not may_hold_card_number(raw):
        return raw
    try:
        document = json.loads(raw)
    except ValueError:
        return mask_card_numbers(raw)
    masked = mask_free_text(document)
    if masked == document:
        return raw
    return json.dumps(masked, ensure_ascii=False, separators=(",", ":"))
