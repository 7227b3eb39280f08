"""Running a money-moving POST under its Idempotency-Key (CONTRACT.md "Idempotency").

The phases themselves are the service layer's (services/idempotency.py); this module reads the
header and the body, and turns the reply into a response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, request

from ..domain.principal import Principal
from ..services import idempotency
from . import parsing
from .context import container


def run_idempotent(
    principal: Principal,
    flow: idempotency.Flow[Any],
    render: Callable[[Any], tuple[dict[str, Any], int]],
    fingerprint_body: Any = None,  # a body with secrets replaced (see api/withdrawals.py)
) -> Response:
    c = container()
    key = idempotency.validate_key(request.headers.get("Idempotency-Key"))
    body = parsing.body() if fingerprint_body is None else fingerprint_body
    keyed = idempotency.KeyedRequest(
        caller=principal.caller_key,
        key=key,
        method=request.method,
        path=request.path,
        fingerprint=idempotency.request_fingerprint(request.method, request.path, body),
        ttl_seconds=c.settings.IDEMPOTENCY_KEY_TTL_SECONDS,
        lock_seconds=c.settings.IDEMPOTENCY_LOCK_SECONDS,
        # A charge at Razorpay is up to six HTTP calls, each allowed GATEWAY_TIMEOUT_SECONDS.
        claim_seconds=6 * c.settings.GATEWAY_TIMEOUT_SECONDS,
    )
    reply = idempotency.execute(flow, keyed, c.uow_factory, render)
    resp = Response(reply.body, status=reply.status, mimetype="application/json")
    if reply.replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp
