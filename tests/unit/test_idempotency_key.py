"""Idempotency keys are stored as a hash: no header value is ever stored as sent (issue 9, scenario 6)."""

import hashlib

import pytest

from payment_service.domain.errors import ValidationFailed
from payment_service.services.idempotency import validate_key

PAN = "4242424242424242"


def test_key_is_returned_as_its_sha256() -> None:
    stored = validate_key(PAN)
    assert stored == hashlib.sha256(PAN.encode()).hexdigest() and PAN not in stored
    assert validate_key("k" * 255) == hashlib.sha256(b"k" * 255).hexdigest()
    assert validate_key("é") == hashlib.sha256("é".encode()).hexdigest()
    assert validate_key("a") != validate_key("b")


@pytest.mark.parametrize("key", [None, "", "k" * 256])
def test_missing_or_too_long_key_is_refused(key: str | None) -> None:
    with pytest.raises(ValidationFailed, match="Idempotency-Key header is required") as exc:
        validate_key(key)
    assert exc.value.errors[0]["field"] == "Idempotency-Key"
