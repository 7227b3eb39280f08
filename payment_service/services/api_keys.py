"""API keys of service clients: generation, hashing, display prefix, scope and name checks.

Standard library only. The storage side is adapters/api_clients.py; the HTTP side is api/auth.py.
A key is shown once, when it is issued; afterwards only its SHA-256 and its prefix exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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
    require_signing: bool = False
    signing_secrets: tuple[KeyInfo, ...] = ()


# --- signed requests (issue 12): a per-client signing secret, X-Signature over each mutation ----------

SIGNING_PREFIX = "pss_"
SIGNATURE_TOLERANCE_SECONDS = 300
SIGNED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def generate_salt() -> str:
    """What is stored for a signing secret: 256 random bits. The secret itself is derived, never stored."""
    return secrets.token_hex(32)


def derive_signing_secret(master_key: str, client_id: str, salt: str) -> str:
    """The client's signing secret: HMAC(CLIENT_SIGNING_MASTER_KEY, client id and salt). Neither the table
    (salts) nor the master key alone gives it; the server recomputes it to check a signature."""
    mac = hmac.new(master_key.encode(), f"{client_id}:{salt}".encode(), hashlib.sha256).digest()
    return SIGNING_PREFIX + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def signing_payload(timestamp: str, method: str, path_with_query: str, body: bytes) -> bytes:
    """`<t>.<METHOD>.<path with query>.<raw body>` (CONTRACT.md)."""
    return f"{timestamp}.{method.upper()}.{path_with_query}.".encode() + body


def sign(secret: str, timestamp: int | str, method: str, path_with_query: str, body: bytes) -> str:
    """Hex HMAC-SHA256 with the signing secret: the `v1` of X-Signature."""
    return hmac.new(secret.encode(), signing_payload(str(timestamp), method, path_with_query, body),
                    hashlib.sha256).hexdigest()


def signature_header(secret: str, method: str, path_with_query: str, body: bytes, timestamp: int) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, method, path_with_query, body)}"


@dataclass(frozen=True)
class SignatureCheck:
    """A checked X-Signature. `code` is None when it is valid; else why not (the 401's code)."""

    code: str | None
    message: str = ""
    matched: str | None = None  # the v1 that matched: what is remembered against replay
    timestamp: int = 0


def check_signature(
    header: str | None, secrets_: Iterable[str], method: str, path_with_query: str, body: bytes, now: float,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> SignatureCheck:
    """Whether X-Signature signs this request with one of the client's active secrets, in time.
    Replay is the caller's check (it needs shared storage)."""
    if not header:
        return SignatureCheck("signature_required", "this client must sign mutations: send "
                              "X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256> (docs/auth.md)")
    t_value: str | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            t_value = value
        elif name == "v1" and _HEX64.match(value):
            candidates.append(value)
    if t_value is None or not t_value.isdigit() or len(t_value) > 12 or not candidates:
        return SignatureCheck("signature_invalid", "X-Signature is malformed: expected t=<unix seconds>,v1=<64 hex "
                              "digits>")
    timestamp = int(t_value)
    if abs(now - timestamp) > tolerance:
        return SignatureCheck("signature_expired", f"X-Signature's timestamp is more than {tolerance} s from the "
                              "server's time: sign each request when it is sent", timestamp=timestamp)
    for secret in secrets_:
        expected = sign(secret, t_value, method, path_with_query, body)
        for v1 in candidates:
            if hmac.compare_digest(expected, v1):
                return SignatureCheck(None, matched=v1, timestamp=timestamp)
    return SignatureCheck("signature_invalid", "X-Signature does not match this request (method, path and query, "
                          "body) under any active signing secret of this client", timestamp=timestamp)


def replay_token(client_id: str, v1: str) -> str:
    """What the replay store keeps for a signature: a hash, keyed by client."""
    return hashlib.sha256(f"{client_id}:{v1}".encode()).hexdigest()


@dataclass(frozen=True)
class IssuedSigningSecret:
    """A signing secret just created. `secret` is the plaintext: print it once."""

    client_id: str
    client_name: str
    secret: str = field(repr=False)
    prefix: str
    created_at: datetime
