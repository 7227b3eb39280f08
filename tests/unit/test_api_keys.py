"""API key generation, hashing, prefixes and scope checks (no database)."""

import hashlib
import math
import re
from collections import Counter

import pytest

from payment_service.domain.errors import ValidationFailed
from payment_service.domain.principal import SCOPES
from payment_service.services import api_keys


def test_key_format() -> None:
    key = api_keys.generate_key()
    assert re.fullmatch(r"psk_[A-Za-z0-9_-]{43}", key)
    assert len(key) == api_keys.KEY_LENGTH == 47
    assert api_keys.looks_like_key(key)


def test_keys_are_unique_and_high_entropy() -> None:
    keys = [api_keys.generate_key() for _ in range(2000)]
    assert len(set(keys)) == len(keys)
    assert len({api_keys.display_prefix(k) for k in keys}) == len(keys)  # 48 random bits in a prefix
    # Character frequencies over the random part are close to uniform over the 64-symbol alphabet:
    # Shannon entropy per character near log2(64) = 6 bits (43 chars ~ 256 bits per key).
    counts = Counter("".join(k[4:] for k in keys))
    total = sum(counts.values())
    entropy = -sum(n / total * math.log2(n / total) for n in counts.values())
    assert len(counts) == 64
    assert entropy > 5.95


def test_hash_is_sha256_hex_and_deterministic() -> None:
    key = api_keys.generate_key()
    digest = api_keys.hash_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert api_keys.hash_key(key) == digest
    assert api_keys.hash_key(key + "x") != digest
    assert key not in digest


def test_display_prefix_is_short() -> None:
    key = api_keys.generate_key()
    assert api_keys.display_prefix(key) == key[:12]
    assert api_keys.display_prefix(key).startswith("psk_")


@pytest.mark.parametrize(
    "value", ["", "psk_", "psk_short", "sk_" + "a" * 44, "psk_" + "a" * 42 + "!", "psk_" + "a" * 44]
)
def test_looks_like_key_rejects_other_shapes(value: str) -> None:
    assert not api_keys.looks_like_key(value)


def test_validate_scopes() -> None:
    assert api_keys.validate_scopes(["payments:read", " payments:refund ", "payments:read"]) == {
        "payments:read",
        "payments:refund",
    }
    assert api_keys.validate_scopes(SCOPES) == SCOPES
    with pytest.raises(ValidationFailed, match="unknown scope"):
        api_keys.validate_scopes(["payments:read", "admin"])
    with pytest.raises(ValidationFailed, match="at least one"):
        api_keys.validate_scopes([])


def test_scopes_column_round_trip() -> None:
    column = api_keys.scopes_to_column({"withdrawals:read", "payments:read"})
    assert column == "payments:read withdrawals:read"
    assert api_keys.scopes_from_column(column) == {"payments:read", "withdrawals:read"}


@pytest.mark.parametrize("name", ["wallet-service", "ops.tool_1", "A"])
def test_valid_client_names(name: str) -> None:
    assert api_keys.validate_client_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", "has space", "x" * 101, "semi;colon"])
def test_invalid_client_names(name: str) -> None:
    with pytest.raises(ValidationFailed):
        api_keys.validate_client_name(name)


def test_issued_key_repr_hides_the_key() -> None:
    from datetime import UTC, datetime

    key = api_keys.generate_key()
    issued = api_keys.IssuedKey("cli_1", "c", key, api_keys.display_prefix(key), datetime.now(UTC))
    assert key not in repr(issued)
