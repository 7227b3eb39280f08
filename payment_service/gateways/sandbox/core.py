"""Shared machinery of the gateway sandbox: state, idempotency, fault injection, webhook delivery, admin API.

Each gateway's wire API is a blueprint of its own (stripe_api.py under /stripe, razorpay_api.py
under /razorpay); both use the objects here through `current_sandbox()`. The admin API lives
under /_sandbox and is documented in docs/sandbox.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Blueprint, Flask, Response, current_app, jsonify, request

logger = logging.getLogger(__name__)

EXTENSION_KEY = "payment_sandbox"


@dataclass
class SandboxConfig:
    # Where webhooks go, and the secrets they are signed with (per gateway).
    stripe_webhook_url: str | None = None
    stripe_webhook_secret: str = "whsec_sandbox_stripe"
    razorpay_webhook_url: str | None = None
    razorpay_webhook_secret: str = "sandbox_razorpay_webhook_secret"
    # API credentials the sandbox accepts (any non-empty value if None).
    stripe_api_key: str | None = None
    razorpay_key_id: str | None = None
    razorpay_key_secret: str | None = None
    # The public address of the sandbox itself, for 3-D Secure redirect URLs.
    public_url: str = "http://127.0.0.1:12111"
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 0.5  # doubles after each failed attempt


class Store:
    """All sandbox objects by id, behind one lock. Objects are plain dicts in the gateway's own shape."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, Any]] = {}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(8)}"

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.objects[obj["id"]] = obj
        return obj

    def get(self, object_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects.get(object_id)

    def find(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.lock:
            return [o for o in self.objects.values() if predicate(o)]

    def clear(self) -> None:
        with self.lock:
            self.objects.clear()


@dataclass
class StoredResponse:
    fingerprint: str
    status: int
    body: bytes
    headers: dict[str, str]


class IdempotencyCache:
    """Remembers responses by (scope, key): the same key and parameters get the same response back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[tuple[str, str], StoredResponse] = {}
        self.in_flight: set[tuple[str, str]] = set()

    @staticmethod
    def fingerprint(method: str, path: str, params: Any) -> str:
        blob = json.dumps([method, path, params], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def begin(self, scope: str, key: str) -> StoredResponse | None | bool:
        """The stored response, None to go ahead (now marked in flight), or False if in flight."""
        with self.lock:
            if (scope, key) in self.entries:
                return self.entries[(scope, key)]
            if (scope, key) in self.in_flight:
                return False
            self.in_flight.add((scope, key))
            return None

    def finish(self, scope: str, key: str, stored: StoredResponse | None) -> None:
        with self.lock:
            self.in_flight.discard((scope, key))
            if stored is not None:
                self.entries[(scope, key)] = stored

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.in_flight.clear()


@dataclass
class FaultRule:
    """One fault: applies to requests whose method and path match, `remaining` times (None: always).

    mode: "error" (answer `status` with an error body, nothing done), "timeout" (sleep
    `latency_ms` then drop the connection, nothing done), "latency" (sleep, then handle normally),
    "lost_response" (handle the request for real, then answer 500 as if the response was lost:
    the charge happened but the caller cannot know).
    """

    mode: str
    path: str = ".*"  # a regular expression matched against the full path
    method: str = "*"
    status: int = 500
    latency_ms: int = 0
    remaining: int | None = 1
    probability: float = 1.0
    id: str = field(default_factory=lambda: "flt_" + secrets.token_hex(4))

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> FaultRule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path) and random.random() < rule.probability:  # noqa: S311
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self.rules.remove(rule)
                    return rule
        return None

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()


@dataclass
class WebhookKnobs:
    duplicate: int = 0  # deliver each event this many extra times
    reorder: bool = False  # hold events and deliver each batch of `reorder_batch` newest first
    reorder_batch: int = 2
    delay_ms: int = 0  # wait before the first attempt
    drop: int = 0  # drop the next N events entirely (never delivered)
    paused: bool = False  # keep queuing, deliver nothing until unpaused


@dataclass
class Delivery:
    gateway: str
    event_id: str
    event_type: str
    body: bytes
    headers: dict[str, str]
    attempts: int = 0
    status: int | None = None
    delivered: bool = False
    dropped: bool = False
    error: str | None = None


class WebhookDispatcher:
    """Signs nothing itself: each gateway blueprint builds body and signed headers, this delivers them.

    A background thread posts each delivery to the gateway's configured URL, retrying on non-2xx
    or connection errors with exponential backoff, and applies the duplicate/reorder/delay/drop knobs.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.knobs = WebhookKnobs()
        self.lock = threading.Lock()
        self.log: list[Delivery] = []
        self.held: list[Delivery] = []
        self._queue: queue.Queue[tuple[float, Delivery]] = queue.Queue()
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="sandbox-webhooks", daemon=True)
        self._thread.start()

    def url_for(self, gateway: str) -> str | None:
        return self.config.stripe_webhook_url if gateway == "stripe" else self.config.razorpay_webhook_url

    def emit(self, gateway: str, event_id: str, event_type: str, body: bytes, headers: dict[str, str]) -> Delivery:
        delivery = Delivery(gateway, event_id, event_type, body, headers)
        with self.lock:
            self.log.append(delivery)
            if self.knobs.drop > 0:
                self.knobs.drop -= 1
                delivery.dropped = True
                return delivery
            copies = [delivery] + [
                Delivery(gateway, event_id, event_type, body, dict(headers)) for _ in range(self.knobs.duplicate)
            ]
            self.log.extend(copies[1:])
            if self.knobs.reorder:
                self.held.extend(copies)
                if len(self.held) < self.knobs.reorder_batch:
                    return delivery
                copies, self.held = list(reversed(self.held)), []
            due = time.monotonic() + self.knobs.delay_ms / 1000.0
        for c in copies:
            self._queue.put((due, c))
        return delivery

    def flush_held(self) -> None:
        with self.lock:
            held, self.held = list(reversed(self.held)), []
        for d in held:
            self._queue.put((time.monotonic(), d))

    def _run(self) -> None:
        while True:
            due, delivery = self._queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            while self.knobs.paused:
                time.sleep(0.05)
            self._attempt(delivery)

    def _attempt(self, delivery: Delivery) -> None:
        url = self.url_for(delivery.gateway)
        if not url:
            delivery.error = "no webhook url configured"
            return
        delivery.attempts += 1
        try:
            resp = self._session.post(url, data=delivery.body, headers=delivery.headers, timeout=10)
            delivery.status = resp.status_code
            delivery.delivered = 200 <= resp.status_code < 300
            delivery.error = None if delivery.delivered else resp.text[:200]
        except requests.RequestException as exc:
            delivery.error = type(exc).__name__
        if not delivery.delivered and delivery.attempts < self.config.webhook_max_attempts:
            backoff = self.config.webhook_backoff_seconds * (2 ** (delivery.attempts - 1))
            threading.Timer(backoff, self._queue.put, args=((time.monotonic(), delivery),)).start()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                limit = self.config.webhook_max_attempts
                pending = [d for d in self.log if not d.dropped and not d.delivered and d.attempts < limit]
            if not pending:
                return True
            time.sleep(0.05)
        return False


class Sandbox:
    """Everything one sandbox app holds; reach it in a request with `current_sandbox()`."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.store = Store()
        self.idempotency = IdempotencyCache()
        self.faults = Faults()
        self.webhooks = WebhookDispatcher(config)

    def reset(self) -> None:
        self.store.clear()
        self.idempotency.clear()
        self.faults.clear()
        with self.webhooks.lock:
            self.webhooks.knobs = WebhookKnobs()
            self.webhooks.log.clear()
            self.webhooks.held.clear()


def current_sandbox() -> Sandbox:
    sandbox: Sandbox = current_app.extensions[EXTENSION_KEY]
    return sandbox


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
    app = Flask("payment_service.gateways.sandbox")
    app.extensions[EXTENSION_KEY] = Sandbox(config)
    app.before_request(_apply_faults)
    app.after_request(_lose_response)
    app.register_blueprint(admin)
    # Imported here: each gateway module registers routes on a blueprint of its own.
    from . import razorpay_api, stripe_api

    app.register_blueprint(stripe_api.bp, url_prefix="/stripe")
    app.register_blueprint(razorpay_api.bp, url_prefix="/razorpay")

    @app.get("/")
    def index() -> Response:
        return jsonify({"sandbox": "payment-service gateway sandbox", "stripe": "/stripe", "razorpay": "/razorpay"})

    return app


def config_from_env() -> SandboxConfig:
    cfg = SandboxConfig()
    for name in vars(cfg):
        env = os.environ.get("SANDBOX_" + name.upper())
        if env is not None:
            current = getattr(cfg, name)
            setattr(cfg, name, type(current)(env) if current is not None and not isinstance(current, str) else env)
    return cfg


CHALLENGE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>3-D Secure test authentication</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
.amount{{font-size:1.6rem;margin:1rem 0}} button{{font-size:1.1rem;padding:.6rem 1.4rem;margin-right:1rem}}
.ok{{background:#1a7f37;color:#fff;border:0}} .fail{{background:#cf222e;color:#fff;border:0}}</style></head>
<body><h1>{gateway} test 3-D Secure</h1>
<p>This is the gateway sandbox's test authentication page. No real bank is involved.</p>
<p class="amount" id="amount">{amount}</p>
<p>Card ending <b id="last4">{last4}</b> &middot; ref <code>{payment_id}</code></p>
<form method="post" action="{action}">
<button class="ok" type="submit" name="result" value="approve" id="approve">Complete authentication</button>
<button class="fail" type="submit" name="result" value="fail" id="fail">Fail authentication</button>
</form></body></html>"""


def render_challenge(gateway: str, amount: str, last4: str, payment_id: str, action: str) -> Response:
    from html import escape

    html = CHALLENGE_PAGE.format(
        gateway=escape(gateway), amount=escape(amount), last4=escape(last4),
        payment_id=escape(payment_id), action=escape(action),
    )
    return Response(html, mimetype="text/html")
