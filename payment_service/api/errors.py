"""Every error leaves as application/problem+json (RFC 9457), built by `problem()` alone."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from ..domain import errors as domain_errors
from ..domain.cards import mask_card_numbers

logger = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://payment-service.dev/problems/"

_DOMAIN_STATUS: list[tuple[type[domain_errors.DomainError], int]] = [
    (domain_errors.ValidationFailed, 422),
    (domain_errors.CardDataNotAccepted, 422),
    (domain_errors.RefundExceedsCaptured, 422),
    (domain_errors.PaymentNotRefundable, 422),
    (domain_errors.Unauthorized, 401),
    (domain_errors.Forbidden, 403),  # and InsufficientScope
    (domain_errors.NotFound, 404),
    (domain_errors.Conflict, 409),
    (domain_errors.GatewayUnavailable, 503),
    (domain_errors.DependencyUnavailable, 503),
]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    # A detail may quote what the caller sent (an id from the path, say); a card number is never echoed.
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": mask_card_numbers(detail or title),
        "code": code,
        "errors": [{k: mask_card_numbers(v) if isinstance(v, str) else v for k, v in e.items()} for e in errors or []],
    }
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def domain_error_response(exc: domain_errors.DomainError, headers: dict[str, str] | None = None) -> Response:
    status = next((s for cls, s in _DOMAIN_STATUS if isinstance(exc, cls)), 400)
    if isinstance(exc, domain_errors.GatewayUnavailable):
        headers = {"Retry-After": str(exc.retry_after), **(headers or {})}
    return problem(status, exc.code, exc.title, exc.detail, exc.errors, headers=headers)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() not in {"content-type", "content-length"}}
    detail = exc.description if status != 500 else None
    return problem(status, _HTTP_CODES.get(status, "http_error"), exc.name, detail, headers=headers)


# MySQL / MariaDB errors that mean "not now" rather than "wrong": no connection (2002, 2003), a
# connection lost (2006, 2013, 2014, 2045, 2055, 4031), too many connections (1040), server shutting
# down (1053), a lock wait timed out (1205) or a deadlock (1213): the same request later succeeds.
_UNAVAILABLE_CODES = frozenset({1040, 1053, 1205, 1213, 2002, 2003, 2006, 2013, 2014, 2045, 2055, 4031})


def database_unavailable(exc: BaseException) -> bool:
    """True if a database error means the database cannot serve now (503, retry), not a bug (500)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in _UNAVAILABLE_CODES
    # SQLite (`dev`): a locked database is busy, not broken.
    return "database is locked" in str(exc.orig)


def _database_error(exc: Exception) -> Response:
    if not database_unavailable(exc):
        # Anything else (a bad value reaching SQL, a constraint we did not expect) is a bug: 500.
        return _unhandled(exc)
    # A lost or refused connection: the pool has invalidated it, a retry gets a new one.
    logger.error("database unavailable", extra={"error": type(exc).__name__})
    return problem(503, "database_unavailable", "Service Unavailable", "the database is unavailable; retry later",
                   headers={"Retry-After": "1"})


def _unhandled(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    # Logged with its traceback (masked by the log filter); the caller sees no stack trace.
    logger.exception("unhandled error")
    return problem(500, "internal_error", "Internal Server Error", "An unexpected error occurred.")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(domain_errors.DomainError, domain_error_response)
    app.register_error_handler(DBAPIError, _database_error)
    app.register_error_handler(PoolTimeout, _database_error)
    app.register_error_handler(Exception, _unhandled)
