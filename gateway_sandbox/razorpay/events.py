"""Razorpay webhook events: the event envelope, signed with `X-Razorpay-Signature`, handed to the dispatcher."""

from __future__ import annotations

import json
import secrets
from functools import partial
from typing import Any

from ..core import Sandbox
from ..webhooks import Payload
from ._common import _ALNUM, _now, _public, _sign

ACCOUNT_ID = "acc_SandboxRzp0001"


def _signed(envelope: dict[str, Any], secret: str, event_id: str) -> tuple[bytes, dict[str, str]]:
    """The envelope's webhook body and headers, signed over the exact bytes sent."""
    raw = json.dumps(envelope, separators=(",", ":")).encode()
    return raw, {
        "Content-Type": "application/json",
        "User-Agent": "Razorpay-Webhook/v1",
        "X-Razorpay-Signature": _sign(secret, raw.decode()),
        "X-Razorpay-Event-Id": event_id,
    }


def emit_event(sb: Sandbox, event: str, entities: dict[str, dict[str, Any]]) -> None:
    """Razorpay's event envelope, handed to the shared dispatcher; serialised and signed only if it is
    sent (webhooks.Payload), from this envelope, which nothing changes after (its entities are copies)."""
    envelope = {
        "entity": "event",
        "account_id": ACCOUNT_ID,
        "event": event,
        "contains": list(entities),
        "payload": {name: {"entity": _public(obj)} for name, obj in entities.items()},
        "created_at": _now(),
    }
    event_id = "".join(secrets.choice(_ALNUM) for _ in range(14))
    payload = Payload(partial(_signed, envelope, sb.config.razorpay_webhook_secret, event_id))
    sb.webhooks.emit("razorpay", event_id, event, payload)
