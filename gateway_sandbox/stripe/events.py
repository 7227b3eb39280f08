"""Stripe events: building each state change's event, signing it (`Stripe-Signature`), sending it, reading it."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from flask import Response, g, request

from ._blueprint import bp
from ._common import API_VERSION, _get, _json, _new_id, _now, _public, _sb


def sign_payload(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's signature header: `t=<unix ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">`."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def _emit(event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    sb = _sb()
    data: dict[str, Any] = {"object": _public(obj)}
    if previous:
        data["previous_attributes"] = previous
    event: dict[str, Any] = {
        "id": _new_id("evt"),
        "object": "event",
        "api_version": request.headers.get("Stripe-Version", API_VERSION),
        "created": _now(),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": g.get("request_id"), "idempotency_key": request.headers.get("Idempotency-Key")},
        "type": event_type,
    }
    sb.store.put(event)
    body = json.dumps(event).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": sign_payload(body, sb.config.stripe_webhook_secret),
    }
    sb.webhooks.emit("stripe", event["id"], event_type, body, headers)
    return event


@bp.get("/v1/events/<event_id>")
def retrieve_event(event_id: str) -> Response:
    return _json(_get("event", event_id))
