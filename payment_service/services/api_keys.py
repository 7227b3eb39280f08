"""API keys of service clients: generation, hashing, display prefix, scope and name checks.

Standard library only. The storage side is adapters/api_clients.py; the HTTP side is api/auth.py.
A key is shown once, when it is issued; afterwards only its SHA-256 and its prefix exist.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..domain.errors import ValidationFailed
from ..domain.principal import SCOPES

KEY_PREFIX = "psk_"
_KEY_BYTES = 32  # 256 bits from the OS CSPRNG
KEY_LENGTH = len(KEY_PREFIX) + 43  # token_urlsafe(32): 32 bytes -> 43 base64url characters, no padding
DISPLAY_PREFIX_LENGTH = 12  # "psk_" + 8 characters: tells keys apart in listings, useless to an attacker
_KEY_RE = re.compile(r"^psk_[A-Za-z0-9_-]{43}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def generate_key() -> str:
    """A new API key: `psk_` + 43 URL-safe characters carrying 256 bits of randomness."""
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def hash_key(key: str) -> str:
    """SHA-256 hex of the key: what is stored and looked up.

    A fast, unsalted hash is right here, unlike for passwords: each key holds 256 random bits, so
    there is no dictionary to try and brute force is out of reach however fast the hash is, and a
    deterministic hash lets `authenticate` find the key with one indexed equality lookup. Slow,
    salted KDFs (bcrypt, argon2) exist to protect low-entropy secrets; they would add only latency.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]


def looks_like_key(value: str) -> bool:
    """Whether `value` has the shape of one of our keys (checked before any database lookup)."""
    return bool(_KEY_RE.match(value))


def validate_scopes(scopes: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(s.strip() for s in scopes if s.strip())
    unknown = sorted(wanted - SCOPES)
    if unknown:
        raise ValidationFailed(
            f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(sorted(SCOPES))}", field="scopes"
        )
    if not wanted:
        raise ValidationFailed(f"a client needs at least one scope of: {', '.join(sorted(SCOPES))}", field="scopes")
    return wanted


def validate_client_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValidationFailed(
            "a client name is 1 to 100 characters: letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="name",
        )
    return name


def scopes_to_column(scopes: Iterable[str]) -> str:
    return " ".join(sorted(scopes))


def scopes_from_column(value: str) -> frozenset[str]:
    return frozenset(value.split())


@dataclass(frozen=True)
class IssuedKey:
    """A key just created. `key` is the plaintext: print it once and forget it."""

    client_id: str
    client_name: str
    key: str = field(repr=False)
    prefix: str
    created_at: datetime


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.expires_at is not None:
            return "expiring"
        return "active"


@dataclass(frozen=True)
class ClientInfo:
    id: str
    name: str
    scopes: frozenset[str]
    created_at: datetime
    disabled_at: datetime | None
    keys: tuple[KeyInfo, ...] = ()
