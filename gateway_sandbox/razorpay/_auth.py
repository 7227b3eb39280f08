"""What Razorpay API calls go through: the key id and secret, and the refund and payout idempotency keys."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from flask import Response, request

from ..core import Sandbox, StoredResponse, current_sandbox
from ._blueprint import bp
from ._common import RazorpayError, _json


@bp.before_request
def _authenticate() -> Response | None:
    path = request.path
    if "/3ds/" in path or "/_admin/" in path:
        return None  # the customer's browser and the sandbox's operator carry no API keys
    sb = current_sandbox()
    auth = request.authorization
    key_id = auth.username if auth else None
    secret = auth.password if auth else None
    ok = bool(key_id) and bool(secret)
    if ok and sb.config.razorpay_key_id is not None:
        ok = hmac.compare_digest(str(key_id), sb.config.razorpay_key_id)
    if ok and sb.config.razorpay_key_secret is not None:
        ok = hmac.compare_digest(str(secret), sb.config.razorpay_key_secret)
    if not ok:
        return _json(RazorpayError("The api key provided is invalid", status=401).body, 401)
    return None


def _idempotent(
    sb: Sandbox,
    kind: str,
    key: str,
    path: str,
    body: dict[str, Any],
    create: Callable[[], Response],
    *,
    header: str,
    other_body: str,
) -> Response:
    """Razorpay's idempotency headers: the same key and body answer the first response again; the same
    key with another body is 400; the same key while the first request is still running is 409.

    Keys are scoped per API key id and kind. Only a created object is remembered: a request that was
    refused (validation, over-refund) may be sent again with the same key."""
    auth = request.authorization
    scope = f"razorpay:{kind}:{auth.username if auth else ''}"
    fingerprint = sb.idempotency.fingerprint("POST", path, body)
    stored = sb.idempotency.begin(scope, key)
    if stored is False:
        raise RazorpayError("A request with the same idempotency key is in progress", status=409, field=header)
    if isinstance(stored, StoredResponse):
        if stored.fingerprint != fingerprint:
            raise RazorpayError(other_body, field=header)
        return Response(stored.body, status=stored.status, mimetype="application/json")
    try:
        response = create()
    except BaseException:
        sb.idempotency.finish(scope, key, None)
        raise
    sb.idempotency.finish(scope, key, StoredResponse(fingerprint, response.status_code, response.get_data(), {}))
    return response
