"""The webhook inbox on MariaDB: stored once, claimed in batches that appliers never share, settled by token."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from payment_service.adapters.orm import GatewayEventRow
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.domain.payments import InboxEvent
from tests.integration.adapters.conftest import THREADS
from tests.integration.adapters.records import inbox_event, later, now, race

UowFactory = Callable[[], SqlAlchemyUnitOfWork]

pytestmark = pytest.mark.usefixtures("empty_queues")


def add(uow_factory: UowFactory, *events: InboxEvent) -> list[InboxEvent]:
    with uow_factory() as uow:
        for e in events:
            assert uow.gateway_events.add(e)
        uow.commit()
    return list(events)


def claim(uow_factory: UowFactory, at=None, lease: float = 30, fresh: int = 10, retries: int = 10) -> list[InboxEvent]:
    t = at or now()
    with uow_factory() as uow:
        batch = uow.gateway_events.claim_due(t, later(lease, t), fresh, retries)
        uow.commit()
    return batch


def stored(engine: Engine, event_id: int) -> GatewayEventRow:
    with engine.connect() as conn:
        return conn.execute(select(GatewayEventRow).where(GatewayEventRow.id == event_id)).one()


def test_a_delivery_is_stored_once(engine: Engine, uow_factory: UowFactory) -> None:
    [e] = add(uow_factory, inbox_event())
    again = inbox_event()
    again.gateway_event_id = e.gateway_event_id
    with uow_factory() as uow:
        assert not uow.gateway_events.add(again)  # a duplicate delivery: refused, the first one kept
        uow.commit()
    other_gateway = inbox_event(gateway="razorpay")
    other_gateway.gateway_event_id = e.gateway_event_id
    add(uow_factory, other_gateway)  # the id is unique per gateway only
    row = stored(engine, e.id)
    assert (row.gateway_event_id, row.status, row.payload) == (e.gateway_event_id, "RECEIVED", e.payload)


def test_the_claim_takes_fresh_events_then_due_retries_then_lapsed_leases(uow_factory: UowFactory) -> None:
    t = now()
    fresh = add(uow_factory, *(inbox_event(due=t - timedelta(seconds=s)) for s in (3, 1, 2)))
    retry_due = add(uow_factory, inbox_event("RETRY", due=t - timedelta(seconds=5), attempts=2))[0]
    retry_later = add(uow_factory, inbox_event("RETRY", due=later(60, t), attempts=1))[0]
    lapsed = add(uow_factory, inbox_event("PROCESSING", due=t - timedelta(seconds=1), attempts=1))[0]
    leased = add(uow_factory, inbox_event("PROCESSING", due=later(20, t), attempts=1))[0]
    done = add(uow_factory, inbox_event("APPLIED", due=t - timedelta(minutes=1), attempts=1))[0]

    batch = claim(uow_factory, t, fresh=2, retries=1)
    assert [e.id for e in batch] == [fresh[0].id, fresh[2].id, retry_due.id, lapsed.id]
    assert all(e.status == "PROCESSING" and e.next_attempt_at == later(30, t) for e in batch)
    assert [e.attempts for e in batch] == [1, 1, 3, 2]  # the claim's token: attempts + 1

    rest = claim(uow_factory, t)
    assert [e.id for e in rest] == [fresh[1].id]  # not the claimed ones, the leased one, the future retry, APPLIED
    assert {retry_later.id, leased.id, done.id}.isdisjoint(e.id for e in batch + rest)


def test_two_appliers_claiming_at_once_never_share_an_event(uow_factory: UowFactory) -> None:
    t = now()
    events = add(uow_factory, *(inbox_event(due=t - timedelta(seconds=i)) for i in range(1, 21)))
    both_claimed = threading.Barrier(2)

    def applier(_: int) -> set[int]:
        with uow_factory() as uow:
            batch = uow.gateway_events.claim_due(t, later(30, t), 10, 0)
            # Both hold their row locks now: only SKIP LOCKED lets the second claim through.
            both_claimed.wait(timeout=20)
            uow.commit()
        return {e.id for e in batch}

    first, second = race(applier, 2)
    assert isinstance(first, set) and isinstance(second, set), (first, second)
    assert len(first) == len(second) == 10 and not first & second
    assert first | second == {e.id for e in events}


def test_many_appliers_racing_claim_each_event_exactly_once(uow_factory: UowFactory) -> None:
    t = now()
    events = add(uow_factory, *(inbox_event(due=t - timedelta(milliseconds=i)) for i in range(1, 41)))

    def applier(_: int) -> list[int]:
        taken: list[int] = []
        while batch := claim(uow_factory, t, fresh=3, retries=0):
            taken += [e.id for e in batch]
        return taken

    results = race(applier, THREADS)
    assert not [r for r in results if isinstance(r, Exception)], results
    everything = [i for r in results for i in r]
    assert sorted(everything) == sorted(e.id for e in events)  # every event once: none twice, none missed


def test_settle_needs_the_claim_that_holds_the_event(engine: Engine, uow_factory: UowFactory) -> None:
    t = now()
    [e] = add(uow_factory, inbox_event(due=t - timedelta(seconds=1)))
    [first] = claim(uow_factory, t, lease=5)
    # The first applier stalls past its lease; another takes the event over (token 2).
    [second] = claim(uow_factory, later(6, t))
    assert (first.attempts, second.attempts) == (1, 2)
    with uow_factory() as uow:
        assert not uow.gateway_events.settle(e.id, first.attempts, "APPLIED", t)  # lapsed: not its any more
        assert uow.gateway_events.settle(e.id, second.attempts, "APPLIED", later(7, t))
        uow.commit()
    row = stored(engine, e.id)
    assert (row.status, row.applied_at, row.last_error) == ("APPLIED", later(7, t), None)


def test_settle_many_settles_only_what_this_applier_still_holds(engine: Engine, uow_factory: UowFactory) -> None:
    t = now()
    add(uow_factory, *(inbox_event(due=t - timedelta(seconds=i)) for i in (3, 2, 1)))
    batch = claim(uow_factory, t, lease=5)
    taken_over = claim(uow_factory, later(6, t), fresh=0, retries=1)  # one lease lapsed and was taken
    assert len(batch) == 3 and len(taken_over) == 1
    with uow_factory() as uow:
        assert uow.gateway_events.settle_many(batch, "NOT_OURS", later(1, t)) == 2
        uow.commit()
    statuses = {e.id: stored(engine, e.id).status for e in batch}
    assert statuses == {e.id: ("PROCESSING" if e.id == taken_over[0].id else "NOT_OURS") for e in batch}


def test_retry_later_and_give_back(engine: Engine, uow_factory: UowFactory) -> None:
    t = now()
    add(uow_factory, *(inbox_event(due=t - timedelta(seconds=i)) for i in (2, 1)))
    failing, unstarted = claim(uow_factory, t)
    with uow_factory() as uow:
        assert uow.gateway_events.retry_later(failing.id, failing.attempts, later(60, t), "payment not found yet")
        assert not uow.gateway_events.retry_later(failing.id, failing.attempts + 1, later(60, t), "not held")
        uow.gateway_events.give_back([unstarted], t)  # the applier is stopping: due at once, not counted
        uow.commit()
    retry, back = stored(engine, failing.id), stored(engine, unstarted.id)
    assert (retry.status, retry.attempts, retry.next_attempt_at, retry.last_error) == (
        "RETRY", 1, later(60, t), "payment not found yet")
    assert (back.status, back.attempts, back.next_attempt_at) == ("RECEIVED", 0, t)
    assert [e.id for e in claim(uow_factory, t)] == [unstarted.id]  # back in the fresh lane
