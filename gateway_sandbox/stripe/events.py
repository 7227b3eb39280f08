"""Stripe events: building each state change's event, signing it (`Stripe-Signature`), sending it, reading it.

The event is built and stored at the state change; its body and signature are made only if it is
sent (webhooks.Payload), from that stored event, which nothing changes after, and the timestamp of
the emission.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from functools import partial
from typing import Any

from flask import Response, g, request

from ..webhooks import Payload
from ._blueprint import bp
from ._common import API_VERSION, _get, _json, _new_id, _now, _public, _sb


def sign_payload(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's signature header: `t=<unix ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">`."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def _signed(event: dict[str, Any], secret: str, timestamp: int) -> tuple[bytes, dict[str, str]]:
    """An event's webhook body and headers, signed as at its emission."""
    body = json.dumps(event).encode()
    return body, {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": sign_payload(body, secret, timestamp),
    }


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
    payload = Payload(partial(_signed, event, sb.config.stripe_webhook_secret, int(time.time())))
    sb.webhooks.emit("stripe", event["id"], event_type, payload)
    return event


@bp.get("/v1/events/<event_id>")
def retrieve_event(event_id: str) -> Response:
    return _json(_get("event", event_id))
