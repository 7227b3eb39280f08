"""Rate limits per caller (Flask-Limiter): one budget per user and one per service client.

The budget is shared by every endpoint (an application limit keyed by `Principal.caller_key`),
RATE_LIMIT_USER for users and RATE_LIMIT_CLIENT for clients, counted in RATE_LIMIT_STORAGE_URI
(`memory://` is per process, served by `SweptMemoryStorage` below: with several gunicorn workers
use a shared store such as `redis://`). Requests without a principal (they will get 401) and the
operational and webhook paths are not counted. Over the limit: 429 problem `rate_limited` with
`Retry-After` in seconds.

`auth.identify()` must run before the limiter's before_request hook: register it first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from limits.storage import MemoryStorage

from config import Settings

from ..domain.principal import Principal
from . import errors
from .auth import is_exempt_path

EXTENSION = "payment_service_limiter"


class SweptMemoryStorage(MemoryStorage):
    """limits' `memory://` counters, with ended windows dropped as hits go by instead of by a timer.

    `MemoryStorage.incr` starts a 10 ms timer (a thread; a greenlet under gevent) after any hit that
    finds none running, and the timer walks every caller's counter. With a thousand callers in a
    minute that walk ran up to a hundred times a second in each worker: about 0.4 ms of CPU per hit
    at 75 hits a second, 2 ms with 10,000 callers (bench/ratelimit_storage.py, docs/benchmarks.md).

    Here the counters' ends are kept in the order their windows started, and each hit drops the
    ended windows at the front and stops at the first one still open: constant work per hit, however
    many callers. A counter is also checked when it is read (`get` drops a window that has ended),
    so the counts, and the limits, are the same. With limits of different lengths, a short window
    queued behind a longer one is dropped when that one ends: memory stays bounded by the longest
    window.
    """

    STORAGE_SCHEME = ["payment-service-memory"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.expirations: OrderedDict[str, float] = OrderedDict()  # in the order windows started

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        self.sweep(now)
        self.get(key)  # a window that has ended starts again from 0
        with self.locks[key]:
            self.storage[key] += amount
            if self.storage[key] == amount:
                self.expirations[key] = now + expiry  # a new window: to the back of the line
        return self.storage.get(key, 0)

    def sweep(self, now: float) -> None:
        """Forget the counters at the front whose window ended before `now`."""
        expirations = self.expirations
        while expirations:
            key = next(iter(expirations))
            if expirations[key] > now:
                return
            self.clear(key)  # limits' own removal of a counter, its end and its lock


def storage_uri(configured: str) -> str:
    """`memory://` (with its options) as `SweptMemoryStorage`'s scheme; any other store as given."""
    head, sep, rest = configured.partition("://")
    return f"{SweptMemoryStorage.STORAGE_SCHEME[0]}://{rest}" if sep and head == "memory" else configured


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
        storage_uri=storage_uri(settings.RATE_LIMIT_STORAGE_URI),
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
