"""The SQLAlchemy unit of work on MariaDB: one transaction, committed only when asked, the outbox inside it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from payment_service.adapters.orm import PaymentRow
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.domain import lifecycle
from tests.integration.adapters.records import now, outbox_rows, payment, stored_payment_ids

UowFactory = Callable[[], SqlAlchemyUnitOfWork]


def test_committed_work_is_there_for_the_next_unit_of_work(engine: Engine, uow_factory: UowFactory) -> None:
    p = payment()
    with uow_factory() as uow:
        uow.payments.add(p)
        uow.commit()
    assert stored_payment_ids(engine, p.id) == {p.id}
    with uow_factory() as uow:
        assert uow.payments.get(p.id) == p


def test_nothing_is_kept_without_commit(engine: Engine, uow_factory: UowFactory) -> None:
    p = payment()
    with uow_factory() as uow:
        uow.payments.add(p)
        assert uow.payments.get(p.id) == p  # seen inside its own transaction...
        assert stored_payment_ids(engine, p.id) == set()  # ...and by no one else
    assert stored_payment_ids(engine, p.id) == set()


def test_an_exception_rolls_everything_back(engine: Engine, uow_factory: UowFactory) -> None:
    class Boom(Exception):
        pass

    p = payment()
    with pytest.raises(Boom), uow_factory() as uow:
        uow.payments.add(p)
        uow.outbox.add(lifecycle.payment_failed_event(p))
        raise Boom
    assert stored_payment_ids(engine, p.id) == set()
    assert outbox_rows(engine, p.id) == []


def test_explicit_rollback_then_more_work_keeps_only_the_later_work(engine: Engine, uow_factory: UowFactory) -> None:
    dropped, kept = payment(), payment()
    with uow_factory() as uow:
        uow.payments.add(dropped)
        uow.rollback()
        uow.payments.add(kept)
        uow.commit()
    assert stored_payment_ids(engine, dropped.id, kept.id) == {kept.id}


def test_the_event_of_a_move_commits_and_rolls_back_with_it(engine: Engine, uow_factory: UowFactory) -> None:
    p = payment()
    with uow_factory() as uow:
        uow.payments.add(p)
        uow.commit()
    move = lifecycle.PAYMENTS.move(p, "CAPTURED", now(), gateway_payment_id="pi_uow_1", captured_at=now())

    with uow_factory() as uow:
        assert uow.records.move(move)
        # Not committed: the status change and its event are invisible together.
    with uow_factory() as uow:
        assert uow.records.get(lifecycle.PAYMENT, p.id).status == "PENDING"
    assert outbox_rows(engine, p.id) == []

    with uow_factory() as uow:
        assert uow.records.move(move)
        uow.commit()
    with uow_factory() as uow:
        assert uow.records.get(lifecycle.PAYMENT, p.id).status == "CAPTURED"
    [(event_type, payload)] = outbox_rows(engine, p.id)
    assert event_type == "PAYMENT_CAPTURED" and '"gateway_payment_id":"pi_uow_1"' in payload


def test_a_change_whose_event_cannot_be_written_is_not_kept(engine: Engine, uow_factory: UowFactory) -> None:
    first = payment()
    event = lifecycle.payment_failed_event(first)
    with uow_factory() as uow:
        uow.payments.add(first)
        uow.outbox.add(event)
        uow.commit()
    second = payment()
    # The same event id again (UNIQUE event_id): the outbox write fails, and takes the change with it.
    with pytest.raises(IntegrityError), uow_factory() as uow:
        uow.payments.add(second)
        uow.outbox.add(replace(event, subject=second.id))
        uow.commit()
    assert stored_payment_ids(engine, first.id, second.id) == {first.id}
    assert outbox_rows(engine, second.id) == []


def test_a_unit_of_work_gives_its_connection_back(engine: Engine, uow_factory: UowFactory) -> None:
    before = engine.pool.checkedout()  # type: ignore[attr-defined]
    for _ in range(3):
        with uow_factory() as uow:
            uow.payments.get("pay_nope")
    with pytest.raises(RuntimeError), uow_factory() as uow:
        uow.payments.get("pay_nope")
        raise RuntimeError
    assert engine.pool.checkedout() == before  # type: ignore[attr-defined]


def test_concurrent_units_of_work_each_see_only_committed_rows(engine: Engine, uow_factory: UowFactory) -> None:
    p = payment()
    added, looked = threading.Event(), threading.Event()
    seen: list[object] = []

    def reader() -> None:
        added.wait(10)
        with uow_factory() as uow:
            seen.append(uow.payments.get(p.id))
        looked.set()

    t = threading.Thread(target=reader)
    t.start()
    with uow_factory() as uow:
        uow.payments.add(p)
        added.set()
        assert looked.wait(10)
        uow.commit()
    t.join(10)
    assert seen == [None]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(PaymentRow).where(PaymentRow.id == p.id)).scalar() == 1
