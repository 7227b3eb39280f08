"""Webhooks in: verify the signature over the raw body, mask card numbers, store, answer 200 at once."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from flask import Blueprint, Response, jsonify, request

from ..domain.cards import mask_card_numbers, mask_json_text
from ..gateways.base import InvalidWebhook, WebhookEvent
from ..services import webhooks as webhook_service
from . import openapi, schemas
from .context import container
from .errors import problem
from .schemas import WebhookReceived

logger = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


def _masked(body: str, event: WebhookEvent) -> tuple[str, WebhookEvent]:
    """The body and event as they may be stored: card numbers in free text masked, ids kept.

    Done after the signature check (it is over the body as sent) and before anything is stored.
    Ids inside the body are kept: the applier reads them back (a payout's UTR, a payment's id). The
    stored columns are masked as plain text: the Razorpay event id comes in a header that the
    signature does not cover, and no genuine gateway id, event type or reference of ours is a card
    number, so masking them costs nothing.
    """
    masked_body = mask_json_text(body)
    payload = json.loads(masked_body) if masked_body is not body else event.payload
    return masked_body, replace(
        event,
        event_id=mask_card_numbers(event.event_id),
        type=mask_card_numbers(event.type),
        object_id=mask_card_numbers(event.object_id) if event.object_id else event.object_id,
        reference=mask_card_numbers(event.reference) if event.reference else event.reference,
        payload=payload,
    )


def _receive(gateway_name: str) -> Response | tuple[Response, int]:
    raw = request.get_data(cache=False)
    gateway = container().gateways()[gateway_name]
    try:
        event = gateway.verify_webhook(raw, dict(request.headers.items()))
    except InvalidWebhook as exc:
        # Nothing stored: a forged or stale delivery must leave no trace but a log line.
        logger.warning("webhook rejected", extra={"gateway": gateway_name, "reason": str(exc)})
        return problem(400, "invalid_webhook", "Bad Request", str(exc))
    body, event = _masked(raw.decode("utf-8"), event)
    stored = webhook_service.store_webhook(event, container().uow_factory, raw=body)
    # 200 for a duplicate too: anything else makes the gateway retry forever (dj-stripe #1239).
    return jsonify(schemas.body(WebhookReceived, {"received": True, "duplicate": not stored})), 200


@bp.post("/webhooks/stripe")
def stripe_webhook() -> Response | tuple[Response, int]:
    return _receive("stripe")


@bp.post("/webhooks/razorpay")
def razorpay_webhook() -> Response | tuple[Response, int]:
    return _receive("razorpay")


# The signature is a header the gateway computes over the raw body with the endpoint's secret: a
# request the document allows still needs the real HMAC, so a fuzzer's request is refused (400).
_STRIPE_HEADERS = [
    {"name": "Stripe-Signature", "in": "header", "required": True,
     "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 over \"<t>.<raw body>\"> (300 s tolerance)",
     "schema": {"type": "string", "pattern": "^t=[0-9]+(,v[0-9]+=[0-9a-f]+)+$"}},
]
_RAZORPAY_HEADERS = [
    {"name": "X-Razorpay-Signature", "in": "header", "required": True,
     "description": "hex HMAC-SHA256 of the raw body with the webhook secret",
     "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    {"name": "X-Razorpay-Event-Id", "in": "header", "required": True,
     "description": "the event's id; a redelivery carries the same one",
     "schema": {"type": "string", "minLength": 1, "maxLength": 64}},
]

for _path, _header, _parameters in (
    ("/webhooks/stripe", "Stripe-Signature", _STRIPE_HEADERS),
    ("/webhooks/razorpay", "X-Razorpay-Signature", _RAZORPAY_HEADERS),
):
    openapi.document(_path, "post", {
        "summary": f"Gateway events, signed with {_header}; stored, then applied asynchronously",
        "tags": ["webhooks"],
        "security": [],
        "parameters": _parameters,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": openapi.json_body(WebhookReceived, "stored (or a duplicate of a stored event)"),
            "400": openapi.problem_ref("bad or missing signature, stale timestamp, or unparsable body; nothing stored"),
        },
    })
