"""Razorpay webhook events: the event envelope, signed with `X-Razorpay-Signature`, handed to the dispatcher."""

from __future__ import annotations

import json
import secrets
from typing import Any

from ..core import Sandbox
from ._common import _ALNUM, _now, _public, _sign

ACCOUNT_ID = "acc_SandboxRzp0001"


def emit_event(sb: Sandbox, event: str, entities: dict[str, dict[str, Any]]) -> None:
    """Razorpay's event envelope, signed over the exact bytes sent, handed to the shared dispatcher."""
    envelope = {
        "entity": "event",
        "account_id": ACCOUNT_ID,
        "event": event,
        "contains": list(entities),
        "payload": {name: {"entity": _public(obj)} for name, obj in entities.items()},
        "created_at": _now(),
    }
    raw = json.dumps(envelope, separators=(",", ":")).encode()
    event_id = "".join(secrets.choice(_ALNUM) for _ in range(14))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Razorpay-Webhook/v1",
        "X-Razorpay-Signature": _sign(sb.config.razorpay_webhook_secret, raw.decode()),
        "X-Razorpay-Event-Id": event_id,
    }
    sb.webhooks.emit("razorpay", event_id, event, raw, headers)
