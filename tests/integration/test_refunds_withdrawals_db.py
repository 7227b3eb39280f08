"""Refunds and withdrawals on the real database (MariaDB): races run as races, with real threads and a
barrier, and the assertions are on what the database holds afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from payment_service.adapters import migrate
from payment_service.adapters.orm import OutboxEventRow, PaymentRow, RefundRow, WithdrawalRequestRow
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.bootstrap import make_engine
from payment_service.domain import ids
from payment_service.domain.errors import RefundExceedsCaptured
from payment_service.domain.lifecycle import WITHDRAWALS
from payment_service.domain.payments import Payment, Refund
from payment_service.domain.withdrawals import Withdrawal
from payment_service.gateways.base import PayoutResult, PayoutStatus, RefundResult, RefundStatus
from payment_service.services import refunds, withdrawals
from tests.unit.fakes import run_flow

pytestmark = pytest.mark.integration

THREADS = 20


@pytest.fixture(scope="module")
def engine(fresh_database_url: str) -> Iterator[Engine]:
    migrate.upgrade(fresh_database_url)
    eng = make_engine(fresh_database_url, pool_size=THREADS + 5)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def uow_factory(engine: Engine) -> Callable[[], SqlAlchemyUnitOfWork]:
    factory = sessionmaker(engine, expire_on_commit=False)
    return lambda: SqlAlchemyUnitOfWork(factory)


class RefundingGateway:
    """Refunds succeed, slowly enough that requests overlap; thread-safe; remembers results by key."""

    name = "stripe"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, RefundResult] = {}

    def refund(self, gateway_payment_id, amount, currency, *, reference, idempotency_key) -> RefundResult:
        time.sleep(0.01)
        with self.lock:
            if idempotency_key not in self.by_key:
                self.by_key[idempotency_key] = RefundResult(f"re_gw_{reference}", RefundStatus.SUCCEEDED, amount)
            return self.by_key[idempotency_key]


def captured(uow_factory, amount: int = 10_000) -> Payment:
    t = datetime.now(UTC)
    p = Payment(id=ids.new_id("pay"), user_id="u_race", amount=amount, currency="INR", gateway="stripe",
                status="CAPTURED", created_at=t, updated_at=t, gateway_payment_id="pi_" + ids.new_id("x"),
                captured_at=t)
    with uow_factory() as uow:
        uow.payments.add(p)
        uow.commit()
    return p


def race(fn: Callable[[int], Any], n: int = THREADS) -> list[Any]:
    """Run fn(i) in n threads that all start at once; returns each result or exception."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def db_state(engine: Engine, payment_id: str) -> tuple[int, dict[str, int], list[str]]:
    with engine.connect() as conn:
        refunded = conn.execute(select(PaymentRow.refunded_amount).where(PaymentRow.id == payment_id)).scalar_one()
        sums = dict(conn.execute(select(RefundRow.status, func.sum(RefundRow.amount))
                                 .where(RefundRow.payment_id == payment_id).group_by(RefundRow.status)).all())
        events = list(conn.execute(select(OutboxEventRow.payload).where(
            OutboxEventRow.subject == payment_id, OutboxEventRow.event_type == "PAYMENT_REFUNDED")).scalars())
    return int(refunded), {k: int(v) for k, v in sums.items()}, events


def test_concurrent_partial_refunds_never_exceed_the_capture(engine, uow_factory) -> None:
    p = captured(uow_factory)
    gw = RefundingGateway()

    def one(_: int) -> Refund:
        cmd = refunds.RefundPayment(payment_id=p.id, amount=700)
        return run_flow(refunds.RefundFlow(cmd, {"stripe": gw}, refunds.RefundSettings()), uow_factory)

    results = race(one)
    ok = [r for r in results if isinstance(r, Refund)]
    refused = [r for r in results if isinstance(r, RefundExceedsCaptured)]
    assert len(ok) == 14 and len(refused) == 6, results  # 14 x 700 = 9800 <= 10000 < 15 x 700
    assert all(r.status == "SUCCEEDED" for r in ok)
    refunded, sums, events = db_state(engine, p.id)
    assert refunded == 9800 and sums == {"SUCCEEDED": 9800}
    assert len(events) == 14 and len({e for e in events}) == 14


def test_concurrent_full_refunds_only_one_wins(engine, uow_factory) -> None:
    p = captured(uow_factory, 5000)
    gw = RefundingGateway()

    def one(_: int) -> Refund:
        cmd = refunds.RefundPayment(payment_id=p.id)
        return run_flow(refunds.RefundFlow(cmd, {"stripe": gw}, refunds.RefundSettings()), uow_factory)

    results = race(one)
    assert len([r for r in results if isinstance(r, Refund)]) == 1
    assert all(isinstance(r, Refund | RefundExceedsCaptured) for r in results), results
    refunded, sums, events = db_state(engine, p.id)
    assert refunded == 5000 and sums == {"SUCCEEDED": 5000} and len(events) == 1


def test_the_sql_guard_alone_holds_without_the_row_lock(engine, uow_factory) -> None:
    p = captured(uow_factory)

    def reserve(_: int) -> bool:
        with uow_factory() as uow:
            ok = uow.payments.reserve_refund(p.id, 700, datetime.now(UTC))
            uow.commit()
        return ok

    results = race(reserve)
    assert results.count(True) == 14 and results.count(False) == 6
    assert db_state(engine, p.id)[0] == 9800


