"""JwtVerifier (api/auth.py) remembers the tokens it accepted until they expire, and nothing else."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from payment_service.api.auth import JWT_LEEWAY_SECONDS, JwtVerifier
from payment_service.domain.principal import Principal

SECRET = "unit-jwt-secret-0123456789abcdef-0123456789"
AUDIENCE = "payment-service-unit"


def _token(sub: str = "u_1", exp_in: float = 300, **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, "aud": AUDIENCE, "exp": int(time.time() + exp_in), **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.fixture
def verifier(monkeypatch: pytest.MonkeyPatch) -> tuple[JwtVerifier, list[str]]:
    checked: list[str] = []
    full_check = JwtVerifier._check

    def counting(self: JwtVerifier, token: str) -> Any:
        checked.append(token)
        return full_check(self, token)

    monkeypatch.setattr(JwtVerifier, "_check", counting)
    return JwtVerifier(keys={"HS256": SECRET}, audience=AUDIENCE, issuer=None), checked


def test_an_accepted_token_is_checked_once(verifier: tuple[JwtVerifier, list[str]]) -> None:
    v, checked = verifier
    token = _token()
    assert [v.verify(token) for _ in range(5)] == [Principal(kind="user", id="u_1")] * 5
    assert checked == [token]
    other = _token(sub="u_2")
    assert v.verify(other) == Principal(kind="user", id="u_2")
    assert checked == [token, other]


def test_a_refused_token_is_checked_every_time(verifier: tuple[JwtVerifier, list[str]]) -> None:
    v, checked = verifier
    expired, wrong_audience = _token(exp_in=-3600), _token(aud="someone-else")
    forged = _token()[:-2] + ("AA" if not _token().endswith("AA") else "BB")
    for bad in (expired, wrong_audience, forged, expired):
        with pytest.raises(jwt.InvalidTokenError):
            v.verify(bad)
    assert checked == [expired, wrong_audience, forged, expired]
    assert len(v.accepted) == 0


def test_kept_until_exp_plus_leeway_then_checked_again(
    verifier: tuple[JwtVerifier, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry lapses when PyJWT would start refusing the token (exp + leeway), not later."""
    v, checked = verifier
    token = _token(exp_in=300)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    v.verify(token)
    monkeypatch.setattr(time, "time", lambda: exp + JWT_LEEWAY_SECONDS - 1)  # the cache's clock
    v.verify(token)
    assert len(checked) == 1
    monkeypatch.setattr(time, "time", lambda: exp + JWT_LEEWAY_SECONDS)
    v.verify(token)  # checked in full again (PyJWT's own clock, the real one, still accepts it)
    assert len(checked) == 2


def test_the_cache_holds_digests_not_tokens(verifier: tuple[JwtVerifier, list[str]]) -> None:
    v, _ = verifier
    token = _token()
    v.verify(token)
    (key,) = list(v.accepted.keys())
    assert isinstance(key, bytes) and len(key) == 32 and token.encode() not in key
