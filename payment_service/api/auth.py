"""Who is calling: `identify()` runs before every request; views call one `require_*` helper.

* End users send `Authorization: Bearer <JWT>` (HS256 with JWT_SECRET and/or RS256 with
  JWT_PUBLIC_KEY; `exp`, `sub` and `aud` required, `iss` checked when JWT_ISSUER is set).
* Service clients send `X-API-Key: psk_...`, looked up by its SHA-256 (adapters/api_clients.py).
  A client that requires signing must also send, on every mutation, `X-Signature: t=<unix>,v1=<hex>`:
  HMAC-SHA256 with its signing secret over `<t>.<METHOD>.<path with query>.<raw body>`, within 300 s
  of our clock, never used before (the signatures seen are kept in the database, so a replay to
  another API process is refused too). Otherwise the request has no principal and a 401 says which
  (`signature_required`, `signature_invalid`, `signature_expired`, `signature_replayed`).

`identify()` never refuses a request by itself: it sets `g.principal` (or None) and, for a bad
credential, `g.auth_error`. The views decide, through the helpers below:

    current_principal()              any authenticated caller, else 401
    require_user()                   an end user; a service client gets 403 `forbidden`
    require_scope("payments:read")   a service client with that scope; else 403 `insufficient_scope`
    require_user_or_scope(scope)     an end user, or a client with that scope

Ownership is the view's business: another user's resource answers 404, never 403.
Neither a token nor a key is ever logged or echoed back in an error.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cachetools import TLRUCache
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Flask, Response, current_app, g, request
from jwt.exceptions import InvalidSubjectError
from sqlalchemy.exc import DBAPIError

from config import Settings
from config.settings import ConfigError

from ..domain.errors import DependencyUnavailable, Forbidden, InsufficientScope, Unauthorized
from ..domain.principal import SCOPES, Principal
from ..services import api_keys
from . import errors
from .context import container

logger = logging.getLogger(__name__)

REALM = "payment-service"
JWT_LEEWAY_SECONDS = 30  # clock skew between the token issuer and us
ACCEPTED_TOKENS = 10_000  # tokens remembered per process once accepted (JwtVerifier)
_MAX_SUB_LENGTH = 64  # payments.user_id is VARCHAR(64)
_MAX_CREDENTIAL_LENGTH = 8192


def is_exempt_path(path: str) -> bool:
    """Paths that carry no caller credential (or their own, for webhooks): not identified, not limited."""
    return path in {"/healthz", "/readyz", "/metrics", "/openapi.json", "/asyncapi.json", "/docs"} or path.startswith(
        ("/docs/", "/webhooks/")
    )


@dataclass(frozen=True)
class AuthError:
    """Why the credential sent was refused. `reason`: missing, invalid or expired; `code`: the 401's code."""

    reason: str
    message: str
    code: str = "unauthorized"


@dataclass(frozen=True)
class JwtVerifier:
    """The keys and rules user tokens are checked with; built once per app from the settings.

    Tokens it accepted are remembered until they expire: a wallet app sends the same token with
    every call of a session, and checking its signature and claims again each time was about 3 % of
    a top-up's CPU. Only accepted tokens are kept, by their SHA-256 (the cache holds no credential),
    each until its `exp` plus the leeway, when a full check would refuse it too; a token that
    differs by one character is checked in full. The keys and rules are fixed for the process, so
    nothing else can change the answer.
    """

    keys: dict[str, Any]  # algorithm -> key; only the algorithms configured are accepted
    audience: str
    issuer: str | None
    accepted: TLRUCache[bytes, tuple[Principal, float]] = field(
        default_factory=lambda: TLRUCache(maxsize=ACCEPTED_TOKENS, ttu=_until, timer=lambda: time.time()),
        compare=False,
        repr=False,
    )
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier:
        keys: dict[str, Any] = {}
        if settings.JWT_SECRET:
            # PyJWT only warns about a short HMAC key, on every request; refuse it once, at startup.
            if len(settings.JWT_SECRET.encode()) < 32:
                raise ConfigError("JWT_SECRET must be at least 32 bytes for HS256")
            keys["HS256"] = settings.JWT_SECRET
        if settings.JWT_PUBLIC_KEY:
            pem = settings.JWT_PUBLIC_KEY.replace("\\n", "\n").encode()  # tolerate a one-line env value
            try:
                public_key = load_pem_public_key(pem)
            except ValueError:
                raise ConfigError("JWT_PUBLIC_KEY is not a PEM public key") from None
            if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < 2048:
                raise ConfigError("JWT_PUBLIC_KEY must be an RSA public key of at least 2048 bits (RS256)")
            keys["RS256"] = public_key
        return cls(keys=keys, audience=settings.JWT_AUDIENCE, issuer=settings.JWT_ISSUER or None)

    def verify(self, token: str) -> Principal:
        """The user the token names; raises jwt.InvalidTokenError for any token we do not accept."""
        digest = hashlib.sha256(token.encode()).digest()
        with self.lock:
            known = self.accepted.get(digest)
        if known is not None:
            return known[0]
        principal, exp = self._check(token)
        with self.lock:
            self.accepted[digest] = (principal, exp + JWT_LEEWAY_SECONDS)
        return principal

    def _check(self, token: str) -> tuple[Principal, float]:
        """The token checked in full: its user, and its `exp`."""
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        # The algorithm is chosen by our configuration, never by the token: `none`, and HS256 signed
        # with the RS256 public key as secret (algorithm confusion), are refused here.
        if not isinstance(alg, str) or alg not in self.keys:
            raise jwt.InvalidAlgorithmError("algorithm not accepted")
        required = ["exp", "sub", "aud"] + (["iss"] if self.issuer else [])
        claims = jwt.decode(
            token,
            self.keys[alg],
            algorithms=[alg],
            audience=self.audience,
            issuer=self.issuer,
            leeway=JWT_LEEWAY_SECONDS,
            options={"require": required},
        )
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > _MAX_SUB_LENGTH:
            raise InvalidSubjectError("sub must be a user id of 1 to 64 characters")
        return Principal(kind="user", id=sub), float(claims["exp"])


