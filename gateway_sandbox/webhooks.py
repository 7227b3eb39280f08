"""Webhook delivery: a background thread posts each signed event to its gateway's URL, with retries and knobs."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import requests

from .config import SandboxConfig

logger = logging.getLogger(__name__)


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
