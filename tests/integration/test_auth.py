"""Authentication on the real database: API clients and keys, JWTs, scopes, rate limits, the CLI.

One MariaDB database for the module (migrated once); each test names its own clients.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from config import load_settings
from config.settings import ConfigError
from payment_service.adapters import migrate
from payment_service.adapters.api_clients import SqlAlchemyApiClientRepository
from payment_service.adapters.orm import ApiKeyRow
from payment_service.api import create_app
from payment_service.api.auth import current_principal, require_scope, require_user, require_user_or_scope
from payment_service.bootstrap import make_engine
from payment_service.cli import main
from payment_service.domain.errors import Conflict, NotFound, ValidationFailed
from payment_service.domain.events import utcnow
from payment_service.services.api_keys import hash_key

pytestmark = pytest.mark.integration

SECRET = "test-jwt-secret-0123456789abcdef-0123456789"
AUDIENCE = "payment-service-test"
ISSUER = "https://id.wallet.example"


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db_url(fresh_database_url: str) -> str:
    migrate.upgrade(fresh_database_url)
    return fresh_database_url


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def repo(engine: Engine) -> Iterator[SqlAlchemyApiClientRepository]:
    """A repository whose work is committed when the test body has finished with it."""
    with Session(engine) as session:
        yield SqlAlchemyApiClientRepository(session)
        session.commit()


def _commit(repo: SqlAlchemyApiClientRepository) -> None:
    repo.session.commit()


def _name(label: str = "c") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def _add_routes(app: Flask) -> Flask:
    @app.get("/_test/any")
    def any_caller() -> dict[str, Any]:
        p = current_principal()
        return {"kind": p.kind, "id": p.id}

    @app.get("/_test/user")
    def user_only() -> dict[str, Any]:
        return {"id": require_user().id}

    @app.get("/_test/scoped")
    def scoped() -> dict[str, Any]:
        return {"id": require_scope("payments:refund").id}

    @app.get("/_test/either")
    def either() -> dict[str, Any]:
        return {"id": require_user_or_scope("payments:read").id}

    return app


def _make_app(db_url: str, **overrides: Any) -> Flask:
    settings: dict[str, Any] = {
        "DATABASE_URL": db_url,
        "TESTING": True,
        "JWT_SECRET": SECRET,
        "JWT_AUDIENCE": AUDIENCE,
        "JWT_ISSUER": ISSUER,
    }
    settings.update(overrides)
    return _add_routes(create_app(**settings))


@pytest.fixture
def make_app(db_url: str) -> Iterator[Any]:
    apps: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        app = _make_app(db_url, **overrides)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["payment_service"].close()


@pytest.fixture
def client(make_app: Any) -> Any:
    return make_app().test_client()


def _token(key: Any = SECRET, algorithm: str = "HS256", drop: tuple[str, ...] = (), **claims: Any) -> str:
    body: dict[str, Any] = {"sub": "u_1", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300}
    body.update(claims)
    for name in drop:
        body.pop(name)
    return jwt.encode(body, key, algorithm=algorithm)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = resp.get_json(force=True)
    assert body["status"] == status and body["code"] == code
    return body


def _assert_401(resp: Any, token: str | None = None) -> dict[str, Any]:
    body = _assert_problem(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    if token:
        assert token not in resp.get_data(as_text=True)
        assert token not in str(resp.headers)
    return body


# --- the repository -----------------------------------------------------------------------


def test_create_stores_only_hash_and_prefix(repo: SqlAlchemyApiClientRepository) -> None:
    issued = repo.create_client(_name(), ["payments:read", "payments:refund"])
    _commit(repo)
    rows = repo.session.execute(select(ApiKeyRow).where(ApiKeyRow.client_id == issued.client_id)).scalars().all()
    assert len(rows) == 1
    assert rows[0].key_hash == hashlib.sha256(issued.key.encode()).hexdigest()
    assert rows[0].prefix == issued.key[:12] == issued.prefix
    stored = " ".join(str(v) for v in repo.session.execute(text("SELECT * FROM api_keys")).all())
    assert issued.key not in stored

    principal = repo.authenticate(issued.key)
    assert principal is not None
    assert principal.kind == "client" and principal.id == issued.client_id
    assert principal.scopes == {"payments:read", "payments:refund"}
    assert principal.caller_key == f"client:{issued.client_id}"


def test_wrong_or_malformed_key_fails(repo: SqlAlchemyApiClientRepository) -> None:
    issued = repo.create_client(_name(), ["payments:read"])
    _commit(repo)
    wrong = issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")
    assert repo.authenticate(wrong) is None
    assert repo.authenticate("psk_nope") is None
    assert repo.authenticate("") is None
    assert repo.authenticate(hash_key(issued.key)) is None  # the stored hash is not a credential


def test_duplicate_name_and_bad_scopes_refused(repo: SqlAlchemyApiClientRepository) -> None:
    name = _name()
    repo.create_client(name, ["payments:read"])
    _commit(repo)
    with pytest.raises(Conflict):
        repo.create_client(name, ["payments:read"])
    with pytest.raises(ValidationFailed):
        repo.create_client(_name(), ["payments:everything"])
    with pytest.raises(NotFound):
        repo.rotate(_name("missing"))


def test_rotate_with_overlap(engine: Engine) -> None:
    name = _name("rot")
    with Session(engine) as session, session.begin():
        repo = SqlAlchemyApiClientRepository(session)
        old = repo.create_client(name, ["payments:read"])
        new = repo.rotate(name, expire_old_in=60)

    with Session(engine) as session:
        during = SqlAlchemyApiClientRepository(session)
        assert during.authenticate(old.key) is not None  # both work during the overlap
        assert during.authenticate(new.key) is not None
        after = SqlAlchemyApiClientRepository(session, now=lambda: utcnow() + timedelta(seconds=61))
        assert after.authenticate(old.key) is None  # the old one expired
        assert after.authenticate(new.key) is not None

        (info,) = [c for c in during.list_clients() if c.name == name]
        by_prefix = {k.prefix: k for k in info.keys}
        assert by_prefix[old.prefix].expires_at is not None and by_prefix[new.prefix].expires_at is None


def test_rotate_without_expiry_keeps_old_keys_and_zero_expires_now(engine: Engine) -> None:
    name = _name("rot0")
    with Session(engine) as session, session.begin():
        repo = SqlAlchemyApiClientRepository(session)
        first = repo.create_client(name, ["payments:read"])
        second = repo.rotate(name)
    with Session(engine) as session, session.begin():
        repo = SqlAlchemyApiClientRepository(session)
        assert repo.authenticate(first.key) is not None and repo.authenticate(second.key) is not None
        third = repo.rotate(name, expire_old_in=0)
    with Session(engine) as session:
        repo = SqlAlchemyApiClientRepository(session)
        assert repo.authenticate(first.key) is None
        assert repo.authenticate(second.key) is None
        assert repo.authenticate(third.key) is not None


def test_revoke_one_key_then_all(engine: Engine) -> None:
    name = _name("rev")
    with Session(engine) as session, session.begin():
        repo = SqlAlchemyApiClientRepository(session)
        a = repo.create_client(name, ["payments:read"])
        b = repo.add_key(name)
        c = repo.add_key(name)
        assert repo.revoke(name, key_prefix=a.prefix) == 1
    with Session(engine) as session, session.begin():
        repo = SqlAlchemyApiClientRepository(session)
        assert repo.authenticate(a.key) is None
        assert repo.authenticate(b.key) is not None and repo.authenticate(c.key) is not None
        with pytest.raises(NotFound):
            repo.revoke(name, key_prefix=a.prefix)  # already revoked
    with Session(engine) as session, session.begin():
        assert SqlAlchemyApiClientRepository(session).revoke(name) == 2
    with Session(engine) as session:
        repo = SqlAlchemyApiClientRepository(session)
        assert repo.authenticate(b.key) is None and repo.authenticate(c.key) is None


def test_disabled_client_fails(engine: Engine) -> None:
    name = _name("dis")
    with Session(engine) as session, session.begin():
        repo = SqlAlchemyApiClientRepository(session)
        issued = repo.create_client(name, ["payments:read"])
    with Session(engine) as session, session.begin():
        repo = SqlAlchemyApiClientRepository(session)
        assert repo.disable(name) is True
        assert repo.disable(name) is False
    with Session(engine) as session:
        repo = SqlAlchemyApiClientRepository(session)
        assert repo.authenticate(issued.key) is None
        with pytest.raises(Conflict):
            repo.rotate(name)


def test_list_has_no_secrets(repo: SqlAlchemyApiClientRepository) -> None:
    issued = repo.create_client(_name("lst"), ["withdrawals:read"])
    _commit(repo)
    (info,) = [c for c in repo.list_clients() if c.id == issued.client_id]
    assert info.scopes == {"withdrawals:read"} and info.disabled_at is None
    assert [k.prefix for k in info.keys] == [issued.prefix]
    assert issued.key not in repr(info) and hash_key(issued.key) not in repr(info)


# --- HTTP: API keys and scopes ---------------------------------------------------------------


def _issue(engine: Engine, scopes: list[str]) -> str:
    with Session(engine) as session, session.begin():
        return SqlAlchemyApiClientRepository(session).create_client(_name("http"), scopes).key


def test_no_credential_is_401_with_challenge(client: Any) -> None:
    body = _assert_401(client.get("/_test/any"))
    assert client.get("/_test/any").headers["WWW-Authenticate"] == 'Bearer realm="payment-service"'
    assert "Authorization" in body["detail"]
    _assert_401(client.get("/_test/scoped"))
    _assert_401(client.get("/_test/user"))


def test_api_key_scopes(client: Any, engine: Engine) -> None:
    key = _issue(engine, ["payments:read"])
    headers = {"X-API-Key": key}
    assert client.get("/_test/either", headers=headers).status_code == 200
    assert client.get("/_test/any", headers=headers).get_json()["kind"] == "client"
    body = _assert_problem(client.get("/_test/scoped", headers=headers), 403, "insufficient_scope")
    assert "payments:refund" in body["detail"]
    _assert_problem(client.get("/_test/user", headers=headers), 403, "forbidden")

    refunder = _issue(engine, ["payments:refund"])
    assert client.get("/_test/scoped", headers={"X-API-Key": refunder}).status_code == 200
    _assert_problem(client.get("/_test/either", headers={"X-API-Key": refunder}), 403, "insufficient_scope")


def test_bad_api_keys_are_401(client: Any, engine: Engine) -> None:
    key = _issue(engine, ["payments:read"])
    resp = client.get("/_test/any", headers={"X-API-Key": key[:-2] + "xx"})
    body = _assert_401(resp, key[:-2] + "xx")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert body["detail"] == "the API key is not valid"
    _assert_401(client.get("/_test/any", headers={"X-API-Key": "garbage"}), "garbage")
    both = {"X-API-Key": key, **_bearer(_token())}
    _assert_401(client.get("/_test/any", headers=both))


def test_revoked_key_is_401_over_http(client: Any, engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        repo = SqlAlchemyApiClientRepository(session)
        name = _name("http-rev")
        issued = repo.create_client(name, ["payments:read"])
    assert client.get("/_test/any", headers={"X-API-Key": issued.key}).status_code == 200
    with Session(engine) as session, session.begin():
        SqlAlchemyApiClientRepository(session).revoke(name)
    _assert_401(client.get("/_test/any", headers={"X-API-Key": issued.key}), issued.key)


def test_user_on_service_endpoint_is_403(client: Any) -> None:
    headers = _bearer(_token(sub="u_42"))
    assert client.get("/_test/user", headers=headers).get_json() == {"id": "u_42"}
    assert client.get("/_test/either", headers=headers).get_json() == {"id": "u_42"}
    _assert_problem(client.get("/_test/scoped", headers=headers), 403, "insufficient_scope")


def test_exempt_paths_need_no_credential(client: Any) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz", headers={"X-API-Key": "garbage"}).status_code == 200
    assert client.get("/openapi.json").status_code == 200


# --- HTTP: JWT ----------------------------------------------------------------------------


def test_jwt_hs256_valid(client: Any) -> None:
    resp = client.get("/_test/any", headers=_bearer(_token(sub="u_7")))
    assert resp.status_code == 200 and resp.get_json() == {"kind": "user", "id": "u_7"}
    # within the leeway for clock skew
    assert client.get("/_test/any", headers=_bearer(_token(exp=int(time.time()) - 5))).status_code == 200


@pytest.mark.parametrize(
    ("token_args", "detail"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"drop": ("iss",)}, "'iss'"),
        ({"drop": ("sub",)}, "'sub'"),
        ({"drop": ("exp",)}, "'exp'"),
        ({"drop": ("aud",)}, "'aud'"),
        ({"sub": ""}, "sub"),
        ({"sub": "u" * 65}, "sub"),
        ({"key": "another-secret-0123456789abcdef-0123456789"}, "signature"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
    ],
)
def test_jwt_refused(client: Any, caplog: pytest.LogCaptureFixture, token_args: dict[str, Any], detail: str) -> None:
    token = _token(**token_args)
    with caplog.at_level("DEBUG"):
        resp = client.get("/_test/any", headers=_bearer(token))
    body = _assert_401(resp, token)
    assert detail in body["detail"]
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    for record in caplog.records:
        assert token not in str(record.__dict__)


def test_jwt_alg_none_refused(client: Any) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"sub": "u_1", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300}).encode())
    for token in (f"{header}.{claims}.", f"{header}.{claims}"):
        body = _assert_401(client.get("/_test/any", headers=_bearer(token)))
        assert "algorithm" in body["detail"] or "malformed" in body["detail"]


def test_malformed_authorization_refused(client: Any) -> None:
    _assert_401(client.get("/_test/any", headers={"Authorization": "Basic dXNlcjpwYXNz"}))
    _assert_401(client.get("/_test/any", headers={"Authorization": "Bearer"}))
    _assert_401(client.get("/_test/any", headers=_bearer("not.a.jwt")))
    _assert_401(client.get("/_test/any", headers=_bearer("x" * 10000)))


def test_credential_store_down_is_503_not_401(tmp_path: Any) -> None:
    # A database without the tables stands in for one that is down: the lookup raises a DBAPIError.
    url = f"sqlite:///{tmp_path}/never-migrated.sqlite3"
    app = _add_routes(create_app(DATABASE_URL=url, TESTING=True, JWT_SECRET=SECRET))
    headers = {"X-API-Key": "psk_" + "a" * 43}
    try:
        client = app.test_client()
        assert client.get("/openapi.json", headers=headers).status_code == 200  # exempt: no lookup
        _assert_problem(client.get("/nope", headers=headers), 404, "not_found")  # unrouted: no lookup
        _assert_problem(client.get("/_test/any", headers=headers), 503, "service_unavailable")
    finally:
        app.extensions["payment_service"].close()


def test_short_hs256_secret_refused_at_startup(db_url: str) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        create_app(DATABASE_URL=db_url, TESTING=True, JWT_SECRET="short")


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[Any, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public_pem


def test_jwt_rs256(make_app: Any, rsa_keys: tuple[Any, str]) -> None:
    private, public_pem = rsa_keys
    app = make_app(JWT_PUBLIC_KEY=public_pem)  # RS256 only: load_settings drops the HS256 secret
    client = app.test_client()
    ok = _token(key=private, algorithm="RS256", sub="u_rs")
    assert client.get("/_test/any", headers=_bearer(ok)).get_json() == {"kind": "user", "id": "u_rs"}

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _assert_401(client.get("/_test/any", headers=_bearer(_token(key=other, algorithm="RS256"))))
    body = _assert_401(client.get("/_test/any", headers=_bearer(_token())))  # HS256 is not configured here
    assert "algorithm" in body["detail"]

    # Algorithm confusion: HS256 "signed" with the public key as the HMAC secret.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"sub": "u_1", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300}).encode())
    sig = _b64(hmac.new(public_pem.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest())
    _assert_401(client.get("/_test/any", headers=_bearer(f"{header}.{claims}.{sig}")))


def test_jwt_hs256_and_rs256_together(db_url: str, rsa_keys: tuple[Any, str]) -> None:
    private, public_pem = rsa_keys
    settings = load_settings(
        DATABASE_URL=db_url, TESTING=True, JWT_PUBLIC_KEY=public_pem, JWT_AUDIENCE=AUDIENCE, JWT_ISSUER=ISSUER
    )
    settings.JWT_SECRET = SECRET  # as if both JWT_SECRET and JWT_PUBLIC_KEY were in the environment
    app = _add_routes(create_app(settings))
    try:
        client = app.test_client()
        assert client.get("/_test/any", headers=_bearer(_token(key=private, algorithm="RS256"))).status_code == 200
        assert client.get("/_test/any", headers=_bearer(_token())).status_code == 200
    finally:
        app.extensions["payment_service"].close()


# --- rate limits ------------------------------------------------------------------------


def test_rate_limit_per_user_with_retry_after(make_app: Any) -> None:
    client = make_app(RATE_LIMIT_USER="3/hour").test_client()
    alice, bob = _bearer(_token(sub="u_alice")), _bearer(_token(sub="u_bob"))
    for _ in range(3):
        assert client.get("/_test/any", headers=alice).status_code == 200
    resp = client.get("/_test/user", headers=alice)  # one budget across endpoints
    body = _assert_problem(resp, 429, "rate_limited")
    assert 1 <= int(resp.headers["Retry-After"]) <= 3600
    assert "3 per 1 hour" in body["detail"]
    assert resp.headers["X-Request-Id"]

    # Bob has his own budget; unlimited paths and anonymous requests are not counted.
    for _ in range(3):
        assert client.get("/_test/any", headers=bob).status_code == 200
    assert client.get("/healthz", headers=alice).status_code == 200
    for _ in range(5):
        _assert_401(client.get("/_test/any"))
    assert client.get("/_test/any", headers=bob).status_code == 429
    # No Retry-After on answers that are not 429.
    assert "Retry-After" not in client.get("/healthz").headers


def test_rate_limit_per_client(make_app: Any, engine: Engine) -> None:
    client = make_app(RATE_LIMIT_USER="1/hour", RATE_LIMIT_CLIENT="2/hour").test_client()
    k1, k2 = _issue(engine, ["payments:read"]), _issue(engine, ["payments:read"])
    for key in (k1, k2):
        for _ in range(2):
            assert client.get("/_test/either", headers={"X-API-Key": key}).status_code == 200
    resp = client.get("/_test/either", headers={"X-API-Key": k1})
    _assert_problem(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1


# --- CLI ----------------------------------------------------------------------------------


_KEY_RE = re.compile(r"psk_[A-Za-z0-9_-]{43}")


def test_cli_create_rotate_revoke_disable_list(db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    runner = CliRunner()
    name = _name("cli")

    created = runner.invoke(main, ["clients", "create", name, "--scope", "payments:read", "--scope", "payments:refund"])
    assert created.exit_code == 0, created.output
    (key,) = _KEY_RE.findall(created.output)
    assert re.search(r"cli_[0-9a-z]{26}", created.output)
    with Session(engine) as session:
        principal = SqlAlchemyApiClientRepository(session).authenticate(key)
    assert principal is not None and principal.name == name
    assert principal.scopes == {"payments:read", "payments:refund"}

    dup = runner.invoke(main, ["clients", "create", name, "--scope", "payments:read"])
    assert dup.exit_code != 0 and "already exists" in dup.output
    bad = runner.invoke(main, ["clients", "create", _name(), "--scope", "root"])
    assert bad.exit_code != 0 and "unknown scope" in bad.output

    rotated = runner.invoke(main, ["clients", "rotate", name, "--expire-old-in", "3600"])
    assert rotated.exit_code == 0, rotated.output
    (new_key,) = _KEY_RE.findall(rotated.output)
    with Session(engine) as session:
        repo = SqlAlchemyApiClientRepository(session)
        assert repo.authenticate(key) is not None and repo.authenticate(new_key) is not None

    listed = runner.invoke(main, ["clients", "list"])
    assert listed.exit_code == 0, listed.output
    assert name in listed.output and key[:12] in listed.output and new_key[:12] in listed.output
    assert "payments:read,payments:refund" in listed.output and "expiring" in listed.output
    for secret in (key, new_key, hash_key(key), hash_key(new_key)):
        assert secret not in listed.output
    assert not _KEY_RE.search(listed.output)

    revoked = runner.invoke(main, ["clients", "revoke", name, "--key-prefix", key[:12]])
    assert revoked.exit_code == 0 and "revoked 1 key" in revoked.output
    missing = runner.invoke(main, ["clients", "revoke", name, "--key-prefix", "psk_nothere"])
    assert missing.exit_code != 0
    with Session(engine) as session:
        repo = SqlAlchemyApiClientRepository(session)
        assert repo.authenticate(key) is None and repo.authenticate(new_key) is not None

    disabled = runner.invoke(main, ["clients", "disable", name])
    assert disabled.exit_code == 0 and "disabled" in disabled.output
    with Session(engine) as session:
        assert SqlAlchemyApiClientRepository(session).authenticate(new_key) is None

    all_revoked = runner.invoke(main, ["clients", "revoke", name])
    assert all_revoked.exit_code == 0 and "revoked 1 key" in all_revoked.output