def _until(_digest: bytes, value: tuple[Principal, float], _now: float) -> float:
    return value[1]


def _jwt_error_message(exc: jwt.InvalidTokenError) -> AuthError:
    # Our own words, not PyJWT's: they never contain any part of the token.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthError("expired", "the bearer token has expired")
    if isinstance(exc, jwt.InvalidAudienceError):
        return AuthError("invalid", "the bearer token's audience is not accepted")
    if isinstance(exc, jwt.InvalidIssuerError):
        return AuthError("invalid", "the bearer token's issuer is not accepted")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return AuthError("invalid", f"the bearer token lacks the required claim {exc.claim!r}")
    if isinstance(exc, InvalidSubjectError):
        return AuthError("invalid", "the bearer token's sub is not a valid user id")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return AuthError("invalid", "the bearer token is not valid yet")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return AuthError("invalid", "the bearer token's algorithm is not accepted")
    if isinstance(exc, jwt.InvalidSignatureError):
        return AuthError("invalid", "the bearer token's signature is invalid")
    if isinstance(exc, jwt.DecodeError):
        return AuthError("invalid", "the bearer token is malformed")
    return AuthError("invalid", "the bearer token is invalid")


def _verifier() -> JwtVerifier:
    v: JwtVerifier = current_app.extensions["payment_service_jwt"]
    return v


def _from_bearer(authorization: str) -> Principal | AuthError:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return AuthError("invalid", "the Authorization header must be 'Bearer <token>'")
    if len(token) > _MAX_CREDENTIAL_LENGTH:
        return AuthError("invalid", "the bearer token is malformed")
    try:
        return _verifier().verify(token)
    except jwt.InvalidTokenError as exc:
        return _jwt_error_message(exc)


def _from_api_key(key: str) -> Principal | AuthError:
    if len(key) > _MAX_CREDENTIAL_LENGTH:
        return AuthError("invalid", "the API key is not valid")
    try:
        with container().api_clients() as clients:
            principal = clients.authenticate(key)
    except DBAPIError:
        logger.warning("api key lookup failed: database unavailable", exc_info=True)
        raise DependencyUnavailable("credentials cannot be checked right now; retry later") from None
    # One message for unknown, revoked, expired keys and disabled clients: no oracle for which.
    return principal if principal is not None else AuthError("invalid", "the API key is not valid")


