"""The HTTP API: Flask blueprints that parse, call a service, and map errors to problem+json."""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from flask import Flask, Response, g, request

from config import Settings, load_settings

from .. import cpu_slots
from ..bootstrap import Container, bootstrap
from ..domain.cards import contains_card_number
from ..observability import configure_logging, request_id_var
from . import auth, errors, health, openapi, parsing, payment_methods, payments, ratelimit, routing, webhooks

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Card numbers are written with spaces or dashes between groups; in an id, dots and colons serve too.
_ID_SEPARATORS_AS_DASHES = str.maketrans("._:", "---")


def safe_request_id(incoming: str | None) -> str | None:
    """The caller's request id, if it is safe to log and echo: short, plain, and no card number."""
    if not incoming or not _REQUEST_ID.match(incoming):
        return None
    if contains_card_number(incoming.translate(_ID_SEPARATORS_AS_DASHES)):
        return None
    return incoming


def _begin_request() -> None:
    # A refused id is replaced, not masked: it is neither logged nor echoed, and the caller can tell.
    g.request_id = safe_request_id(request.headers.get("X-Request-Id")) or "req_" + secrets.token_hex(12)
    g.request_id_token = request_id_var.set(g.request_id)
    g.t0 = time.perf_counter()
    health.start_timer()


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    health.record_request(response)
    logger.info(
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.get("t0", time.perf_counter())) * 1000, 2),
        },
    )
    return response


def _guard_json_body() -> Response | None:
    """Refuse, before any view runs, a JSON body that does not parse or that holds a card number.

    Nothing is stored or logged for such a request: the card number never gets past this point.
    Webhook bodies are checked by their signature instead, and views that accept bank account
    numbers exempt those fields (see api/parsing.py).
    """
    if request.routing_exception is not None or request.method not in {"POST", "PUT", "PATCH"}:
        return None
    if request.blueprint == "webhooks" or not request.content_length and not request.data:
        return None
    return parsing.guard_current_request()


def _teardown(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def create_app(settings: Settings | None = None, container: Container | None = None, **overrides: Any) -> Flask:
    """The application factory. Tests pass settings or overrides; production reads the environment."""
    settings = settings or load_settings(**overrides)
    app = Flask(__name__)
    app.config["TESTING"] = settings.TESTING
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if not settings.TESTING:
        configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    app.extensions["payment_service"] = container or bootstrap(settings)

    # First in, last out: everything a request runs on this worker's CPU runs in its slot.
    slots = cpu_slots.install(settings.API_CPU_SLOTS)
    if slots is not None:
        app.before_request(slots.acquire)
        app.teardown_request(lambda _exc: slots.release())
    app.before_request(_begin_request)
    # --- auth and rate limits ---
    # Order matters: identify() sets g.principal, which the limiter's before_request keys on.
    auth.init_app(app, settings)
    ratelimit.init_app(app, settings)
    # --- end auth and rate limits ---
    # --- audit trail: after identify(), so each request's rows name its caller ---
    from . import audit as audit_api

    audit_api.init_app(app)
    # --- end audit trail ---
    app.before_request(_guard_json_body)
    app.after_request(_finish_request)
    app.teardown_request(_teardown)
    errors.register_error_handlers(app)
    routing.install(app)  # before the blueprints: their rules use its converters
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    from . import asyncapi  # the events' AsyncAPI document, public like /openapi.json

    app.register_blueprint(asyncapi.bp)
    app.register_blueprint(payments.bp)
    app.register_blueprint(payment_methods.bp)
    app.register_blueprint(webhooks.bp)
    # --- refunds and withdrawals ---
    from . import refunds, withdrawals

    app.register_blueprint(refunds.bp)
    app.register_blueprint(withdrawals.bp)
    # --- end refunds and withdrawals ---
    return app
