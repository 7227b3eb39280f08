"""Deferred writes on MariaDB (adapters/deferred_writes.py): sent with the COMMIT in one round trip,
never reordered against the statements around them, all or nothing, dropped by a rollback."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from payment_service.adapters.deferred_writes import DEFER
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.bootstrap import make_engine
from payment_service.domain.events import Event, EventType
from tests.integration.adapters.records import inbox_event, outbox_rows, payment, race, stored_payment_ids

UowFactory = Callable[[], SqlAlchemyUnitOfWork]


def stored(engine: Engine, payment_id: str) -> bool:
    return stored_payment_ids(engine, payment_id) == {payment_id}


def outbox_count(engine: Engine, subject: str) -> int:
    return len(outbox_rows(engine, subject))


def commit_payments(uow_factory: UowFactory, *payments: Any) -> None:
    with uow_factory() as uow:
        for p in payments:
            uow.payments.add(p)
        uow.commit()


def captured(p: Any) -> Event:
    return Event(EventType.PAYMENT_CAPTURED, p.id, p.user_id, {"payment_id": p.id, "amount": p.amount})


def test_deferred_writes_reach_the_database_with_the_commit_in_one_round_trip(
    engine: Engine, uow_factory: UowFactory, round_trips: list[str]
) -> None:
    p = payment()
    with uow_factory() as uow:
        uow.payments.add(p)  # deferred
        uow.outbox.add(captured(p))  # deferred (an autoincrement id nobody reads)
        assert round_trips == [], "a deferred write was sent before the commit"
        uow.commit()
    assert len(round_trips) == 1, round_trips
    assert round_trips[0].startswith("INSERT INTO payments") and round_trips[0].rstrip().endswith("COMMIT")
    assert stored(engine, p.id)
    assert outbox_count(engine, p.id) == 1


def _read_back(uow: Any, payment_id: str, with_parameters: bool) -> bool:
    if with_parameters:
        got = uow.payments.get(payment_id)
        return got is not None and got.id == payment_id
    count = uow.session.connection().exec_driver_sql(  # through the driver with no arguments
        f"SELECT COUNT(*) FROM payments WHERE id = '{payment_id}'", execution_options={"no_parameters": True}
    ).scalar_one()
    return bool(count == 1)


@pytest.mark.parametrize("with_parameters", [True, False], ids=["with-parameters", "without-parameters"])
def test_a_statement_after_deferred_writes_takes_them_along_and_sees_them(
    engine: Engine, uow_factory: UowFactory, round_trips: list[str], with_parameters: bool
) -> None:
    p = payment()
    with uow_factory() as uow:
        uow.payments.add(p)
        assert _read_back(uow, p.id, with_parameters)  # the INSERT goes first, in the SELECT's round trip
        assert len(round_trips) == 1, round_trips
        assert [q.split()[0] for q in round_trips[0].split(";\n")] == ["INSERT", "SELECT"]
        uow.commit()
    assert round_trips[-1] == "COMMIT"  # nothing left to send with it
    assert stored(engine, p.id)


def test_a_deferred_write_that_fails_raises_at_the_commit_and_nothing_of_the_transaction_stays(
    engine: Engine, uow_factory: UowFactory, round_trips: list[str]
) -> None:
    first, taken = payment(), payment()
    commit_payments(uow_factory, taken)
    round_trips.clear()
    with pytest.raises(IntegrityError, match="Duplicate entry"):
        with uow_factory() as uow:
            uow.payments.add(first)  # runs, then is rolled back
            uow.outbox.add(captured(first))
            uow.payments.add(taken)  # the duplicate: stops the batch before its COMMIT
            uow.outbox.add(captured(taken))
            uow.commit()
    assert [q.split()[0] for q in round_trips] == ["INSERT", "ROLLBACK"]  # the batch, then its end
    assert not stored(engine, first.id)
    assert outbox_count(engine, first.id) == 0 and outbox_count(engine, taken.id) == 0
    # The connection goes back to the pool clean: the next transaction commits only its own write.
    again = payment()
    commit_payments(uow_factory, again)
    assert stored(engine, again.id) and not stored(engine, first.id)


def test_a_deferred_write_that_fails_raises_from_the_statement_it_rode_with_which_does_not_run(
    engine: Engine, uow_factory: UowFactory, round_trips: list[str]
) -> None:
    taken, other = payment(), payment()
    commit_payments(uow_factory, taken, other)
    round_trips.clear()
    with pytest.raises(IntegrityError, match="Duplicate entry"):
        with uow_factory() as uow:
            uow.payments.add(taken)  # the duplicate, waiting
            uow.session.execute(  # rides with it, after it: never runs
                text("UPDATE payments SET failure_code = 'ran' WHERE id = :id"), {"id": other.id}
            )
    assert len(round_trips) == 2 and round_trips[1] == "ROLLBACK", round_trips
    with uow_factory() as uow:
        after = uow.payments.get(other.id)
    assert after is not None and after.failure_code is None


def test_a_statement_that_rode_with_writes_reports_its_own_row_count_and_id(
    engine: Engine, uow_factory: UowFactory, round_trips: list[str]
) -> None:
    p = payment()
    with uow_factory() as uow:
        uow.payments.add(p)
        uow.outbox.add(captured(p))  # an autoincrement id of its own, in the same round trip
        moved = uow.session.execute(  # a guarded UPDATE after two writes: its count, not theirs
            text("UPDATE payments SET failure_code = 'x' WHERE id = :id AND status = 'PENDING'"), {"id": p.id}
        )
        assert moved.rowcount == 1  # type: ignore[attr-defined]
        uow.outbox.add(captured(p))
        event = inbox_event()
        assert uow.gateway_events.add(event)  # an INSERT whose id is read, after a write
        assert len(round_trips) == 2, round_trips
        uow.commit()
    with engine.connect() as conn:
        stored_id = conn.execute(
            text("SELECT id FROM gateway_events WHERE gateway_event_id = :e"), {"e": event.gateway_event_id}
        ).scalar_one()
    assert event.id == stored_id
    assert outbox_count(engine, p.id) == 2


def test_a_rollback_drops_deferred_writes_without_sending_them(
    engine: Engine, uow_factory: UowFactory, round_trips: list[str]
) -> None:
    p = payment()
    with uow_factory() as uow:
        uow.payments.add(p)
        uow.outbox.add(captured(p))
    assert [q for q in round_trips if q.startswith("INSERT")] == []
    assert not stored(engine, p.id)
    with uow_factory() as uow:  # and they do not ride with the next commit on that connection
        uow.commit()
    assert not stored(engine, p.id) and outbox_count(engine, p.id) == 0


def test_writes_deferred_by_threads_at_once_each_commit_with_their_own_transaction(
    engine: Engine, uow_factory: UowFactory
) -> None:
    """Pending writes live on each connection: eight threads, a barrier, no write in another's batch."""
    n = 8
    all_pending = threading.Barrier(n)
    mine = [payment() for _ in range(n)]

    def one(i: int) -> None:
        with uow_factory() as uow:
            uow.payments.add(mine[i])
            all_pending.wait(10)
            if i % 2:
                uow.commit()  # odd threads commit, even ones roll back

    assert race(one, n) == [None] * n
    assert [stored(engine, p.id) for p in mine] == [bool(i % 2) for i in range(n)]


def test_a_guarded_update_is_never_deferred_its_row_count_decides(
    engine: Engine, uow_factory: UowFactory, round_trips: list[str]
) -> None:
    p = payment()
    with uow_factory() as uow:
        uow.payments.add(p)
        uow.commit()
    round_trips.clear()
    with uow_factory() as uow:
        result = uow.session.execute(
            text("UPDATE payments SET failure_code = 'x' WHERE id = :id AND status = 'PENDING'"), {"id": p.id}
        )
        assert result.rowcount == 1
        uow.commit()
    assert round_trips[0].startswith("UPDATE") and round_trips[-1] == "COMMIT"


def test_on_sqlite_a_deferred_write_runs_where_it_is_issued(tmp_path: Any) -> None:
    from payment_service.adapters import migrate

    url = f"sqlite:///{tmp_path}/d.db"
    migrate.upgrade(url)
    eng = make_engine(url)
    try:
        with eng.connect() as conn:
            conn.execute(text("CREATE TABLE t (v TEXT)"))
            conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": uuid.uuid4().hex}, execution_options=DEFER)
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        eng.dispose()
