"""Issue 15, the worker keeps up: on MariaDB, with real `Worker`s (the webhook appliers and the sweeps
as `payment-service worker` runs them), each with its own container and connection pool, like two
replicas. The gateway is a thread-safe fake that counts every call and can be slow.

Races run as races; the assertions read what the database holds afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, text

from config import load_settings
from localparts.mariadb import create_database_at, drop_database_at
from payment_service.adapters import migrate
from payment_service.adapters.orm import GatewayEventRow, PaymentRow
from payment_service.bootstrap import Container, bootstrap
from payment_service.gateways.base import (
    CardDetails,
    ChargeResult,
    ChargeStatus,
    PayoutResult,
    RefundResult,
    WebhookEvent,
)
from payment_service.services.webhooks import store_webhook
from payment_service.worker import jobs
from payment_service.worker.jobs import Worker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

VISA = CardDetails("visa", "4242", 12, 2030, "US", "424242", "fp_visa")


class CountingGateway:
    """Stripe-like enough for the worker: cancels (optionally slow), counted per charge and watched for
    how many are in flight at once; events read back from {"charge": {...}} payloads, each event id
    remembered, so a test can tell which worker parsed which event."""

    def __init__(self, name: str = "stripe", latency: float = 0.0) -> None:
        self.name = name
        self.latency = latency
        self.lock = threading.Lock()
        self.cancels: Counter[str] = Counter()
        self.parsed: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def cancel_charge(self, gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.latency)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.cancels[gateway_payment_id] += 1
        return ChargeResult(ChargeStatus.CANCELED, gateway_payment_id)

    def retrieve_charge(self, gateway_payment_id: str) -> ChargeResult:
        return ChargeResult(ChargeStatus.CANCELED, gateway_payment_id)

    def charge_result_from_event(self, event: WebhookEvent) -> ChargeResult | None:
        c = event.payload.get("charge")
        if c is None:
            return None
        with self.lock:
            self.parsed.append(event.event_id)
        return ChargeResult(ChargeStatus(c["status"]), c.get("id"), amount=c.get("amount"), card=VISA,
                            reference=c.get("reference"))

    def refund_result_from_event(self, event: WebhookEvent) -> RefundResult | None:
        return None

    def payout_result_from_event(self, event: WebhookEvent) -> PayoutResult | None:
        return None


# --- the database and the workers on it ----------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[tuple[str, Engine]]:
    """A new, migrated database for this test alone."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database_at(database_url, name)
    migrate.upgrade(url)
    engine = create_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        drop_database_at(database_url, name)


def make_container(url: str, gateway: CountingGateway, **overrides: Any) -> Container:
    settings = load_settings(env={}, DATABASE_URL=url, LOG_LEVEL="WARNING", LOG_FORMAT="text", **overrides)
    container = bootstrap(settings)
    container.gateway_overrides = {"stripe": gateway}
    return container


class Workers:
    """Workers started on the test's database; every one is stopped at the end, whatever happened."""

    def __init__(self) -> None:
        self.running: list[tuple[Worker, Container]] = []

    def start(self, url: str, gateway: CountingGateway, **overrides: Any) -> Worker:
        container = make_container(url, gateway, **overrides)
        worker = Worker(container)
        worker.start()
        self.running.append((worker, container))
        return worker

    def stop_all(self) -> None:
        for worker, container in self.running:
            worker.shutdown(wait=True)
            container.close()
        self.running.clear()


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers()
    try:
        yield w
    finally:
        w.stop_all()


def utcnow() -> datetime:
    return datetime.now(UTC)


def seed_3ds_payments(engine: Engine, n: int, *, due_for_expiry: bool, prefix: str) -> list[str]:
    """`n` PENDING_3DS payments at the (fake) Stripe, charge `pi_<id>`; due for expiry now, or in 15 min."""
    t = utcnow()
    expires = t - timedelta(seconds=1) if due_for_expiry else t + timedelta(minutes=15)
    rows = [
        {"id": f"pay_{prefix}{i:06d}", "user_id": f"u_{prefix}{i}", "amount": 5000, "currency": "INR",
         "gateway": "stripe", "status": "PENDING_3DS", "created_at": t, "updated_at": t,
         "gateway_payment_id": f"pi_{prefix}{i:06d}", "next_action_url": "https://sandbox/3ds",
         "expires_at": expires, "next_attempt_at": expires, "attempts": 0, "refunded_amount": 0}
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(insert(PaymentRow.__table__), rows)  # type: ignore[arg-type]
    return [r["id"] for r in rows]


def success_event(payment_id: str, event_id: str | None = None) -> WebhookEvent:
    gid = payment_id.replace("pay_", "pi_")
    return WebhookEvent("stripe", event_id or f"evt_{payment_id}", "payment_intent.succeeded", gid, payment_id,
                        {"charge": {"status": "succeeded", "id": gid, "amount": 5000, "reference": payment_id}})


def seed_events(engine: Engine, events: list[WebhookEvent], *, status: str = "RECEIVED") -> None:
    import json

    t = utcnow()
    rows = [
        {"gateway": e.gateway, "gateway_event_id": e.event_id, "event_type": e.type, "object_id": e.object_id,
         "reference": e.reference, "payload": json.dumps(e.payload), "status": status,
         "attempts": 0 if status == "RECEIVED" else 1, "next_attempt_at": t - timedelta(seconds=1),
         "received_at": t}
        for e in events
    ]
    with engine.begin() as conn:
        for i in range(0, len(rows), 1000):
            conn.execute(insert(GatewayEventRow.__table__), rows[i:i + 1000])  # type: ignore[arg-type]


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def outbox_types_by_subject(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT subject, event_type FROM outbox_events ORDER BY id")).all()
    out: dict[str, list[str]] = {}
    for subject, event_type in rows:
        out.setdefault(subject, []).append(event_type)
    return out


# --- fresh events are never starved by retries --------------------------------------------------


def test_a_fresh_3ds_completion_is_applied_within_a_second_while_retries_flood(db, workers) -> None:
    url, engine = db
    # 5,000 events that carry an id of ours we do not hold (another deployment on the same Stripe
    # account, say), all due for a retry at once.
    ghosts = [success_event(f"pay_ghost{i:06d}", f"evt_ghost_{i}") for i in range(5000)]
    seed_events(engine, ghosts, status="RETRY")
    gateway = CountingGateway()
    workers.start(url, gateway)
    wait_for(lambda: len(gateway.parsed) >= 200, timeout=30, what="the worker chewing on the retries")

    (payment_id,) = seed_3ds_payments(engine, 1, due_for_expiry=False, prefix="fresh")
    container = make_container(url, gateway)
    try:
        started = time.monotonic()
        assert store_webhook(success_event(payment_id), container.uow_factory)  # the customer completed 3DS
        wait_for(lambda: scalar(engine, "SELECT status FROM payments WHERE id = :p", p=payment_id) == "CAPTURED",
                 timeout=10, interval=0.01, what="the 3-D Secure completion applied")
        elapsed = time.monotonic() - started
    finally:
        container.close()
    retries_left = scalar(engine, "SELECT COUNT(*) FROM gateway_events WHERE status IN ('RETRY', 'PROCESSING') "
                                  "AND next_attempt_at <= UTC_TIMESTAMP(6)")
    assert elapsed < 1.0, f"applied {elapsed:.2f} s after it was stored, behind {retries_left} due retries"
    assert retries_left > 0, "the flood was over before the fresh event came: the test proved nothing"
    assert outbox_types_by_subject(engine)[payment_id] == ["PAYMENT_CAPTURED"]


# --- two workers share the work, never the same piece of it ---------------------------------------


def test_two_workers_never_apply_the_same_event_nor_cancel_the_same_payment_twice(db, workers) -> None:
    url, engine = db
    with_events = seed_3ds_payments(engine, 1000, due_for_expiry=False, prefix="a")
    stale = seed_3ds_payments(engine, 600, due_for_expiry=True, prefix="b")
    both = seed_3ds_payments(engine, 200, due_for_expiry=True, prefix="c")  # a success racing the expiry
    not_ours = [WebhookEvent("stripe", f"evt_foreign_{i}", "payment_intent.succeeded", f"pi_foreign{i}", None,
                             {"charge": {"status": "succeeded", "id": f"pi_foreign{i}", "amount": 1}})
                for i in range(300)]
    seed_events(engine, [success_event(p) for p in with_events + both] + not_ours)

    gateways = [CountingGateway(), CountingGateway()]
    settings = {"SWEEP_CONCURRENCY": 8, "SWEEP_BATCH_SIZE": 50, "WORKER_EXPIRY_INTERVAL_SECONDS": 0.2,
                "WEBHOOK_BATCH_SIZE": 50}
    barrier = threading.Barrier(2)
    starters = [threading.Thread(target=lambda g=g: (barrier.wait(), workers.start(url, g, **settings)))
                for g in gateways]
    for t in starters:
        t.start()
    for t in starters:
        t.join(30)

    def settled() -> bool:
        return scalar(engine, "SELECT COUNT(*) FROM gateway_events WHERE status IN ('RECEIVED','RETRY','PROCESSING')") \
            == 0 and scalar(engine, "SELECT COUNT(*) FROM payments WHERE status = 'PENDING_3DS' AND expires_at < "
                                    "UTC_TIMESTAMP(6)") == 0

    wait_for(settled, timeout=120, interval=0.2, what="every event applied and every stale payment expired")
    workers.stop_all()

    # Every event was claimed once, by one worker, and settled.
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT gateway_event_id, status, attempts FROM gateway_events")).all()
    assert {r.attempts for r in rows} == {1}, Counter(r.attempts for r in rows)
    statuses = Counter(r.status for r in rows)
    assert statuses["NOT_OURS"] == 300 and statuses["APPLIED"] + statuses["IGNORED"] == 1200, statuses
    parsed = [Counter(g.parsed) for g in gateways]
    assert all(n == 1 for p in parsed for n in p.values()), "a worker parsed an event twice"
    assert not set(parsed[0]) & set(parsed[1]), "both workers applied the same event"
    assert parsed[0] and parsed[1], f"one worker did all the work: {[len(p) for p in parsed]}"

    # Every stale payment was cancelled at the gateway at most once, and each payment has one outcome.
    cancels = gateways[0].cancels + gateways[1].cancels
    assert all(n == 1 for n in cancels.values()), [g for g, n in cancels.items() if n > 1][:5]
    assert all(cancels[p.replace("pay_", "pi_")] == 1 for p in stale)
    assert gateways[0].cancels and gateways[1].cancels, "one worker did all the expiries"
    outcomes = outbox_types_by_subject(engine)
    assert all(outcomes.get(p) == ["PAYMENT_CAPTURED"] for p in with_events)
    assert all(outcomes.get(p) == ["PAYMENT_EXPIRED"] for p in stale)
    assert all(outcomes.get(p) in (["PAYMENT_CAPTURED"], ["PAYMENT_EXPIRED"]) for p in both), \
        [outcomes.get(p) for p in both][:5]


# --- sweeps drain their backlog, in parallel, and stop at once ------------------------------------


def test_a_sweep_drains_its_backlog_with_its_gateway_calls_in_parallel(db) -> None:
    url, engine = db
    stale = seed_3ds_payments(engine, 300, due_for_expiry=True, prefix="d")
    gateway = CountingGateway(latency=0.05)
    container = make_container(url, gateway, SWEEP_CONCURRENCY=16, SWEEP_BATCH_SIZE=40)
    try:
        started = time.monotonic()
        expired = jobs.expire(container)  # one run of the job, as the scheduler starts it
        elapsed = time.monotonic() - started
    finally:
        container.close()
    assert expired == 300, "one run drains every due payment, batch after batch"
    assert scalar(engine, "SELECT COUNT(*) FROM payments WHERE status = 'EXPIRED'") == len(stale)
    # One after the other, 300 cancels of 50 ms are 15 s.
    assert elapsed < 6, f"{elapsed:.1f} s"
    assert 8 <= gateway.max_in_flight <= 16, gateway.max_in_flight


def test_a_stopping_worker_stops_its_sweep_at_once_and_gives_back_what_it_did_not_start(db, workers) -> None:
    url, engine = db
    seed_3ds_payments(engine, 400, due_for_expiry=True, prefix="e")
    gateway = CountingGateway(latency=0.3)
    worker = workers.start(url, gateway, SWEEP_CONCURRENCY=4, SWEEP_BATCH_SIZE=100,
                           WORKER_EXPIRY_INTERVAL_SECONDS=0.1)
    wait_for(lambda: sum(gateway.cancels.values()) >= 8, timeout=30, what="the expiry sweep under way")
    started = time.monotonic()
    worker.shutdown(wait=True)
    elapsed = time.monotonic() - started
    # Only the calls in flight (4 of 300 ms) are waited for.
    assert elapsed < 1.5, f"the worker took {elapsed:.1f} s to stop"
    cancelled = sum(gateway.cancels.values())
    assert cancelled < 400
    assert scalar(engine, "SELECT COUNT(*) FROM payments WHERE status = 'EXPIRED'") == cancelled
    # What was claimed and not started is free again, due at once, its attempt not counted.
    assert scalar(engine, "SELECT COUNT(*) FROM payments WHERE claimed_until IS NOT NULL") == 0
    assert scalar(engine, "SELECT COUNT(*) FROM payments WHERE status = 'PENDING_3DS' AND attempts = 0 "
                          "AND next_attempt_at <= UTC_TIMESTAMP(6)") == 400 - cancelled


# --- what the on-call person sees ------------------------------------------------------------------


def test_the_inbox_metrics_show_the_backlog_the_not_ours_and_what_needs_a_person(db) -> None:
    from payment_service.adapters.webhook_metrics import WebhookInboxCollector

    url, engine = db
    (payment_id,) = seed_3ds_payments(engine, 1, due_for_expiry=False, prefix="m")
    foreign = [WebhookEvent("stripe", f"evt_f{i}", "payment_intent.succeeded", f"pi_f{i}", None,
                            {"charge": {"status": "succeeded", "id": f"pi_f{i}"}}) for i in range(3)]
    seed_events(engine, [success_event(payment_id), *foreign])
    seed_events(engine, [success_event("pay_ghost", "evt_ghost")], status="RETRY")
    container = make_container(url, CountingGateway(), WEBHOOK_RETRY_FOR_SECONDS=0)  # surfaced at once
    try:
        jobs.apply_webhooks(container)
        seed_events(engine, [success_event("pay_later", "evt_later")])  # not tried yet
        families = {f.name: f for f in WebhookInboxCollector(lambda: engine).collect()}
    finally:
        container.close()

    def value(name: str, **labels: str) -> float:
        return next(s.value for s in families[name].samples if s.labels == labels)

    assert value("payment_webhook_events_settled_recently", outcome="NOT_OURS") == 3
    assert value("payment_webhook_events_settled_recently", outcome="APPLIED") == 1
    assert value("payment_webhook_events_failed") == 1
    assert value("payment_webhook_events_waiting", status="RECEIVED") == 1
    assert value("payment_webhook_events_waiting", status="RETRY") == 0
    assert 0 < value("payment_webhook_oldest_unapplied_seconds") < 60
