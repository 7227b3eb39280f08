"""Rate limits per caller (Flask-Limiter): one budget per user and one per service client.

The budget is shared by every endpoint (an application limit keyed by `Principal.caller_key`),
RATE_LIMIT_USER for users and RATE_LIMIT_CLIENT for clients, counted in RATE_LIMIT_STORAGE_URI
(`memory://` is per process: with several gunicorn workers use a shared store such as
`redis://`). Requests without a principal (they will get 401) and the operational and webhook
paths are not counted. Over the limit: 429 problem `rate_limited` with `Retry-After` in seconds.

`auth.identify()` must run before the limiter's before_request hook: register it first.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded

from config import Settings

from ..domain.principal import Principal
from . import errors
from .auth import is_exempt_path

EXTENSION = "payment_service_limiter"


def caller_key() -> str:
    """`user:<sub>` or `client:<id>`; the remote address for anonymous requests."""
    principal: Principal | None = g.get("principal")
    if principal is not None:
        return principal.caller_key
    return "ip:" + (request.remote_addr or "unknown")


def make_limiter(settings: Settings) -> Limiter:
    def limit_for_caller() -> str:
        principal: Principal | None = g.get("principal")
        if principal is None:
            return ""  # no limit: the request gets 401 from its view
        return settings.RATE_LIMIT_USER if principal.is_user else settings.RATE_LIMIT_CLIENT

    limiter = Limiter(
        caller_key,
        # One budget per caller across all endpoints, not one per endpoint.
        application_limits=[limit_for_caller],
        storage_uri=settings.RATE_LIMIT_STORAGE_URI,
        # Fixed windows work on every storage backend and give an exact Retry-After (the window's end).
        strategy="fixed-window",
        key_prefix="payment-service",
        # Retry-After is set by our 429 handler only; the X-RateLimit-* headers would put one on every response.
        headers_enabled=False,
    )
    limiter.request_filter(lambda: is_exempt_path(request.path))
    return limiter


def limiter() -> Limiter:
    lim: Limiter = current_app.extensions[EXTENSION]
    return lim


def _rate_limited(exc: RateLimitExceeded) -> Response:
    current = limiter().current_limit
    # window[0] is when the breached window resets (epoch seconds, float); round up, never 0.
    retry_after = max(1, math.ceil(current.window[0] - time.time())) if current is not None else 60
    return errors.problem(
        429,
        "rate_limited",
        "Too many requests",
        f"rate limit of {exc.description} exceeded; retry after {retry_after} seconds",
        headers={"Retry-After": str(retry_after)},
    )


def init_app(app: Flask, settings: Settings) -> Limiter:
    """Set up the limiter on `app`, after `auth.init_app` (the limit key is the principal)."""
    lim = make_limiter(settings)
    lim.init_app(app)
    app.extensions[EXTENSION] = lim
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    return lim
