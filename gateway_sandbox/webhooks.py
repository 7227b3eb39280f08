"""Webhook delivery: a background thread posts each signed event to its gateway's URL, with retries and knobs.

A delivery's body and signed headers are a `Payload`, made when first needed (the first attempt to a
configured URL, or a reader of `Delivery.body`): an event no URL is configured for, or that is
dropped, is never serialised nor signed, which was most of the sandbox's webhook cost per charge.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


class Payload:
    """A webhook's body and signed headers, made by `build` on first use and then kept.

    `build` must give the same bytes whenever it is called: it may read only what no longer changes
    once the event is emitted (the event, itself a copy of the object at that moment and never
    changed after, and the secret and signature timestamp of the emission, bound in `build`).
    Two threads asking at once may both build it; they get equal results.
    """

    __slots__ = ("_build", "_made")

    def __init__(self, build: Callable[[], tuple[bytes, dict[str, str]]]) -> None:
        self._build = build
        self._made: tuple[bytes, dict[str, str]] | None = None

    def _get(self) -> tuple[bytes, dict[str, str]]:
        if self._made is None:
            self._made = self._build()
        return self._made

    @property
    def body(self) -> bytes:
        return self._get()[0]

    @property
    def headers(self) -> dict[str, str]:
        return self._get()[1]


@dataclass
class Delivery:
    gateway: str
    event_id: str
    event_type: str
    payload: Payload
    attempts: int = 0
    status: int | None = None
    delivered: bool = False
    dropped: bool = False
    error: str | None = None
    _headers: dict[str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def body(self) -> bytes:
        return self.payload.body

    @property
    def headers(self) -> dict[str, str]:
        """This delivery's own copy of the signed headers (a duplicate's are not the original's)."""
        if self._headers is None:
            self._headers = dict(self.payload.headers)
        return self._headers


class WebhookDispatcher:
    """Signs nothing itself: each gateway blueprint gives a `Payload` (body and signed headers), this delivers it.

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

    def emit(self, gateway: str, event_id: str, event_type: str, payload: Payload) -> Delivery:
        delivery = Delivery(gateway, event_id, event_type, payload)
        with self.lock:
            self.log.append(delivery)
            if self.knobs.drop > 0:
                self.knobs.drop -= 1
                delivery.dropped = True
                return delivery
            copies = [delivery] + [
                Delivery(gateway, event_id, event_type, payload) for _ in range(self.knobs.duplicate)
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
