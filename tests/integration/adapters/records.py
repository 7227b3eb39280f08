"""Builders for the adapter tests: records with random ids, a race of threads behind a barrier, and what a
commit left in the tables (read on a connection of their own)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from payment_service.adapters.orm import OutboxEventRow, PaymentRow
from payment_service.domain import ids
from payment_service.domain.payments import InboxEvent, Payment, PaymentMethod, Refund
from payment_service.domain.withdrawals import Withdrawal


def now() -> datetime:
    # DATETIME(6) keeps microseconds, so what goes in comes back equal.
    return datetime.now(UTC)


def random_user() -> str:
    return f"u_{uuid.uuid4().hex[:12]}"


def payment(status: str = "PENDING", *, user_id: str | None = None, amount: int = 10_000, at: datetime | None = None,
            **fields: Any) -> Payment:
    t = at or now()
    return Payment(id=ids.new_id(ids.PAYMENT), user_id=user_id or random_user(), amount=amount, currency="INR",
                   gateway="stripe", status=status, created_at=t, updated_at=t, **fields)


def refund(p: Payment, status: str = "PENDING", *, amount: int = 1_000, **fields: Any) -> Refund:
    t = now()
    return Refund(id=ids.new_id(ids.REFUND), payment_id=p.id, user_id=p.user_id, amount=amount, currency=p.currency,
                  status=status, created_at=t, updated_at=t, **fields)


def withdrawal(status: str = "REQUESTED", *, amount: int = 50_000, **fields: Any) -> Withdrawal:
    t = now()
    return Withdrawal(id=ids.new_id(ids.WITHDRAWAL), user_id=random_user(), amount=amount, currency="INR",
                      mode="IMPS", status=status, beneficiary_name="Asha Rao", created_at=t, updated_at=t,
                      account_last4="1234", ifsc="HDFC0001234", **fields)


def card(user_id: str, *, at: datetime | None = None) -> PaymentMethod:
    # The gateway's public test card, as a token reference and its last four digits: never the number.
    return PaymentMethod(id=ids.new_id(ids.PAYMENT_METHOD), user_id=user_id, gateway="stripe",
                         gateway_customer_ref="cus_test", gateway_token=f"pm_{uuid.uuid4().hex[:14]}",
                         brand="visa", last4="4242", created_at=at or now(), exp_month=12, exp_year=2034, country="US")


def inbox_event(status: str = "RECEIVED", *, due: datetime | None = None, attempts: int = 0,
                gateway: str = "stripe") -> InboxEvent:
    t = now()
    return InboxEvent(id=0, gateway=gateway, gateway_event_id=f"evt_{uuid.uuid4().hex}", event_type="charge.succeeded",
                      payload='{"id": "evt"}', status=status, attempts=attempts, next_attempt_at=due or t,
                      received_at=t, object_id=f"pi_{uuid.uuid4().hex[:10]}")


def later(seconds: float, at: datetime | None = None) -> datetime:
    return (at or now()) + timedelta(seconds=seconds)


def race(fn: Callable[[int], Any], n: int) -> list[Any]:
    """fn(i) in n threads released together by a barrier; each one's result or exception, in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"race-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{t.name} still running after 60 s"
    return results


def stored_payment_ids(engine: Engine, *ids: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(PaymentRow.id).where(PaymentRow.id.in_(ids))).scalars())


def outbox_rows(engine: Engine, subject: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(OutboxEventRow.event_type, OutboxEventRow.payload).where(OutboxEventRow.subject == subject))]
