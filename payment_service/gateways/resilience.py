"""What keeps a slow or dead gateway from taking the service down with it.

- `GuardedGateway`: every call to a gateway passes its circuit breaker (domain/breaker.py). When most
  recent calls timed out or failed with a 5xx, the breaker opens and calls are refused at once with
  `CircuitOpenError` (a `GatewayUnavailableError`: nothing was sent, so nothing was charged) until a
  probe call succeeds. Transitions are logged and counted on /metrics.
- `retry_rate_limited`: a gateway's 429 is retried with jittered backoff, with the very same call
  (so the same idempotency key), inside the adapter; only when it persists does the caller see
  `GatewayUnavailableError`.
- `http_session`: the `requests` session the Razorpay SDK is given: one keep-alive connection pool,
  shared by every request of a worker and large enough for all of them (the SDK's default keeps 10).
  Stripe's SDK has its own transport with the same pool (stripe_http.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import requests
from prometheus_client import Counter, Gauge, Histogram
from requests.adapters import HTTPAdapter

from ..cpu_slots import outside_slot
from ..domain.breaker import STATE_VALUE, BreakerState, CircuitBreaker
from .base import (
    ChargeRequest,
    ChargeResult,
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    PayoutRequest,
    PayoutResult,
    RefundResult,
    SavedMethod,
    WebhookEvent,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Waits before each retry of a rate-limited call, in seconds (each is jittered by 0.5x to 1.5x).
RATE_LIMIT_WAITS = (0.2, 0.5, 1.0)

CIRCUIT_STATE = Gauge(
    "payment_gateway_circuit_state", "Circuit breaker state per gateway: 0 closed, 1 half-open, 2 open",
    ["gateway"], multiprocess_mode="livemax",
)
CIRCUIT_TRANSITIONS = Counter(
    "payment_gateway_circuit_transitions", "Circuit breaker transitions", ["gateway", "from_state", "to_state"],
)
CIRCUIT_REJECTED = Counter(
    "payment_gateway_circuit_rejected", "Gateway calls refused at once because the breaker was open", ["gateway"],
)
GATEWAY_CALLS = Counter(
    "payment_gateway_calls", "Gateway calls by outcome: ok (answered), failed (timeout, 5xx), other (429, 409)",
    ["gateway", "outcome"],
)
GATEWAY_CALL_SECONDS = Histogram(
    "payment_gateway_call_seconds",
    "How long gateway calls took, from sending to the answer or the failure (429 retries included)",
    ["gateway", "call", "outcome"],
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
)
RATE_LIMITED_RETRIES = Counter(
    "payment_gateway_rate_limited_retries", "Calls retried after the gateway answered 429", ["gateway"],
)


class CircuitOpenError(GatewayUnavailableError):
    """The breaker refused the call: it was never sent."""

    def __init__(self, gateway: str, retry_after: float) -> None:
        super().__init__(f"{gateway}: circuit open after repeated failures; not called")
        self.retry_after = retry_after


def counts_as_failure(exc: GatewayUnavailableError) -> bool | None:
    """Whether an unavailable answer says the gateway is unwell: a timeout, a lost connection or a 5xx
    does; a 429 (busy, not down) or a 409 (the same key still running there) does not."""
    if exc.http_status is None or exc.http_status >= 500:
        return True
    return None


def log_transition(gateway: str, before: BreakerState, after: BreakerState, why: str) -> None:
    CIRCUIT_STATE.labels(gateway).set(STATE_VALUE[after])
    CIRCUIT_TRANSITIONS.labels(gateway, before.value, after.value).inc()
    level = logging.WARNING if after is BreakerState.OPEN else logging.INFO
    logger.log(
        level, "gateway circuit %s", after.value,
        extra={"gateway": gateway, "from_state": before.value, "to_state": after.value, "reason": why},
    )


class GuardedGateway:
    """A `Gateway` whose every network call passes the gateway's circuit breaker.

    Pure methods (webhook verification and parsing) are not guarded: they make no call.
    """

    def __init__(self, inner: Gateway, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker
        self.name = inner.name
        CIRCUIT_STATE.labels(self.name).set(STATE_VALUE[breaker.state])

    def __getattr__(self, attr: str) -> Any:
        # Anything else (an adapter's own attributes, a method added to the interface later) as is.
        return getattr(self.inner, attr)

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        permit = self.breaker.allow()
        if permit is None:
            CIRCUIT_REJECTED.labels(self.name).inc()
            raise CircuitOpenError(self.name, self.breaker.retry_after())
        failed: bool | None = None
        took: float | None = None
        started = time.perf_counter()
        try:
            with outside_slot():  # the request's CPU slot is free while it waits (cpu_slots.py)
                try:
                    result = fn(*args, **kwargs)
                finally:
                    took = time.perf_counter() - started  # the call, not the wait for the slot after it
            failed = False
            return result
        except GatewayUnavailableError as exc:
            failed = counts_as_failure(exc)
            raise
        except GatewayError:
            failed = False  # a definite answer (a decline, a 4xx): the gateway is up
            raise
        finally:
            outcome = {True: "failed", False: "ok", None: "other"}[failed]
            GATEWAY_CALLS.labels(self.name, outcome).inc()
            if took is not None:
                GATEWAY_CALL_SECONDS.labels(self.name, fn.__name__, outcome).observe(took)
            self.breaker.record(permit, failed)

    def create_customer(self, user_id: str, *, idempotency_key: str) -> str:
        return self._guarded(self.inner.create_customer, user_id, idempotency_key=idempotency_key)

    def attach_payment_method(self, customer_ref: str, token: str, *, idempotency_key: str) -> SavedMethod:
        return self._guarded(self.inner.attach_payment_method, customer_ref, token, idempotency_key=idempotency_key)

    def detach_payment_method(self, saved: SavedMethod) -> None:
        self._guarded(self.inner.detach_payment_method, saved)

    def charge(self, request: ChargeRequest) -> ChargeResult:
        return self._guarded(self.inner.charge, request)

    def retrieve_charge(self, gateway_payment_id: str) -> ChargeResult:
        return self._guarded(self.inner.retrieve_charge, gateway_payment_id)

    def find_charge(self, reference: str) -> ChargeResult | None:
        return self._guarded(self.inner.find_charge, reference)

    def cancel_charge(self, gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        return self._guarded(self.inner.cancel_charge, gateway_payment_id, idempotency_key=idempotency_key)

    def refund(
        self, gateway_payment_id: str, amount: int, currency: str, *, reference: str, idempotency_key: str
    ) -> RefundResult:
        return self._guarded(
            self.inner.refund, gateway_payment_id, amount, currency, reference=reference,
            idempotency_key=idempotency_key,
        )

    def retrieve_refund(self, gateway_refund_id: str, gateway_payment_id: str | None = None) -> RefundResult:
        return self._guarded(self.inner.retrieve_refund, gateway_refund_id, gateway_payment_id)

    def create_payout(self, request: PayoutRequest) -> PayoutResult:
        return self._guarded(self.inner.create_payout, request)

    def retrieve_payout(self, gateway_payout_id: str) -> PayoutResult:
        return self._guarded(self.inner.retrieve_payout, gateway_payout_id)

    def find_payout(self, reference: str) -> PayoutResult | None:
        return self._guarded(self.inner.find_payout, reference)

    def verify_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        return self.inner.verify_webhook(raw_body, headers)

    def charge_result_from_event(self, event: WebhookEvent) -> ChargeResult | None:
        return self.inner.charge_result_from_event(event)

    def refund_result_from_event(self, event: WebhookEvent) -> RefundResult | None:
        return self.inner.refund_result_from_event(event)

    def payout_result_from_event(self, event: WebhookEvent) -> PayoutResult | None:
        return self.inner.payout_result_from_event(event)


def retry_rate_limited(
    gateway: str,
    call: Callable[[], T],
    waits: Sequence[float] = RATE_LIMIT_WAITS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, again after each wait while the gateway answers 429. The call is the very same one
    (same body, same idempotency key), so a retry can never do the work twice: a 429 is a refusal to
    start it. A 429 that outlasts the waits raises, as an unavailable gateway (retry later)."""
    for attempt, wait in enumerate((*waits, None)):
        try:
            return call()
        except GatewayUnavailableError as exc:
            if exc.http_status != 429 or wait is None:
                raise
            delay = wait * (0.5 + random.random())
            RATE_LIMITED_RETRIES.labels(gateway).inc()
            logger.info("gateway rate limited: retrying", extra={"gateway": gateway, "attempt": attempt + 1,
                                                                  "wait_s": round(delay, 3)})
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def http_session(max_connections: int, session: requests.Session | None = None) -> requests.Session:
    """A session whose keep-alive pool holds `max_connections` per host, shared by every request of the
    process. Under the gevent worker every request is a greenlet: a per-thread session would be a new
    connection per request, and a pool of 10 would throw away all but 10 of a burst's connections."""
    session = session or requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max_connections, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
