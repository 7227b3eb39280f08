"""The admin API under /_sandbox: reset, faults, webhook knobs and deliveries, raw objects (docs/sandbox.md)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from .core import current_sandbox
from .faults import FaultRule

admin = Blueprint("sandbox_admin", __name__, url_prefix="/_sandbox")


@admin.post("/reset")
def reset() -> Response:
    current_sandbox().reset()
    return jsonify({"reset": True})


@admin.get("/faults")
def list_faults() -> Response:
    return jsonify([vars(r) for r in current_sandbox().faults.rules])


@admin.post("/faults")
def add_fault() -> tuple[Response, int]:
    body = request.get_json(force=True)
    try:
        rule = FaultRule(**body)
    except TypeError as exc:
        return jsonify({"error": str(exc)}), 400
    if rule.mode not in {"error", "timeout", "latency", "lost_response"}:
        return jsonify({"error": f"unknown mode {rule.mode}"}), 400
    return jsonify(vars(current_sandbox().faults.add(rule))), 201


@admin.delete("/faults")
def clear_faults() -> Response:
    current_sandbox().faults.clear()
    return jsonify({"cleared": True})


@admin.get("/webhooks")
def webhook_settings() -> Response:
    sb = current_sandbox()
    return jsonify(
        {
            "knobs": vars(sb.webhooks.knobs),
            "stripe_webhook_url": sb.config.stripe_webhook_url,
            "razorpay_webhook_url": sb.config.razorpay_webhook_url,
        }
    )


@admin.post("/webhooks")
def configure_webhooks() -> Response:
    """Set webhook URLs and knobs: {"stripe_webhook_url", "razorpay_webhook_url", "duplicate", ...}."""
    sb = current_sandbox()
    body = request.get_json(force=True)
    for name in ("stripe_webhook_url", "razorpay_webhook_url"):
        if name in body:
            setattr(sb.config, name, body.pop(name))
    with sb.webhooks.lock:
        for key, value in body.items():
            if hasattr(sb.webhooks.knobs, key):
                setattr(sb.webhooks.knobs, key, value)
    if not sb.webhooks.knobs.reorder:
        sb.webhooks.flush_held()
    return webhook_settings()


@admin.get("/webhooks/deliveries")
def deliveries() -> Response:
    sb = current_sandbox()
    gateway = request.args.get("gateway")
    with sb.webhooks.lock:
        rows = [
            {
                "gateway": d.gateway,
                "event_id": d.event_id,
                "type": d.event_type,
                "attempts": d.attempts,
                "status": d.status,
                "delivered": d.delivered,
                "dropped": d.dropped,
                "error": d.error,
            }
            for d in sb.webhooks.log
            if gateway is None or d.gateway == gateway
        ]
    return jsonify(rows)


@admin.get("/objects/<object_id>")
def get_object(object_id: str) -> tuple[Response, int] | Response:
    obj = current_sandbox().store.get(object_id)
    return (jsonify(obj), 200) if obj is not None else (jsonify({"error": "not found"}), 404)
