"""Issue 9, scenarios 1-4: ways to take a customer's money and never credit or refund it.

Each test drives only the service's stable entry points: the HTTP API (Flask's test client over
`create_app`), the worker's jobs (`payment_service.worker.jobs`) and the webhook inbox
(`services.webhooks.store_webhook`). Races run as races, with real threads and a barrier. The
assertions read what the database holds (raw SQL on the tables) and what the gateway did: the
fake gateways below keep their own record of every charge and refund, and scenario 3 uses the
real Razorpay adapter against the gateway sandbox, whose state is read directly.

Every test starts on a new, migrated MariaDB database of its own, so no sweep sees another
test's records.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import Session

from config.settings import DEV_JWT_SECRET
from gateway_sandbox import SandboxConfig
from gateway_sandbox.faults import FaultRule
from gateway_sandbox.server import SandboxServer
from localparts.mariadb import create_database_at, drop_database_at
from payment_service.adapters import migrate
from payment_service.adapters.api_clients import SqlAlchemyApiClientRepository
from payment_service.api import create_app
from payment_service.bootstrap import Container
from payment_service.gateways.base import (
    CardDetails,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    GatewayError,
    GatewayUnavailableError,
    InvalidWebhook,
    PayoutRequest,
    PayoutResult,
    PayoutStatus,
    RefundResult,
    RefundStatus,
    SavedMethod,
    WebhookEvent,
)
from payment_service.services.webhooks import store_webhook
from payment_service.worker import jobs

pytestmark = pytest.mark.integration

JOIN_SECONDS = 60  # no thread of these tests should ever need this long
BOOKKEEPING = ("attempts", "next_attempt_at", "last_error")


# --- fake gateways ----------------------------------------------------------------------------


VISA = CardDetails("visa", "4242", 12, 2030, "US", "424242", "fp_visa")


@dataclass
class FakeCharge:
    gateway_payment_id: str
    reference: str
    amount: int
    currency: str
    status: str  # processing (in flight), requires_action, succeeded, failed, canceled
    created: float  # time.monotonic() when the gateway recorded it
    redirect_url: str | None = None
    refunded: int = 0
    failure_code: str = "card_declined"


@dataclass
class FakeRefund:
    gateway_refund_id: str
    gateway_payment_id: str
    amount: int
    reference: str


@dataclass
class FakePayout:
    gateway_payout_id: str
    reference: str
    amount: int
    status: PayoutStatus


class FakeCardGateway:
    """A Stripe-like gateway in memory, thread-safe.

    * Idempotency as at Stripe: the same key gets the first result again; while the first request with a
      key is still executing, another one answers 409, which adapters report as "unavailable".
    * A call refused before it executes (`fail_next`) charges nothing and stores nothing under its key;
      a lost response (`lose_next`) charges for real and then raises, as a timeout after the fact does.
    * `find_charge` is a search that lags (`search_lag_seconds`), like Stripe's: a charge made in the
      last N seconds is not found. `retrieve_charge` by id does not lag.
    * `hold`: the next charge blocks, in flight at the gateway (recorded as processing), until the test
      sets the event; `entered` is set when it gets there.
    * `broken`: our ids (payment or withdrawal) whose every call raises the given error, like one record
      with a malformed answer or an adapter bug that hits only it.
    * `charge_result_from_event` reads the ChargeResult back from the payload of events built by
      `event_for`, so a test can store "the gateway's webhook" with `store_webhook`.
    """

    def __init__(self, name: str = "stripe", search_lag_seconds: float = 0.0) -> None:
        self.name = name
        self.search_lag_seconds = search_lag_seconds
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.charges: dict[str, FakeCharge] = {}
        self.by_key: dict[str, ChargeResult] = {}
        self.in_flight: set[str] = set()
        self.refunds: dict[str, FakeRefund] = {}
        self.refunds_by_key: dict[str, RefundResult] = {}
        self.payouts: dict[str, FakePayout] = {}
        self.payouts_by_key: dict[str, PayoutResult] = {}
        self.fail_next = 0
        self.lose_next = 0
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        self.broken: dict[str, Exception] = {}
        self.calls: list[tuple[str, str]] = []  # (operation, our id or gateway id)

    # -- helpers

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self.name[:3]}{next(self.ids)}"

    def _check_broken(self, *our_ids: str | None) -> None:
        for our_id in our_ids:
            if our_id is not None and our_id in self.broken:
                raise self.broken[our_id]

    def _result(self, c: FakeCharge) -> ChargeResult:
        status = {
            "processing": ChargeStatus.PROCESSING,
            "requires_action": ChargeStatus.REQUIRES_ACTION,
            "succeeded": ChargeStatus.SUCCEEDED,
            "failed": ChargeStatus.FAILED,
            "canceled": ChargeStatus.CANCELED,
        }[c.status]
        return ChargeResult(
            status=status,
            gateway_payment_id=c.gateway_payment_id,
            amount=c.amount,
            currency=c.currency,
            redirect_url=c.redirect_url if c.status == "requires_action" else None,
            failure_code=c.failure_code if c.status == "failed" else None,
            failure_message="declined" if c.status == "failed" else None,
            card=VISA,
            reference=c.reference,
            raw_status=c.status,
        )

    def captured_amount(self, reference: str) -> int:
        """What the gateway took from the customer for our payment, net of nothing."""
        with self.lock:
            return sum(c.amount for c in self.charges.values() if c.reference == reference and c.status == "succeeded")

    def refunded_amount(self, reference: str) -> int:
        with self.lock:
            return sum(c.refunded for c in self.charges.values() if c.reference == reference)

    def charges_for(self, reference: str) -> list[FakeCharge]:
        with self.lock:
            return [c for c in self.charges.values() if c.reference == reference]

    def event_for(self, gateway_payment_id: str) -> WebhookEvent:
        """The webhook the gateway sends for the charge's current state, in a form our fake reads back."""
        with self.lock:
            c = self.charges[gateway_payment_id]
            result = self._result(c)
        event_type = {
            ChargeStatus.SUCCEEDED: "payment_intent.succeeded",
            ChargeStatus.FAILED: "payment_intent.payment_failed",
            ChargeStatus.CANCELED: "payment_intent.canceled",
        }.get(result.status, "payment_intent.processing")
        return WebhookEvent(
            gateway=self.name,
            event_id=f"evt_{gateway_payment_id}_{c.status}",
            type=event_type,
            object_id=gateway_payment_id,
            reference=c.reference,
            payload=charge_payload(result),
        )

    # -- Gateway protocol

    def create_customer(self, user_id: str, *, idempotency_key: str) -> str:
        return f"cus_{user_id}"

    def attach_payment_method(self, customer_ref: str, token: str, *, idempotency_key: str) -> SavedMethod:
        return SavedMethod(f"pm_saved_{token}", customer_ref, VISA)

    def detach_payment_method(self, saved: SavedMethod) -> None:
        return None

    def charge(self, request: ChargeRequest) -> ChargeResult:
        key = request.idempotency_key
        with self.lock:
            self.calls.append(("charge", request.reference))
            self._check_broken(request.reference)
            if key in self.in_flight:
                raise GatewayUnavailableError("409: a request with this idempotency key is in progress",
                                              http_status=409)
            if key in self.by_key:
                return self.by_key[key]
            if self.fail_next > 0:
                self.fail_next -= 1
                raise GatewayUnavailableError("503: the gateway did not execute the request", http_status=503)
            gid = self._new_id("pi")
            charge = FakeCharge(gid, request.reference, request.amount, request.currency, "processing",
                                time.monotonic())
            self.charges[gid] = charge
            self.in_flight.add(key)
            hold, self.hold = self.hold, None
        try:
            if hold is not None:
                self.entered.set()
                hold.wait(JOIN_SECONDS)
            with self.lock:
                if needs_3ds(request):
                    charge.status = "requires_action"
                    charge.redirect_url = f"https://gateway.example/3ds/{gid}"
                elif "declined" in request.token.lower():
                    charge.status = "failed"
                else:
                    charge.status = "succeeded"
                result = self._result(charge)
                self.by_key[key] = result
                lose = self.lose_next > 0
                if lose:
                    self.lose_next -= 1
        finally:
            with self.lock:
                self.in_flight.discard(key)
        if lose:
            raise GatewayUnavailableError("read timeout: the response was lost")
        return result

    def retrieve_charge(self, gateway_payment_id: str) -> ChargeResult:
        with self.lock:
            self.calls.append(("retrieve_charge", gateway_payment_id))
            c = self.charges.get(gateway_payment_id)
            if c is None:
                raise GatewayError(f"no such charge {gateway_payment_id}", code="not_found", http_status=404)
            self._check_broken(c.reference)
            return self._result(c)

    def find_charge(self, reference: str) -> ChargeResult | None:
        with self.lock:
            self.calls.append(("find_charge", reference))
            self._check_broken(reference)
            horizon = time.monotonic() - self.search_lag_seconds
            found = [c for c in self.charges.values() if c.reference == reference and c.created <= horizon]
            if not found:
                return None
            return self._result(found[-1])

    def cancel_charge(self, gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        with self.lock:
            self.calls.append(("cancel_charge", gateway_payment_id))
            c = self.charges[gateway_payment_id]
            self._check_broken(c.reference)
            if c.status in ("requires_action", "processing"):
                c.status = "canceled"
            return self._result(c)

    def refund(
        self, gateway_payment_id: str, amount: int, currency: str, *, reference: str, idempotency_key: str
    ) -> RefundResult:
        with self.lock:
            self.calls.append(("refund", reference))
            if idempotency_key in self.refunds_by_key:
                return self.refunds_by_key[idempotency_key]
            c = self.charges[gateway_payment_id]
            if c.status != "succeeded" or c.refunded + amount > c.amount:
                raise GatewayError("refund exceeds the captured amount", code="refund_exceeds_captured",
                                   http_status=400)
            c.refunded += amount
            rid = self._new_id("re")
            self.refunds[rid] = FakeRefund(rid, gateway_payment_id, amount, reference)
            result = RefundResult(rid, RefundStatus.SUCCEEDED, amount)
            self.refunds_by_key[idempotency_key] = result
            return result

    def retrieve_refund(self, gateway_refund_id: str, gateway_payment_id: str | None = None) -> RefundResult:
        with self.lock:
            r = self.refunds[gateway_refund_id]
            return RefundResult(r.gateway_refund_id, RefundStatus.SUCCEEDED, r.amount)

    def create_payout(self, request: PayoutRequest) -> PayoutResult:
        with self.lock:
            self.calls.append(("create_payout", request.reference))
            if request.idempotency_key in self.payouts_by_key:
                return self.payouts_by_key[request.idempotency_key]
            pid = self._new_id("pout")
            self.payouts[pid] = FakePayout(pid, request.reference, request.amount, PayoutStatus.PROCESSING)
            result = PayoutResult(pid, PayoutStatus.PROCESSING, fund_account_ref="fa_fake")
            self.payouts_by_key[request.idempotency_key] = result
            return result

    def retrieve_payout(self, gateway_payout_id: str) -> PayoutResult:
        with self.lock:
            self.calls.append(("retrieve_payout", gateway_payout_id))
            p = self.payouts[gateway_payout_id]
            self._check_broken(p.reference)
            if p.status is PayoutStatus.PROCESSING:  # the bank settles it by the time we ask
                p.status = PayoutStatus.SETTLED
            return PayoutResult(p.gateway_payout_id, p.status, fund_account_ref="fa_fake",
                                utr="UTR" + p.gateway_payout_id.upper()[-8:])

    def find_payout(self, reference: str) -> PayoutResult | None:
        with self.lock:
            self._check_broken(reference)
            found = [p for p in self.payouts.values() if p.reference == reference]
        return self.retrieve_payout(found[0].gateway_payout_id) if found else None

    def verify_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        raise InvalidWebhook("the fake gateway takes its events through store_webhook only")

    def charge_result_from_event(self, event: WebhookEvent) -> ChargeResult | None:
        return charge_result_from_payload(event.payload)

    def refund_result_from_event(self, event: WebhookEvent) -> RefundResult | None:
        return None

    def payout_result_from_event(self, event: WebhookEvent) -> PayoutResult | None:
        return None


class FakeRazorpayGateway(FakeCardGateway):
    """Razorpay's shape: one order per payment of ours (receipt = our id), several payment attempts on it.

    A charge reuses the order and answers from an attempt that is not waiting for 3-D Secure (as the
    real adapter does); otherwise it makes a new attempt. There are no idempotency keys on payments.
    `fail_attempt` / `capture_attempt` are the customer giving up on / completing 3-D Secure, and give
    back the webhook Razorpay sends (`payment.failed` / `payment.captured`) for that attempt.
    """

    def __init__(self) -> None:
        super().__init__(name="razorpay")

    def charge(self, request: ChargeRequest) -> ChargeResult:
        with self.lock:
            self.calls.append(("charge", request.reference))
            self._check_broken(request.reference)
            attempts = [c for c in self.charges.values() if c.reference == request.reference]
            settled = [c for c in attempts if c.status not in ("requires_action", "processing")]
            if settled:
                return self._result(settled[-1])
            gid = self._new_id("pay")
            charge = FakeCharge(gid, request.reference, request.amount, request.currency, "requires_action",
                                time.monotonic(), redirect_url=f"https://gateway.example/razorpay/3ds/{gid}")
            if not needs_3ds(request):
                charge.status = "succeeded"
            self.charges[gid] = charge
            result = self._result(charge)
            if self.lose_next > 0:
                self.lose_next -= 1
                raise GatewayUnavailableError("read timeout: the response was lost")
            return result

    def find_charge(self, reference: str) -> ChargeResult | None:
        with self.lock:
            self._check_broken(reference)
            attempts = [c for c in self.charges.values() if c.reference == reference]
        if not attempts:
            return None
        rank = {"succeeded": 0, "processing": 1, "requires_action": 2, "failed": 3, "canceled": 3}
        best = sorted(reversed(attempts), key=lambda c: rank[c.status])[0]
        with self.lock:
            return self._result(best)

    def _finish_attempt(self, gateway_payment_id: str, status: str, event_type: str) -> WebhookEvent:
        with self.lock:
            c = self.charges[gateway_payment_id]
            assert c.status == "requires_action", c
            c.status = status
            c.failure_code = "authentication_timeout"  # Razorpay's payment_timed_out
            result = self._result(c)
        return WebhookEvent(
            gateway=self.name,
            event_id=f"evt_{gateway_payment_id}_{status}",
            type=event_type,
            object_id=gateway_payment_id,
            reference=c.reference,
            payload=charge_payload(result),
        )

    def fail_attempt(self, gateway_payment_id: str) -> WebhookEvent:
        return self._finish_attempt(gateway_payment_id, "failed", "payment.failed")

    def capture_attempt(self, gateway_payment_id: str) -> WebhookEvent:
        return self._finish_attempt(gateway_payment_id, "succeeded", "payment.captured")


def needs_3ds(request: ChargeRequest) -> bool:
    token = request.token.lower()
    return request.request_three_d_secure or "3ds" in token or "threedsecure" in token


def charge_payload(result: ChargeResult) -> dict[str, Any]:
    return {
        "object": "charge_result",
        "status": result.status.value,
        "gateway_payment_id": result.gateway_payment_id,
        "amount": result.amount,
        "currency": result.currency,
        "failure_code": result.failure_code,
        "failure_message": result.failure_message,
        "reference": result.reference,
        "raw_status": result.raw_status,
    }


def charge_result_from_payload(payload: Mapping[str, Any]) -> ChargeResult | None:
    if payload.get("object") != "charge_result":
        return None
    return ChargeResult(
        status=ChargeStatus(payload["status"]),
        gateway_payment_id=payload["gateway_payment_id"],
        amount=payload["amount"],
        currency=payload["currency"],
        failure_code=payload["failure_code"],
        failure_message=payload["failure_message"],
        card=VISA,
        reference=payload["reference"],
        raw_status=payload["raw_status"],
    )


# --- the service under test ---------------------------------------------------------------------


BASE_SETTINGS: dict[str, Any] = {
    "TESTING": True,
    "LOG_LEVEL": "WARNING",
    "RATE_LIMIT_USER": "100000/minute",
    "RATE_LIMIT_CLIENT": "100000/minute",
    "RISK_VELOCITY_MAX_ATTEMPTS": 1000,
    "RISK_VELOCITY_MAX_AMOUNT": 100_000_000_000,
    "GATEWAY_TIMEOUT_SECONDS": 10.0,
}


@dataclass
class Service:
    """One replica of the service (API and worker share its container) on the test's database."""

    app: Flask
    container: Container

    def client(self) -> FlaskClient:
        return self.app.test_client()


@dataclass
class World:
    url: str
    engine: Engine
    services: list[Service] = field(default_factory=list)

    def service(self, gateways: dict[str, Any] | None = None, **overrides: Any) -> Service:
        app = create_app(**{**BASE_SETTINGS, "DATABASE_URL": self.url, **overrides})
        container: Container = app.extensions["payment_service"]
        if gateways is not None:
            container.gateway_overrides = gateways
        service = Service(app, container)
        self.services.append(service)
        return service

    # -- reading the database

    def row(self, table: str, record_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            found = conn.execute(text(f"SELECT * FROM {table} WHERE id = :id"), {"id": record_id}).mappings().first()
        assert found is not None, f"no {table} row {record_id}"
        return dict(found)

    def status(self, table: str, record_id: str) -> str:
        return str(self.row(table, record_id)["status"])

    def events(self, subject: str, event_type: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT payload FROM outbox_events WHERE subject = :s AND event_type = :t ORDER BY id"),
                {"s": subject, "t": event_type},
            ).scalars().all()
        return [json.loads(r) for r in rows]

    def refunds_of(self, payment_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT * FROM refunds WHERE payment_id = :p ORDER BY created_at"), {"p": payment_id}
            ).mappings().all()
        return [dict(r) for r in rows]

    def api_key(self, *scopes: str) -> dict[str, str]:
        with Session(self.engine) as session:
            issued = SqlAlchemyApiClientRepository(session).create_client(f"svc-{uuid.uuid4().hex[:8]}", scopes)
            session.commit()
        return {"X-API-Key": issued.key}


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    """A new, migrated database for this test alone, and the replicas the test starts on it."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database_at(database_url, name)
    migrate.upgrade(url)
    engine = create_engine(url)
    w = World(url, engine)
    try:
        yield w
    finally:
        for s in w.services:
            s.container.close()
        engine.dispose()
        drop_database_at(database_url, name)


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(webhook_backoff_seconds=0.05)) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    sandbox_server.sandbox.reset()
    return sandbox_server


def user_headers(sub: str, key: str | None = None) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "aud": "payment-service", "exp": int(time.time()) + 3600}, DEV_JWT_SECRET,
                       algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def topup_body(amount: int, gateway: str, token: str) -> dict[str, Any]:
    return {"amount": amount, "currency": "INR", "gateway": gateway, "token": token,
            "return_url": "https://wallet.example/back"}


def post_topup(client: FlaskClient, user: str, key: str, body: dict[str, Any]) -> Any:
    return client.post("/payments/topup", json=body, headers=user_headers(user, key))


def pending_payment_after_503(service: Service, user: str, key: str, body: dict[str, Any]) -> str:
    """A top-up answered 503: the payment is recorded PENDING, the outcome unknown to the client."""
    resp = post_topup(service.client(), user, key, body)
    assert resp.status_code == 503, resp.get_data(as_text=True)
    with service.container.engine.connect() as conn:  # each user of these tests makes one payment
        pid = conn.execute(
            text("SELECT id FROM payments WHERE user_id = :u ORDER BY created_at DESC LIMIT 1"), {"u": user}
        ).scalar_one()
    return str(pid)


class Threads:
    """Real threads started together at a barrier; an exception in one is kept and shown, never lost."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: dict[str, Any] = {}
        self.errors: dict[str, BaseException] = {}

    def start(self, name: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.results[name] = fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors[name] = exc

        t = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def join(self, timeout: float = JOIN_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"threads still running after {timeout} s: {alive}"


def run_job(job: Callable[[Container], Any], container: Container) -> tuple[Any, BaseException | None]:
    """Run one of the worker's jobs; an exception escaping it is returned, to be shown in an assertion."""
    try:
        return job(container), None
    except Exception as exc:  # noqa: BLE001 - the tests below assert on what escaped
        return None, exc


def utcnow_naive() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def assert_money_accounted(world: World, gateway: FakeCardGateway, payment_id: str) -> None:
    """The invariant: money the gateway holds for our payment is credited once (CAPTURED with exactly one
    PAYMENT_CAPTURED), or given back in full and recorded; never kept with the payment closed."""
    payment = world.row("payments", payment_id)
    charged = gateway.captured_amount(payment_id)
    refunded = gateway.refunded_amount(payment_id)
    captured_events = world.events(payment_id, "PAYMENT_CAPTURED")
    story = (
        f"payment {payment_id}: status={payment['status']} failure_code={payment['failure_code']} "
        f"refunded_amount={payment['refunded_amount']}; gateway charged {charged}, refunded {refunded}; "
        f"{len(captured_events)} PAYMENT_CAPTURED event(s); gateway charges: {gateway.charges_for(payment_id)}"
    )
    assert charged <= payment["amount"], "charged more than once: " + story
    if charged == 0:
        assert not captured_events, "credited without a charge: " + story
        return
    if refunded < charged:
        assert payment["status"] == "CAPTURED", "the customer was charged and the payment is not CAPTURED: " + story
        assert len(captured_events) == 1, "a charged payment must be credited exactly once: " + story
        return
    # Charged, then refunded in full at the gateway: the refund must be in our books.
    assert payment["refunded_amount"] == charged or any(
        r["status"] == "SUCCEEDED" and r["amount"] == charged for r in world.refunds_of(payment_id)
    ), "refunded at the gateway but not recorded: " + story


def assert_sweep_bookkeeping(world: World, table: str, record_id: str, started: datetime, needle: str) -> None:
    """The record a sweep could not handle carries its failure: attempts, when to try next, the error."""
    columns = {c["name"] for c in inspect(world.engine).get_columns(table)}
    missing = [c for c in BOOKKEEPING if c not in columns]
    if missing:
        pytest.fail(f"{table} has no {', '.join(missing)} column(s): the sweep keeps no record of why "
                    f"{record_id} failed, nor when to try it again")
    row = world.row(table, record_id)
    assert (row["attempts"] or 0) >= 1, f"{table} {record_id}: attempts={row['attempts']}"
    assert needle in (row["last_error"] or ""), f"{table} {record_id}: last_error={row['last_error']!r}"
    assert row["next_attempt_at"] is not None and row["next_attempt_at"] > started, (
        f"{table} {record_id}: next_attempt_at={row['next_attempt_at']} should be after the sweep began ({started}),"
        " so the record goes to the back of the queue"
    )


# --- 1. reconciliation fails a payment that a retried request is charging ------------------------


def test_reconcile_never_fails_a_payment_whose_retry_is_charging(world: World) -> None:
    # Stripe's search lags by up to a minute: a charge in flight is not found by find_charge.
    gateway = FakeCardGateway("stripe", search_lag_seconds=60)
    service = world.service({"stripe": gateway, "razorpay": FakeRazorpayGateway()}, RECONCILE_AFTER_SECONDS=0)
    user, key, body = "u_recon_race", uuid.uuid4().hex, topup_body(25_000, "stripe", "pm_card_visa")

    gateway.fail_next = 1  # the first attempt never reaches the gateway's executor: 503, nothing charged
    payment_id = pending_payment_after_503(service, user, key, body)
    assert world.status("payments", payment_id) == "PENDING"
    assert gateway.captured_amount(payment_id) == 0

    # The client retries with the same key; its charge is in flight at the gateway when the reconcile job
    # (another worker) looks the PENDING payment up and finds nothing yet.
    release = threading.Event()
    gateway.hold = release
    barrier = threading.Barrier(2)
    threads = Threads()

    def retry() -> Any:
        barrier.wait()
        return post_topup(service.client(), user, key, body)

    def sweep() -> Any:
        barrier.wait()
        assert gateway.entered.wait(JOIN_SECONDS), "the retried charge never reached the gateway"
        return run_job(jobs.reconcile, service.container)

    threads.start("retry", retry)
    threads.start("reconcile", sweep)
    try:
        deadline = time.monotonic() + JOIN_SECONDS
        while "reconcile" not in threads.results and "reconcile" not in threads.errors:
            assert time.monotonic() < deadline, "the reconcile job did not finish"
            time.sleep(0.01)
    finally:
        release.set()  # the charge completes: the customer is charged
    threads.join()
    assert not threads.errors, threads.errors
    _reconciled, escaped = threads.results["reconcile"]
    assert escaped is None, f"the reconcile job raised {escaped!r}"
    response = threads.results["retry"]

    # The gateway sends its success webhook; the worker applies it, and runs every job once more.
    for charge in gateway.charges_for(payment_id):
        store_webhook(gateway.event_for(charge.gateway_payment_id), service.container.uow_factory)
    for _ in range(2):
        jobs.apply_webhooks(service.container)
        jobs.reconcile(service.container)
        jobs.retry_refunds(service.container)

    assert gateway.captured_amount(payment_id) == 25_000  # the retry did charge the customer
    assert_money_accounted(world, gateway, payment_id)
    if world.status("payments", payment_id) == "CAPTURED":
        assert response.status_code in (201, 202), (
            f"the client was answered {response.status_code} {response.get_data(as_text=True)} for a payment "
            "that is CAPTURED"
        )


# --- 2. Razorpay: a superseded attempt's failure fails the payment -------------------------------


def test_failure_of_a_superseded_razorpay_attempt_does_not_fail_the_payment(world: World) -> None:
    razorpay = FakeRazorpayGateway()
    service = world.service({"stripe": FakeCardGateway("stripe"), "razorpay": razorpay})
    user, key, body = "u_rzp_attempts", uuid.uuid4().hex, topup_body(30_000, "razorpay", "tok_rzp_3ds_success")

    razorpay.lose_next = 1  # attempt A is made (waiting for 3-D Secure), its response is lost: 503
    payment_id = pending_payment_after_503(service, user, key, body)
    [attempt_a] = razorpay.charges_for(payment_id)

    resp = post_topup(service.client(), user, key, body)  # the retry: attempt B on the same order
    assert resp.status_code == 202, resp.get_data(as_text=True)
    attempt_b = resp.get_json()["gateway_payment_id"]
    assert resp.get_json()["status"] == "PENDING_3DS" and attempt_b != attempt_a.gateway_payment_id

    # Attempt A times out at Razorpay (payment.failed, same notes.payment_id); then the customer completes
    # attempt B's 3-D Secure (payment.captured).
    store_webhook(razorpay.fail_attempt(attempt_a.gateway_payment_id), service.container.uow_factory)
    jobs.apply_webhooks(service.container)
    store_webhook(razorpay.capture_attempt(attempt_b), service.container.uow_factory)
    jobs.apply_webhooks(service.container)

    payment = world.row("payments", payment_id)
    captured = world.events(payment_id, "PAYMENT_CAPTURED")
    failed = world.events(payment_id, "PAYMENT_FAILED")
    assert_money_accounted(world, razorpay, payment_id)
    assert (payment["status"], payment["gateway_payment_id"]) == ("CAPTURED", attempt_b), payment
    assert len(captured) == 1, captured
    assert not failed, f"the failure of superseded attempt {attempt_a.gateway_payment_id} was published: {failed}"


# --- 3. Razorpay check-then-create races: two workers refund twice; two requests charge twice ------


def razorpay_settings(sandbox: SandboxServer) -> dict[str, Any]:
    return {
        "RAZORPAY_API_BASE": sandbox.razorpay_api_base,
        "STRIPE_API_BASE": sandbox.stripe_api_base,
        "RAZORPAY_WEBHOOK_SECRET": sandbox.config.razorpay_webhook_secret,
        "STRIPE_WEBHOOK_SECRET": sandbox.config.stripe_webhook_secret,
    }


def sandbox_refunds(sandbox: SandboxServer, gateway_payment_id: str) -> list[dict[str, Any]]:
    store = sandbox.sandbox.store
    return store.find(lambda o: o.get("entity") == "refund" and o.get("payment_id") == gateway_payment_id)


def test_two_workers_retrying_a_pending_refund_refund_once_at_razorpay(world: World, sandbox: SandboxServer) -> None:
    settings = {**razorpay_settings(sandbox), "REFUND_RETRY_AFTER_SECONDS": 0}
    api = world.service(**settings)
    user = "u_rzp_refund_race"
    resp = post_topup(api.client(), user, uuid.uuid4().hex, topup_body(40_000, "razorpay", "tok_rzp_success"))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    payment_id, gateway_payment_id = resp.get_json()["id"], resp.get_json()["gateway_payment_id"]
    refund_path = rf"^/razorpay/v1/payments/{gateway_payment_id}/refund$"

    # The refund's gateway call fails before reaching Razorpay: 503, the refund stays PENDING.
    sandbox.sandbox.faults.add(FaultRule(mode="error", status=503, method="POST", path=refund_path, remaining=1))
    refunder = world.api_key("payments:refund", "payments:read")
    resp = api.client().post(f"/payments/{payment_id}/refunds", json={"amount": 15_000},
                             headers={**refunder, "Idempotency-Key": uuid.uuid4().hex})
    assert resp.status_code == 503, resp.get_data(as_text=True)
    [refund] = world.refunds_of(payment_id)
    assert refund["status"] == "PENDING" and not sandbox_refunds(sandbox, gateway_payment_id)

    # Two worker replicas run the retry job together; Razorpay is slow, so both calls are in flight at once.
    slow = FaultRule(mode="latency", latency_ms=600, method="POST", path=refund_path, remaining=2)
    sandbox.sandbox.faults.add(slow)
    workers = [api, world.service(**settings)]
    barrier = threading.Barrier(len(workers))
    threads = Threads()
    for i, worker in enumerate(workers):
        def run(worker: Service = worker) -> Any:
            barrier.wait()
            return run_job(jobs.retry_refunds, worker.container)

        threads.start(f"worker-{i}", run)
    threads.join()
    assert not threads.errors, threads.errors

    at_gateway = sandbox_refunds(sandbox, gateway_payment_id)
    story = (f"Razorpay refunds of {gateway_payment_id}: {[(r['id'], r['amount'], r['receipt']) for r in at_gateway]};"
             f" ours: {world.refunds_of(payment_id)}; jobs: {threads.results}")
    assert sum(r["amount"] for r in at_gateway) == 15_000, "refunded at the gateway more than our refund: " + story
    assert len(at_gateway) == 1, story
    # Rule 7: the job claims the refund it sends, and the other replica skips it.
    sent = 2 - (slow.remaining or 0)
    assert sent == 1, f"both workers sent the refund to Razorpay ({sent} creations): the retry job does not claim it"
    for worker in workers:  # whatever was left for later is finished by the next rounds
        jobs.retry_refunds(worker.container)
    assert world.status("refunds", refund["id"]) == "SUCCEEDED", story
    assert world.row("payments", payment_id)["refunded_amount"] == 15_000
    assert len(world.events(payment_id, "PAYMENT_REFUNDED")) == 1
    assert len(sandbox_refunds(sandbox, gateway_payment_id)) == 1


def test_topup_retried_after_its_idempotency_lock_expired_charges_once_at_razorpay(
    world: World, sandbox: SandboxServer
) -> None:
    # The first request holds the key for 0.2 s only; Razorpay takes 1.5 s to create the order, so the
    # same request sent again 0.6 s later finds the key's lock expired and takes the request over while
    # the first one is still in flight.
    service = world.service(**razorpay_settings(sandbox), IDEMPOTENCY_LOCK_SECONDS=0.2)
    sandbox.sandbox.faults.add(FaultRule(mode="latency", latency_ms=1500, method="POST",
                                         path=r"^/razorpay/v1/orders$", remaining=2))
    user, key, body = "u_rzp_lock_expired", uuid.uuid4().hex, topup_body(30_000, "razorpay", "tok_rzp_success")
    barrier = threading.Barrier(2)
    threads = Threads()

    def first() -> Any:
        barrier.wait()
        return post_topup(service.client(), user, key, body)

    def second() -> Any:
        barrier.wait()
        time.sleep(0.6)
        return post_topup(service.client(), user, key, body)

    threads.start("first", first)
    threads.start("second", second)
    threads.join()
    assert not threads.errors, threads.errors
    answers = {name: (r.status_code, r.get_json()) for name, r in threads.results.items()}
    payment_ids = {a[1]["id"] for a in answers.values() if isinstance(a[1], dict) and "id" in a[1]}
    with world.engine.connect() as conn:
        payment_ids |= set(conn.execute(text("SELECT id FROM payments WHERE user_id = :u"), {"u": user}).scalars())
    assert len(payment_ids) == 1, answers
    [payment_id] = payment_ids

    store = sandbox.sandbox.store
    orders = store.find(lambda o: o.get("entity") == "order" and o.get("receipt") == payment_id)
    order_ids = {o["id"] for o in orders}
    captured = store.find(lambda o: o.get("entity") == "payment" and o.get("order_id") in order_ids
                          and o.get("status") in ("captured", "refunded"))
    story = (f"payment {payment_id}: {len(orders)} Razorpay order(s) {sorted(order_ids)}, captured payments "
             f"{[(p['id'], p['amount']) for p in captured]}; answers: {answers}")
    assert sum(p["amount"] for p in captured) - sum(p.get("amount_refunded", 0) for p in captured) <= 30_000, (
        "the customer was charged twice for one top-up: " + story
    )
    assert len(captured) <= 1, story
    assert len(orders) == 1, story
    if captured:
        assert world.status("payments", payment_id) == "CAPTURED", story
        assert len(world.events(payment_id, "PAYMENT_CAPTURED")) == 1, story


# --- 4. one bad record stops a sweep for everyone behind it --------------------------------------

ERRORS: dict[str, Callable[[], Exception]] = {
    "gateway_error": lambda: GatewayError("boom: the gateway answered something we cannot read", code="boom"),
    "unexpected_error": lambda: ValueError("boom: the gateway answered something we cannot read"),
}
NEEDLE = "boom"


@pytest.mark.parametrize("error", list(ERRORS))
def test_reconcile_resolves_the_others_when_one_payment_fails(world: World, error: str) -> None:
    gateway = FakeCardGateway("stripe")
    service = world.service({"stripe": gateway, "razorpay": FakeRazorpayGateway()}, RECONCILE_AFTER_SECONDS=0)
    body = topup_body(10_000, "stripe", "pm_card_visa")
    gateway.fail_next = 1  # the oldest: never charged
    bad = pending_payment_after_503(service, "u_sweep_r0", uuid.uuid4().hex, body)
    good = []
    for i in (1, 2):  # charged, but the responses were lost
        gateway.lose_next = 1
        good.append(pending_payment_after_503(service, f"u_sweep_r{i}", uuid.uuid4().hex, body))
    assert [world.status("payments", p) for p in (bad, *good)] == ["PENDING"] * 3
    gateway.broken[bad] = ERRORS[error]()

    started = utcnow_naive()
    charges_before = gateway.calls.count(("charge", bad))
    _resolved, escaped = run_job(jobs.reconcile, service.container)
    statuses = {p: world.status("payments", p) for p in (bad, *good)}
    assert [statuses[p] for p in good] == ["CAPTURED", "CAPTURED"], (
        f"payments behind {bad} were not resolved: {statuses}; the job raised {escaped!r}"
    )
    assert escaped is None, f"the reconcile job raised {escaped!r}"
    for p in (bad, *good):
        assert_money_accounted(world, gateway, p)
    replayed = gateway.calls.count(("charge", bad)) > charges_before
    if error == "gateway_error" and replayed and statuses[bad] == "FAILED":
        # Rule 8: the sweep replayed the charge with its key, and the gateway refused it: a GatewayError from
        # a charge is a definite answer (nothing was charged), so FAILED is a resolution, not a stuck record.
        return
    # A lookup error, or an unexpected exception, proves nothing: the payment stays open, at the back.
    assert statuses[bad] == "PENDING", statuses
    assert_sweep_bookkeeping(world, "payments", bad, started, NEEDLE)


@pytest.mark.parametrize("error", list(ERRORS))
def test_3ds_expiry_expires_the_others_when_one_payment_fails(world: World, error: str) -> None:
    gateway = FakeCardGateway("stripe")
    # A 3-D Secure wait of 0 s: every PENDING_3DS payment is due for expiry at once.
    service = world.service({"stripe": gateway, "razorpay": FakeRazorpayGateway()}, PENDING_3DS_TTL_SECONDS=0)
    body = topup_body(10_000, "stripe", "pm_card_threeDSecure2Required")
    ids = []
    for i in range(3):
        resp = post_topup(service.client(), f"u_sweep_e{i}", uuid.uuid4().hex, body)
        assert resp.status_code == 202 and resp.get_json()["status"] == "PENDING_3DS", resp.get_data(as_text=True)
        ids.append(resp.get_json()["id"])
    bad, good = ids[0], ids[1:]  # the oldest first in the expiry scan
    gateway.broken[bad] = ERRORS[error]()
    time.sleep(0.01)

    started = utcnow_naive()
    _expired, escaped = run_job(jobs.expire, service.container)
    statuses = {p: world.status("payments", p) for p in ids}
    assert [statuses[p] for p in good] == ["EXPIRED", "EXPIRED"], (
        f"payments behind {bad} were not expired: {statuses}; the job raised {escaped!r}"
    )
    assert escaped is None, f"the expiry job raised {escaped!r}"
    assert statuses[bad] == "PENDING_3DS", statuses
    assert_sweep_bookkeeping(world, "payments", bad, started, NEEDLE)


def test_3ds_expiry_whose_cancel_webhook_is_applied_first_still_expires(world: World) -> None:
    # The expiry sweep cancels at the gateway, and the gateway's payment_intent.canceled webhook reaches
    # the worker's applier while the sweep's call is still in flight: the applier (another thread, its
    # own transactions on MariaDB) lands it before the sweep records the expiry. CI met this order: the
    # payment ended FAILED and the wallet was told PAYMENT_FAILED for a 3-D Secure wait that ran out.
    gateway = FakeCardGateway("stripe")
    service = world.service({"stripe": gateway, "razorpay": FakeRazorpayGateway()}, PENDING_3DS_TTL_SECONDS=0)
    resp = post_topup(service.client(), "u_expiry_race", uuid.uuid4().hex,
                      topup_body(10_000, "stripe", "pm_card_threeDSecure2Required"))
    assert resp.status_code == 202, resp.get_data(as_text=True)
    payment_id = resp.get_json()["id"]
    cancel = gateway.cancel_charge
    applier = Threads()

    def cancel_then_webhook_applied(gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        result = cancel(gateway_payment_id, idempotency_key=idempotency_key)

        def deliver_and_apply() -> None:
            store_webhook(gateway.event_for(gateway_payment_id), service.container.uow_factory)
            jobs.apply_webhooks(service.container)

        applier.start("applier", deliver_and_apply)
        applier.join()  # the sweep's answer comes back only after the webhook is applied
        return result

    gateway.cancel_charge = cancel_then_webhook_applied  # type: ignore[method-assign]
    time.sleep(0.01)
    _expired, escaped = run_job(jobs.expire, service.container)
    assert escaped is None and not applier.errors, (escaped, applier.errors)
    row = world.row("payments", payment_id)
    assert (row["status"], row["failure_code"]) == ("EXPIRED", "expired"), row
    assert len(world.events(payment_id, "PAYMENT_EXPIRED")) == 1
    assert world.events(payment_id, "PAYMENT_FAILED") == []
    assert_money_accounted(world, gateway, payment_id)


@pytest.mark.parametrize("error", list(ERRORS))
def test_payout_poll_settles_the_others_when_one_withdrawal_fails(world: World, error: str) -> None:
    payouts = FakeRazorpayGateway()
    service = world.service({"stripe": FakeCardGateway("stripe"), "razorpay": payouts}, PAYOUT_POLL_AFTER_SECONDS=0)
    headers = world.api_key("withdrawals:write", "withdrawals:read")
    ids = []
    for i in range(3):
        body = {"user_id": f"u_sweep_w{i}", "amount": 50_000, "currency": "INR", "mode": "UPI",
                "beneficiary": {"name": "A Kumar", "vpa": f"akumar{i}@okbank"}}
        idem = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        resp = service.client().post("/withdrawals", json=body, headers=idem)
        assert resp.status_code == 202 and resp.get_json()["status"] == "PROCESSING", resp.get_data(as_text=True)
        ids.append(resp.get_json()["id"])
    bad, good = ids[0], ids[1:]  # the oldest first in the poll
    payouts.broken[bad] = ERRORS[error]()
    time.sleep(0.01)

    started = utcnow_naive()
    _moved, escaped = run_job(jobs.resolve_payouts, service.container)
    statuses = {w: world.status("withdrawal_requests", w) for w in ids}
    assert [statuses[w] for w in good] == ["SETTLED", "SETTLED"], (
        f"withdrawals behind {bad} were not settled: {statuses}; the job raised {escaped!r}"
    )
    assert escaped is None, f"the payout job raised {escaped!r}"
    assert statuses[bad] == "PROCESSING", statuses
    for w in good:
        assert len(world.events(w, "WITHDRAWAL_SETTLED")) == 1
    assert_sweep_bookkeeping(world, "withdrawal_requests", bad, started, NEEDLE)
