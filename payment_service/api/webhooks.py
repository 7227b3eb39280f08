"""Webhooks in: verify the signature over the raw body, store the event, answer 200 at once."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from ..gateways.base import InvalidWebhook
from ..services import webhooks as webhook_service
from . import openapi
from .context import container
from .errors import problem

logger = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


def _receive(gateway_name: str) -> Response | tuple[Response, int]:
    raw = request.get_data(cache=False)
    gateway = container().gateways()[gateway_name]
    try:
        event = gateway.verify_webhook(raw, request.headers)
    except InvalidWebhook as exc:
        # Nothing stored: a forged or stale delivery must leave no trace but a log line.
        logger.warning("webhook rejected", extra={"gateway": gateway_name, "reason": str(exc)})
        return problem(400, "invalid_webhook", "Bad Request", str(exc))
    stored = webhook_service.store_webhook(event, container().uow_factory, raw=raw.decode("utf-8"))
    # 200 for a duplicate too: anything else makes the gateway retry forever (dj-stripe #1239).
    return jsonify({"received": True, "duplicate": not stored}), 200


@bp.post("/webhooks/stripe")
def stripe_webhook() -> Response | tuple[Response, int]:
    return _receive("stripe")


@bp.post("/webhooks/razorpay")
def razorpay_webhook() -> Response | tuple[Response, int]:
    return _receive("razorpay")


for _path, _header, _scheme in (
    ("/webhooks/stripe", "Stripe-Signature", "stripeSignature"),
    ("/webhooks/razorpay", "X-Razorpay-Signature", "razorpaySignature"),
):
    openapi.document(_path, "post", {
        "summary": f"Gateway events, signed with {_header}; stored, then applied asynchronously",
        "tags": ["webhooks"],
        "security": [{_scheme: []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": {"description": "stored (or a duplicate of a stored event)",
                    "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "received": {"type": "boolean"}, "duplicate": {"type": "boolean"}}}}}},
            "400": openapi.problem_ref("bad or missing signature, stale timestamp, or unparsable body; nothing stored"),
        },
    })