def test_racing_paths_finish_a_refund_once(engine, uow_factory) -> None:
    # The request's own answer, the webhook and the worker all apply SUCCEEDED at the same moment.
    p = captured(uow_factory)
    t = datetime.now(UTC)
    r = Refund(id=ids.new_id("re"), payment_id=p.id, user_id=p.user_id, amount=4000, currency="INR",
               status="PENDING", created_at=t, updated_at=t)
    with uow_factory() as uow:
        assert uow.payments.reserve_refund(p.id, 4000, t)
        uow.refunds.add(r)
        uow.commit()
    result = RefundResult("re_gw_race", RefundStatus.SUCCEEDED, 4000)
    def apply(_: int) -> Refund:
        with uow_factory() as uow:
            after = refunds.apply_refund_result(uow, r, result, datetime.now(UTC), refunds.RefundSettings())
            uow.commit()
        return after

    outcomes = race(apply, n=10)
    assert all(isinstance(o, Refund) and o.status == "SUCCEEDED" for o in outcomes), outcomes
    refunded, sums, events = db_state(engine, p.id)
    assert refunded == 4000 and sums == {"SUCCEEDED": 4000} and len(events) == 1


def new_withdrawal(uow_factory, **kw) -> Withdrawal:
    t = datetime.now(UTC) - timedelta(hours=2)
    w = Withdrawal(id=ids.new_id("wd"), user_id="u_race", amount=100_000, currency="INR", mode="IMPS",
                   status="PROCESSING", beneficiary_name="A Kumar", account_last4="9012", ifsc="HDFC0000123",
                   gateway_payout_id="pout_" + ids.new_id("x")[-12:], created_at=t, updated_at=t)
    w = Withdrawal(**{**vars(w), **kw})
    with uow_factory() as uow:
        uow.withdrawals.add(w)
        uow.commit()
    return w


def test_racing_payout_answers_walk_the_state_machine_once(engine, uow_factory) -> None:
    w = new_withdrawal(uow_factory)
    answers = [PayoutResult(w.gateway_payout_id, PayoutStatus.SETTLED, utr="UTR1"),
               PayoutResult(w.gateway_payout_id, PayoutStatus.REVERSED, utr="UTR1", failure_reason="returned")]
    def apply(i: int) -> Withdrawal:
        with uow_factory() as uow:
            after = withdrawals.apply_payout_result(uow, w, answers[i % 2], datetime.now(UTC),
                                                    withdrawals.WithdrawalSettings())
            uow.commit()
        return after

    outcomes = race(apply)
    assert all(isinstance(o, Withdrawal) for o in outcomes), outcomes
    with engine.connect() as conn:
        row = conn.execute(select(WithdrawalRequestRow).where(WithdrawalRequestRow.id == w.id)).one()
        events = list(conn.execute(select(OutboxEventRow.event_type).where(OutboxEventRow.subject == w.id)
                                   .order_by(OutboxEventRow.id)).scalars())
    assert row.status == "REVERSED" and row.utr == "UTR1"
    assert events == ["WITHDRAWAL_SETTLED", "WITHDRAWAL_REVERSED"]


def test_withdrawal_repository_round_trip(uow_factory) -> None:
    w = new_withdrawal(uow_factory, status="REQUESTED", gateway_payout_id=None)
    with uow_factory() as uow:
        assert uow.withdrawals.get(w.id) == w
        uow.records.update("withdrawal", w.id, gateway_payout_id="pout_rt_" + w.id[-8:])
        move = WITHDRAWALS.move(w, "PROCESSING", datetime.now(UTC))
        assert uow.records.move(move)
        assert not uow.records.move(move)  # the guard: no longer REQUESTED
        uow.commit()
    with uow_factory() as uow:
        got = uow.withdrawals.find_by_gateway_id("pout_rt_" + w.id[-8:])
        assert got is not None and got.id == w.id and got.status == "PROCESSING"


def test_replicas_sweeping_at_once_never_share_a_record(engine, uow_factory) -> None:
    """Two workers claim due records at the same instant (SKIP LOCKED): each record goes to one."""
    due = datetime.now(UTC) - timedelta(minutes=5)
    mine = {new_withdrawal(uow_factory, status="REQUESTED", gateway_payout_id=None, next_attempt_at=due).id
            for _ in range(40)}

    def claim(_: int) -> list[str]:
        t = datetime.now(UTC)
        with uow_factory() as uow:
            got = uow.records.claim_due("withdrawal", {"REQUESTED"}, t, t + timedelta(minutes=5), 25)
            uow.commit()
        return [w.id for w in got if w.id in mine]

    a, b = race(claim, n=2)
    assert not set(a) & set(b), "a record was claimed by both replicas"
    assert set(a) | set(b) == mine or len(a) + len(b) == 50
    # Claimed records are skipped by the next sweep until their lease lapses.
    t = datetime.now(UTC)
    with uow_factory() as uow:
        again = [w.id for w in uow.records.claim_due("withdrawal", {"REQUESTED"}, t, t, 1000) if w.id in mine]
    assert again == [] if len(a) + len(b) == len(mine) else True
