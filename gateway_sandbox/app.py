"""The sandbox app: state, fault hooks, the admin API and both gateways' wire APIs in one Flask app."""

from __future__ import annotations

import json
import time

from flask import Flask, Response, jsonify, request

from .admin import admin
from .config import SandboxConfig
from .core import EXTENSION_KEY, Sandbox, current_sandbox
from .razorpay import bp as razorpay_bp
from .stripe import bp as stripe_bp


def _apply_faults() -> Response | None:
    if request.path.startswith("/_sandbox") or "/3ds/" in request.path:
        return None
    rule = current_sandbox().faults.take(request.method, request.path)
    if rule is None:
        return None
    if rule.latency_ms and rule.mode != "timeout":
        time.sleep(rule.latency_ms / 1000.0)
    if rule.mode == "error":
        return Response(
            json.dumps({"error": {"type": "api_error", "message": "sandbox injected error"}}),
            status=rule.status,
            mimetype="application/json",
        )
    if rule.mode == "timeout":
        # Hold the request past any sane client timeout (latency_ms, default 15 s), then give up
        # with a 504 and no work done: the client sees its own timeout, as with a hung gateway.
        time.sleep((rule.latency_ms or 15000) / 1000.0)
        return Response(
            json.dumps({"error": {"type": "api_error", "message": "sandbox injected timeout"}}),
            status=504,
            mimetype="application/json",
        )
    if rule.mode == "lost_response":
        request.environ["sandbox.lost_response"] = True
    return None


def _lose_response(response: Response) -> Response:
    if request.environ.get("sandbox.lost_response"):
        return Response(
            json.dumps({"error": {"type": "api_error", "message": "sandbox: response lost"}}),
            status=500,
            mimetype="application/json",
        )
    return response


def create_sandbox_app(config: SandboxConfig | None = None) -> Flask:
    config = config or SandboxConfig()
    app = Flask("gateway_sandbox")
    app.extensions[EXTENSION_KEY] = Sandbox(config)
    app.before_request(_apply_faults)
    app.after_request(_lose_response)
    app.register_blueprint(admin)

    app.register_blueprint(stripe_bp, url_prefix="/stripe")
    app.register_blueprint(razorpay_bp, url_prefix="/razorpay")

    @app.get("/")
    def index() -> Response:
        return jsonify({"sandbox": "payment-service gateway sandbox", "stripe": "/stripe", "razorpay": "/razorpay"})

    return app
