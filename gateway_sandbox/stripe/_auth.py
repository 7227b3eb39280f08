"""What every Stripe API call goes through: the API key, request ids, and `Idempotency-Key` replays."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

from flask import Response, g, request

from ..core import IdempotencyCache, StoredResponse
from ._blueprint import bp
from ._common import API_VERSION, StripeApiError, _error_response, _new_id, _params, _sb


@bp.before_request
def _authenticate() -> Response | None:
    g.request_id = _new_id("req")
    if not request.path.startswith("/stripe/v1/"):
        return None  # the 3-D Secure pages are for the customer's browser, not API clients
    auth = request.headers.get("Authorization", "")
    key = ""
    if auth.startswith("Bearer "):
        key = auth[len("Bearer ") :].strip()
    elif request.authorization is not None and request.authorization.username:
        key = request.authorization.username
    if not key:
        return _error_response(
            StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        )
    expected = _sb().config.stripe_api_key
    if expected is not None and not hmac.compare_digest(key, expected):
        masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "****"
        return _error_response(
            StripeApiError(401, f"Invalid API Key provided: {masked}", code="api_key_invalid")
        )
    g.api_key = key
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Request-Id", g.get("request_id", ""))
    response.headers.setdefault("Stripe-Version", request.headers.get("Stripe-Version", API_VERSION))
    return response


# Responses to requests that never started (bad parameters, unknown objects, conflicts) are not
# saved under the key, like Stripe; everything else is (successes, card declines, server errors).
_NOT_SAVED = {400, 401, 404, 409, 429}


def idempotent(view: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(view)
    def wrapper(**kwargs: Any) -> Response:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return _call(view, kwargs)
        if len(key) > 255:
            raise StripeApiError(400, "Idempotency-Key must be at most 255 characters long.", param="Idempotency-Key")
        sb = _sb()
        scope = "stripe:" + g.api_key
        fingerprint = IdempotencyCache.fingerprint(request.method, request.path, _params())
        found = sb.idempotency.begin(scope, key)
        if found is False:
            raise StripeApiError(
                409,
                "There is currently another in-progress request using this Idempotent Key (that probably means "
                "you submitted twice, and the other request is still going through): "
                f"{key}. Please try again later.",
                code="idempotency_key_in_use",
            )
        if isinstance(found, StoredResponse):
            if found.fingerprint != fingerprint:
                raise StripeApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they were first used "
                    f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                    type="idempotency_error",
                )
            replay = Response(found.body, status=found.status, mimetype="application/json")
            for name, value in found.headers.items():
                replay.headers[name] = value
            replay.headers["Idempotent-Replayed"] = "true"
            return replay
        stored: StoredResponse | None = None
        try:
            response = _call(view, kwargs)
            if response.status_code not in _NOT_SAVED:
                stored = StoredResponse(
                    fingerprint,
                    response.status_code,
                    response.get_data(),
                    {"Original-Request": g.get("request_id", ""), "Idempotency-Key": key},
                )
        finally:
            sb.idempotency.finish(scope, key, stored)
        response.headers["Idempotency-Key"] = key
        return response

    return wrapper


def _call(view: Callable[..., Response], kwargs: dict[str, Any]) -> Response:
    try:
        return view(**kwargs)
    except StripeApiError as exc:
        return _error_response(exc)