def identify() -> None:
    """before_request: set `g.principal` (a Principal or None) and, for a refused credential, `g.auth_error`."""
    g.principal = None
    g.auth_error = None
    g.unverified_principal = None
    if request.routing_exception is not None or is_exempt_path(request.path):
        return
    authorization = request.headers.get("Authorization")
    api_key = request.headers.get("X-API-Key")
    if authorization is None and api_key is None:
        g.auth_error = AuthError("missing", "send 'Authorization: Bearer <token>' or 'X-API-Key: <key>'")
        return
    if authorization is not None and api_key is not None:
        result: Principal | AuthError = AuthError("invalid", "send either Authorization or X-API-Key, not both")
    elif authorization is not None:
        result = _from_bearer(authorization)
    else:
        result = _from_api_key(api_key or "")
        if isinstance(result, Principal) and result.require_signing and request.method in api_keys.SIGNED_METHODS:
            g.unverified_principal = result  # the audit trail names who tried, even when refused
            result = _check_signature(result)
    if isinstance(result, AuthError):
        g.auth_error = result
        logger.info("credential refused", extra={"auth_reason": result.reason, "auth_detail": result.message})
    else:
        g.principal = result


def _check_signature(principal: Principal) -> Principal | AuthError:
    """The principal if X-Signature signs this request, fresh and unused; else why not."""
    # The path and query exactly as sent (RAW_URI: gunicorn and werkzeug), not as decoded.
    path = request.environ.get("RAW_URI") or request.full_path.rstrip("?")
    body = request.get_data(cache=True)
    c = container()
    try:
        # One transaction, committed before the view runs: the signature is spent whatever happens next.
        with c.api_clients() as repo:
            secrets_ = repo.signing_secrets(principal.id, c.settings.CLIENT_SIGNING_MASTER_KEY)
            check = api_keys.check_signature(request.headers.get("X-Signature"), secrets_, request.method, path, body,
                                             time.time())
            if check.code is None and check.matched is not None:
                expires_at = datetime.fromtimestamp(check.timestamp + api_keys.SIGNATURE_TOLERANCE_SECONDS, UTC)
                if not repo.remember_signature(principal.id, api_keys.replay_token(principal.id, check.matched),
                                               expires_at):
                    check = api_keys.SignatureCheck(
                        "signature_replayed", "this X-Signature was used before: sign each request anew")
    except DBAPIError:
        logger.warning("signature check failed: database unavailable", exc_info=True)
        raise DependencyUnavailable("credentials cannot be checked right now; retry later") from None
    if check.code is not None:
        return AuthError("invalid", check.message, check.code)
    return principal


# --- helpers for views ---


def current_principal() -> Principal:
    """The authenticated caller; 401 `unauthorized` (with WWW-Authenticate) when there is none."""
    principal: Principal | None = g.get("principal")
    if principal is None:
        err: AuthError | None = g.get("auth_error")
        exc = Unauthorized(err.message if err else "authentication required")
        if err is not None:
            exc.code = err.code  # signature_required, signature_invalid, ... for a refused X-Signature
        raise exc
    return principal


def require_user() -> Principal:
    """An end user (JWT). 401 without a credential; 403 `forbidden` for a service client."""
    principal = current_principal()
    if not principal.is_user:
        raise Forbidden("this endpoint is for end users, not service clients")
    return principal


def require_scope(scope: str) -> Principal:
    """A service client holding `scope`. 401 without a credential; 403 `insufficient_scope` otherwise."""
    _check_known(scope)
    principal = current_principal()
    if principal.is_user:
        raise InsufficientScope(f"this endpoint is for service clients with scope {scope}")
    if not principal.has_scope(scope):
        raise InsufficientScope(f"this API key's client lacks scope {scope}")
    return principal


def require_user_or_scope(scope: str) -> Principal:
    """An end user (who then sees only their own resources), or a service client holding `scope`."""
    _check_known(scope)
    principal = current_principal()
    if principal.is_user or principal.has_scope(scope):
        return principal
    raise InsufficientScope(f"this API key's client lacks scope {scope}")


def _check_known(scope: str) -> None:
    if scope not in SCOPES:  # a typo in a view, not a caller's mistake
        raise ValueError(f"unknown scope {scope!r}")


def _unauthorized(exc: Unauthorized) -> Response:
    # RFC 6750 section 3: a 401 names the scheme; error="invalid_token" when a token was sent.
    err: AuthError | None = g.get("auth_error")
    challenge = f'Bearer realm="{REALM}"'
    if err is not None and err.reason != "missing":
        challenge += ', error="invalid_token"'
    return errors.domain_error_response(exc, headers={"WWW-Authenticate": challenge})


def init_app(app: Flask, settings: Settings) -> None:
    """Register `identify()`; call before the rate limiter is set up, whose key is the principal."""
    app.extensions["payment_service_jwt"] = JwtVerifier.from_settings(settings)
    app.before_request(identify)
    app.register_error_handler(Unauthorized, _unauthorized)
