"""The SQL repositories on MariaDB: what goes in comes out, guards hold, and races have one winner.

Rows are set up through the repositories themselves inside a unit of work, and checked with plain
queries on a connection of the test's own, as cosmicpython's tests/integration do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import OperationalError

from payment_service.adapters.orm import OutboxEventRow, PaymentRow
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.domain import lifecycle
from payment_service.domain.payments import Payment
from tests.integration.adapters.conftest import THREADS
from tests.integration.adapters.records import card, later, now, payment, race, random_user, refund, withdrawal

UowFactory = Callable[[], SqlAlchemyUnitOfWork]


def store(uow_factory: UowFactory, *records: Any) -> None:
    with uow_factory() as uow:
        for r in records:
            {"Payment": uow.payments, "Refund": uow.refunds, "Withdrawal": uow.withdrawals}[type(r).__name__].add(r)
        uow.commit()


def outbox_types(engine: Engine, subject: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboxEventRow.event_type).where(OutboxEventRow.subject == subject)
                                 .order_by(OutboxEventRow.id)).scalars())


def a_captured_payment(uow_factory: UowFactory, amount: int = 10_000) -> Payment:
    p = payment("CAPTURED", amount=amount, gateway_payment_id=f"pi_{random_user()}", captured_at=now())
    store(uow_factory, p)
    return p


# --- the record repository: get, move, update, claim, claim_due, release, for each kind -----------


def a_record(uow_factory: UowFactory, kind: str) -> tuple[Any, Payment]:
    """A new record of this kind (not stored yet), and a captured payment (a refund's)."""
    p = a_captured_payment(uow_factory)
    return {lifecycle.PAYMENT: payment(), lifecycle.REFUND: refund(p), lifecycle.WITHDRAWAL: withdrawal()}[kind], p


@pytest.mark.parametrize("kind", [lifecycle.PAYMENT, lifecycle.REFUND, lifecycle.WITHDRAWAL])
def test_get_returns_the_record_as_stored(uow_factory: UowFactory, kind: str) -> None:
    record, _ = a_record(uow_factory, kind)
    record.next_attempt_at = later(30)
    store(uow_factory, record)
    with uow_factory() as uow:
        assert uow.records.get(kind, record.id) == record
        assert uow.records.get(kind, record.id, for_update=True) == record
        assert uow.records.get(kind, "nope_0000") is None


MOVES = [
    # kind, from, to, the event a move there writes (None: none)
    (lifecycle.PAYMENT, "PENDING", "CAPTURED", "PAYMENT_CAPTURED"),
    (lifecycle.PAYMENT, "PENDING", "PENDING_3DS", None),
    (lifecycle.REFUND, "PENDING", "SUCCEEDED", "PAYMENT_REFUNDED"),
    (lifecycle.WITHDRAWAL, "PROCESSING", "SETTLED", "WITHDRAWAL_SETTLED"),
    (lifecycle.WITHDRAWAL, "REQUESTED", "PROCESSING", None),
]
LIFECYCLES = {lifecycle.PAYMENT: lifecycle.PAYMENTS, lifecycle.REFUND: lifecycle.REFUNDS,
              lifecycle.WITHDRAWAL: lifecycle.WITHDRAWALS}


@pytest.mark.parametrize(("kind", "source", "target", "event"), MOVES)
def test_a_move_happens_once_with_its_event(engine: Engine, uow_factory: UowFactory, kind: str, source: str,
                                            target: str, event: str | None) -> None:
    record, p = a_record(uow_factory, kind)
    record.status = source
    record.claimed_until = later(60)
    store(uow_factory, record)
    subject = p.id if kind == lifecycle.REFUND else record.id  # a refund's event is about its payment
    move = LIFECYCLES[kind].move(record, target, now(), p, last_error=None)

    with uow_factory() as uow:
        assert uow.records.move(move)
        uow.commit()
    with uow_factory() as uow:
        assert not uow.records.move(move)  # the guard: the row is no longer in `source`
        uow.commit()

    with uow_factory() as uow:
        after = uow.records.get(kind, record.id)
    assert after.status == target and after.claimed_until is None  # a move ends the claim
    assert outbox_types(engine, subject) == ([event] if event else [])


def test_of_racing_moves_exactly_one_lands_and_writes_its_event(engine: Engine, uow_factory: UowFactory) -> None:
    p = payment("PENDING")
    store(uow_factory, p)

    def settle(i: int) -> bool:
        target = "CAPTURED" if i % 2 else "FAILED"  # a webhook and a sweep disagreeing, as it happens
        with uow_factory() as uow:
            moved = uow.records.move(lifecycle.PAYMENTS.move(p, target, now(), failure_code=None))
            uow.commit()
        return moved

    results = race(settle, THREADS)
    assert results.count(True) == 1, results
    with uow_factory() as uow:
        final = uow.records.get(lifecycle.PAYMENT, p.id)
    assert outbox_types(engine, p.id) == [{"CAPTURED": "PAYMENT_CAPTURED", "FAILED": "PAYMENT_FAILED"}[final.status]]


def test_update_changes_fields_but_not_the_status(uow_factory: UowFactory) -> None:
    w = withdrawal()
    store(uow_factory, w)
    with uow_factory() as uow:
        uow.records.update(lifecycle.WITHDRAWAL, w.id, gateway_payout_id="pout_1", fund_account_ref="fa_1")
        uow.commit()
    with uow_factory() as uow:
        after = uow.records.get(lifecycle.WITHDRAWAL, w.id)
    assert (after.status, after.gateway_payout_id, after.fund_account_ref) == ("REQUESTED", "pout_1", "fa_1")


@pytest.mark.parametrize("kind", [lifecycle.PAYMENT, lifecycle.REFUND, lifecycle.WITHDRAWAL])
def test_a_claim_is_held_until_it_expires(uow_factory: UowFactory, kind: str) -> None:
    record, _ = a_record(uow_factory, kind)
    store(uow_factory, record)
    t = now()
    statuses = {record.status}
    with uow_factory() as uow:
        assert not uow.records.claim(kind, record.id, {"NOT_THIS_ONE"}, t, later(60, t))  # wrong status
        assert uow.records.claim(kind, record.id, statuses, t, later(60, t))
        uow.commit()
    with uow_factory() as uow:
        assert not uow.records.claim(kind, record.id, statuses, later(59, t), later(120, t))  # still held
        assert uow.records.claim(kind, record.id, statuses, later(61, t), later(120, t))  # lapsed: taken
        uow.commit()
    with uow_factory() as uow:
        assert uow.records.get(kind, record.id).claimed_until == later(120, t)


def test_of_racing_claims_exactly_one_wins(uow_factory: UowFactory) -> None:
    p = payment("PENDING")
    store(uow_factory, p)

    def claim(_: int) -> bool:
        with uow_factory() as uow:
            got = uow.records.claim(lifecycle.PAYMENT, p.id, {"PENDING"}, now(), later(60))
            uow.commit()
        return got

    assert race(claim, THREADS).count(True) == 1


@pytest.mark.usefixtures("empty_queues")
def test_claim_due_takes_due_unheld_records_earliest_first(uow_factory: UowFactory) -> None:
    t = now()
    due = [withdrawal(next_attempt_at=t - timedelta(minutes=m)) for m in (1, 3, 2)]
    not_yet = withdrawal(next_attempt_at=later(60, t))
    held = withdrawal(next_attempt_at=t - timedelta(minutes=5), claimed_until=later(30, t))
    lapsed = withdrawal(next_attempt_at=t - timedelta(minutes=4), claimed_until=t - timedelta(seconds=1))
    settled = withdrawal("SETTLED", next_attempt_at=t - timedelta(minutes=9))
    store(uow_factory, *due, not_yet, held, lapsed, settled)

    with uow_factory() as uow:
        batch = uow.records.claim_due(lifecycle.WITHDRAWAL, {"REQUESTED", "PROCESSING"}, t, later(60, t), limit=3)
        uow.commit()
    assert [w.id for w in batch] == [lapsed.id, due[1].id, due[2].id]
    assert all(w.claimed_until == later(60, t) for w in batch)
    with uow_factory() as uow:
        rest = uow.records.claim_due(lifecycle.WITHDRAWAL, {"REQUESTED", "PROCESSING"}, t, later(60, t), limit=10)
        stored = uow.records.get(lifecycle.WITHDRAWAL, lapsed.id)
        uow.commit()
    assert [w.id for w in rest] == [due[0].id]  # the batch above is held now; held, not_yet, settled never
    assert stored.claimed_until == later(60, t)


@pytest.mark.usefixtures("empty_queues")
def test_two_sweeps_claiming_at_once_share_nothing(uow_factory: UowFactory) -> None:
    t = now()
    rows = [withdrawal(next_attempt_at=t - timedelta(seconds=i)) for i in range(1, 11)]
    store(uow_factory, *rows)
    both_claimed = threading.Barrier(2)

    def sweep(_: int) -> set[str]:
        with uow_factory() as uow:
            batch = uow.records.claim_due(lifecycle.WITHDRAWAL, {"REQUESTED"}, t, later(60, t), limit=5)
            # Both transactions hold their row locks at once: SKIP LOCKED, not waiting, is what lets the
            # second one through (waiting would time out here).
            both_claimed.wait(timeout=20)
            uow.commit()
        return {w.id for w in batch}

    first, second = race(sweep, 2)
    assert isinstance(first, set) and isinstance(second, set), (first, second)
    assert len(first) == len(second) == 5 and not first & second
    assert first | second == {w.id for w in rows}


def test_release_gives_the_claim_back_with_when_and_why(uow_factory: UowFactory) -> None:
    r = withdrawal(claimed_until=later(60), attempts=2)
    store(uow_factory, r)
    retry_at = later(300)
    with uow_factory() as uow:
        uow.records.release(lifecycle.WITHDRAWAL, r.id, next_attempt_at=retry_at, error="gateway unavailable")
        uow.commit()
    with uow_factory() as uow:
        once = uow.records.get(lifecycle.WITHDRAWAL, r.id)
        uow.records.release(lifecycle.WITHDRAWAL, r.id, next_attempt_at=retry_at, count_attempt=False)
        uow.commit()
    with uow_factory() as uow:
        twice = uow.records.get(lifecycle.WITHDRAWAL, r.id)
    assert (once.claimed_until, once.next_attempt_at, once.last_error, once.attempts) == (
        None, retry_at, "gateway unavailable", 3)
    assert (twice.last_error, twice.attempts) == (None, 3)


# --- payments ------------------------------------------------------------------------------


def test_payments_list_newest_first_in_pages_without_gaps_or_repeats(uow_factory: UowFactory) -> None:
    user, t = random_user(), now()
    # Pairs share a created_at: the cursor must order ties by id.
    mine = [payment(user_id=user, at=t - timedelta(seconds=i // 2)) for i in range(7)]
    mine[0].status = "CAPTURED"
    store(uow_factory, *mine, payment(user_id=random_user(), at=t))
    seen, cursor = [], None
    with uow_factory() as uow:
        while True:
            page = uow.payments.list_for_user(user, None, 3, cursor)
            seen += [p.id for p in page.items]
            if (cursor := page.next_cursor) is None:
                break
        captured = uow.payments.list_for_user(user, "CAPTURED", 10, None)
    expected = sorted(mine, key=lambda p: (p.created_at, p.id), reverse=True)
    assert seen == [p.id for p in expected]
    assert [p.id for p in captured.items] == [mine[0].id] and captured.next_cursor is None


def test_velocity_counts_attempts_and_only_money_that_may_move(uow_factory: UowFactory) -> None:
    user, t = random_user(), now()
    rows = [payment(s, user_id=user, amount=a, at=t) for s, a in
            (("CAPTURED", 100), ("PENDING", 200), ("PENDING_3DS", 400), ("FAILED", 800), ("EXPIRED", 1600))]
    old = payment("CAPTURED", user_id=user, amount=3200, at=t - timedelta(hours=2))
    store(uow_factory, *rows, old)
    with uow_factory() as uow:
        assert uow.payments.velocity(user, t - timedelta(hours=1)) == (5, 700)
        assert uow.payments.velocity(random_user(), t - timedelta(hours=1)) == (0, 0)


def test_a_device_is_known_once_it_captured(uow_factory: UowFactory) -> None:
    user = random_user()
    store(uow_factory, payment("FAILED", user_id=user, device_id="dev-1"),
          payment("CAPTURED", user_id=user, device_id="dev-2"))
    with uow_factory() as uow:
        assert not uow.payments.device_seen(user, "dev-1")
        assert uow.payments.device_seen(user, "dev-2")
        assert not uow.payments.device_seen(random_user(), "dev-2")


def test_find_by_gateway_id(uow_factory: UowFactory) -> None:
    p = a_captured_payment(uow_factory)
    with uow_factory() as uow:
        assert uow.payments.find_by_gateway_id("stripe", p.gateway_payment_id) == p
        assert uow.payments.find_by_gateway_id("razorpay", p.gateway_payment_id) is None


def test_concurrent_refund_reservations_never_exceed_the_capture(engine: Engine, uow_factory: UowFactory) -> None:
    p = a_captured_payment(uow_factory, amount=10_000)

    def reserve(_: int) -> bool:
        with uow_factory() as uow:
            ok = uow.payments.reserve_refund(p.id, 3_000, now())
            uow.commit()
        return ok

    assert race(reserve, THREADS).count(True) == 3
    with uow_factory() as uow:
        uow.payments.release_refund(p.id, 3_000, now())
        uow.payments.release_refund(p.id, 50_000, now())  # more than reserved: refused by the guard
        uow.commit()
    with engine.connect() as conn:
        assert conn.execute(select(PaymentRow.refunded_amount).where(PaymentRow.id == p.id)).scalar_one() == 6_000


def test_only_a_captured_payment_reserves(uow_factory: UowFactory) -> None:
    p = payment("PENDING")
    store(uow_factory, p)
    with uow_factory() as uow:
        assert not uow.payments.reserve_refund(p.id, 1, now())


def test_get_for_update_holds_the_row_until_commit(engine: Engine, uow_factory: UowFactory) -> None:
    p = payment()
    store(uow_factory, p)
    with uow_factory() as holder:
        holder.payments.get(p.id, for_update=True)
        with uow_factory() as other:
            other.session.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
            with pytest.raises(OperationalError, match="Lock wait timeout"):
                other.payments.get(p.id, for_update=True)
        holder.commit()
    with uow_factory() as other:
        assert other.payments.get(p.id, for_update=True) == p


# --- refunds, withdrawals, saved cards, gateway customers --------------------------------------


def test_refunds_by_id_by_gateway_id_and_per_payment_oldest_first(uow_factory: UowFactory) -> None:
    p = a_captured_payment(uow_factory)
    first = refund(p, gateway_refund_id=f"re_{random_user()}")
    second = refund(p, amount=500)
    second.created_at = first.created_at + timedelta(seconds=1)
    store(uow_factory, second, first)
    with uow_factory() as uow:
        assert uow.refunds.get(first.id) == first
        assert uow.refunds.find_by_gateway_id(first.gateway_refund_id) == first
        assert uow.refunds.find_by_gateway_id("re_unknown") is None
        assert [r.id for r in uow.refunds.list_for_payment(p.id)] == [first.id, second.id]


def test_withdrawals_by_id_and_by_payout_id_with_only_the_last_four_digits(engine: Engine,
                                                                          uow_factory: UowFactory) -> None:
    w = withdrawal(gateway_payout_id=f"pout_{random_user()}")
    store(uow_factory, w)
    with uow_factory() as uow:
        assert uow.withdrawals.get(w.id) == w
        assert uow.withdrawals.get(w.id, for_update=True) == w
        assert uow.withdrawals.find_by_gateway_id(w.gateway_payout_id) == w
        assert uow.withdrawals.get("wd_nope") is None
    with engine.connect() as conn:
        columns = conn.execute(text("SELECT * FROM withdrawal_requests WHERE id = :id"), {"id": w.id}).mappings().one()
    assert columns["account_last4"] == "1234" and not any(k.startswith("account_number") for k in columns)


def test_saved_cards_listed_newest_first_until_soft_deleted(uow_factory: UowFactory) -> None:
    user, t = random_user(), now()
    old, new = card(user, at=t - timedelta(days=1)), card(user, at=t)
    with uow_factory() as uow:
        for m in (old, new, card(random_user())):
            uow.payment_methods.add(m)
        uow.commit()
    with uow_factory() as uow:
        assert uow.payment_methods.get(old.id) == old
        assert [m.id for m in uow.payment_methods.list_active(user)] == [new.id, old.id]
        assert uow.payment_methods.soft_delete(old.id, t)
        assert not uow.payment_methods.soft_delete(old.id, t)  # once
        uow.commit()
    with uow_factory() as uow:
        assert [m.id for m in uow.payment_methods.list_active(user)] == [new.id]
        assert uow.payment_methods.get(old.id).deleted_at == t  # kept, marked


def test_racing_customer_creations_agree_on_one_customer(uow_factory: UowFactory) -> None:
    user = random_user()

    def create(i: int) -> str:
        with uow_factory() as uow:
            ref = uow.customers.add(user, "stripe", f"cus_{i}", now())
            uow.commit()
        return ref

    results = race(create, THREADS)
    assert len(set(results)) == 1 and str(results[0]).startswith("cus_"), results
    with uow_factory() as uow:
        assert uow.customers.get(user, "stripe") == results[0]
        assert uow.customers.get(user, "razorpay") is None
