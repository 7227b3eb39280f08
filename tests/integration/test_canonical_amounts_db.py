"""Canonical amounts on the real database (MariaDB) and on SQLite: the rate comes back exactly as stored
(DECIMAL(38, 20), or its text on SQLite), and a move keeps what the record was created with."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.orm import sessionmaker

from payment_service.adapters import migrate
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.bootstrap import make_engine
from payment_service.domain import fx, ids
from payment_service.domain.lifecycle import PAYMENTS
from payment_service.domain.payments import Payment, Refund
from payment_service.domain.withdrawals import Withdrawal

RATE = Decimal("0.01184018007878446820")  # 1.0520 / 88.850, at the stored scale
SMALL = Decimal("0.00000000637105464926")  # IDR -> KWD sized


@pytest.fixture(params=["mariadb", "sqlite"])
def uow_factory(request: pytest.FixtureRequest, tmp_path) -> Callable[[], SqlAlchemyUnitOfWork]:
    url = f"sqlite:///{tmp_path}/c.sqlite3" if request.param == "sqlite" else request.getfixturevalue(
        "fresh_database_url")
    migrate.upgrade(url)
    engine = make_engine(url)
    request.addfinalizer(engine.dispose)
    factory = sessionmaker(engine, expire_on_commit=False)
    return lambda: SqlAlchemyUnitOfWork(factory)


def test_canonical_columns_round_trip(uow_factory: Callable[[], SqlAlchemyUnitOfWork]) -> None:
    t = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    rate_at = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
    canonical = fx.canonical_fields(fx.CanonicalAmount(1462, "USD", RATE, rate_at))
    p = Payment(id=ids.new_id("pay"), user_id="u_fx", amount=123450, currency="INR", gateway="stripe",
                status="PENDING", created_at=t, updated_at=t, **canonical)
    bare = Payment(id=ids.new_id("pay"), user_id="u_fx", amount=100, currency="INR", gateway="stripe",
                   status="PENDING", created_at=t, updated_at=t, **fx.canonical_fields(None))
    r = Refund(id=ids.new_id("re"), payment_id=p.id, user_id="u_fx", amount=5, currency="INR", status="PENDING",
               created_at=t, updated_at=t, **fx.canonical_fields(fx.CanonicalAmount(0, "KWD", SMALL, rate_at)))
    w = Withdrawal(id=ids.new_id("wd"), user_id="u_fx", amount=100_000, currency="INR", mode="UPI",
                   status="REQUESTED", beneficiary_name="A Kumar", vpa="a@bank", created_at=t, updated_at=t,
                   **canonical)
    with uow_factory() as uow:
        uow.payments.add(p)
        uow.payments.add(bare)
        uow.refunds.add(r)
        uow.withdrawals.add(w)
        uow.commit()
    with uow_factory() as uow:
        got, got_bare = uow.payments.get(p.id), uow.payments.get(bare.id)
        got_r, got_w = uow.refunds.get(r.id), uow.withdrawals.get(w.id)
        listed = uow.payments.list_for_user("u_fx", None, 10, None).items
    assert got is not None and got_bare is not None and got_r is not None and got_w is not None
    assert (got.canonical_amount, got.canonical_currency, got.fx_rate, got.fx_rate_at) == (1462, "USD", RATE, rate_at)
    assert (got_bare.canonical_amount, got_bare.canonical_currency, got_bare.fx_rate) == (None, None, None)
    assert got_r.fx_rate == SMALL and got_r.canonical_currency == "KWD"
    assert (got_w.canonical_amount, got_w.fx_rate) == (1462, RATE)
    assert {x.id: x.fx_rate for x in listed} == {p.id: RATE, bare.id: None}

    # A move (here to CAPTURED) keeps the amount the record was created with, and its event carries it.
    move = PAYMENTS.move(got, "CAPTURED", t + timedelta(seconds=1), captured_at=t)
    assert move.event is not None and move.event.data["canonical_amount"] == 1462
    with uow_factory() as uow:
        assert uow.records.move(move)
        uow.commit()
    with uow_factory() as uow:
        after = uow.payments.get(p.id)
    assert after is not None and after.status == "CAPTURED" and after.fx_rate == RATE
