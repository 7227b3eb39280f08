"""Opaque ids with a type prefix: made here (time-ordered, ULID-like: indexes stay append-mostly), checked here."""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """`prefix_` + 10 chars of milliseconds + 16 random chars (80 bits)."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_b32(millis, 10)}{_b32(rand, 16)}"


PAYMENT = "pay"
PAYMENT_METHOD = "pm"
REFUND = "re"
WITHDRAWAL = "wd"
EVENT = "evt"
CLIENT = "cli"


# What an id of ours looks like: its prefix, then lower-case Crockford base32 (a late-success refund
# adds `_` and hex). Anything else is not ours, whatever the database would say.
_WELL_FORMED = re.compile(r"[a-z]{2,3}_[0-9a-z_]{10,60}")


def well_formed(prefix: str, value: str) -> bool:
    """True if `value` can be an id of kind `prefix` (a cheap check before any query)."""
    return value.startswith(prefix + "_") and _WELL_FORMED.fullmatch(value) is not None


def pattern(prefix: str) -> str:
    """The id's JSON Schema / OpenAPI pattern."""
    return f"^{prefix}_[0-9a-z_]{{10,60}}$"
