"""Idempotency keys on MariaDB: the SQL store, and services/idempotency.py over it (take-over, refusal, replay).

The keyed flow here is a small top-up of the test's own whose gateway call the test controls, so a
request can be held inside its gateway call (alive) or left behind as a crashed holder would (stale).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from payment_service.adapters.orm import IdempotencyKeyRow, OutboxEventRow
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.domain import lifecycle
from payment_service.domain.errors import GatewayUnavailable, IdempotencyKeyInUse, IdempotencyKeyReused
from payment_service.domain.payments import IdempotencyRecord, Payment
from payment_service.gateways.base import GatewayUnavailableError
from payment_service.services import idempotency
from payment_service.services.unit_of_work import AbstractUnitOfWork, KeyTaken
from tests.integration.adapters.conftest import THREADS
from tests.integration.adapters.records import later, now, payment, race, random_user
from tests.support.waiting import wait_for

UowFactory = Callable[[], SqlAlchemyUnitOfWork]


# --- the SQL store -------------------------------------------------------------------------------


def key_record(t: datetime, locked_for: float = 60) -> IdempotencyRecord:
    return IdempotencyRecord(id=0, caller=f"user:{random_user()}", key=uuid.uuid4().hex, method="POST",
                             path="/payments", request_hash="fp", status="IN_PROGRESS", created_at=t,
                             expires_at=later(86400, t), resource_id="pay_x", locked_until=later(locked_for, t),
                             recovery_point="RECORDED")


def test_a_key_is_inserted_once_per_caller(uow_factory: UowFactory) -> None:
    t = now()
    first = key_record(t)
    with uow_factory() as uow:
        assert uow.idempotency.insert(first)
        uow.commit()
    with pytest.raises(KeyTaken):  # the duplicate rides with the next statement, which reports it
        with uow_factory() as uow:
            assert uow.idempotency.insert(replace(key_record(t), caller=first.caller, key=first.key))
            uow.payments.velocity(first.caller, t)
    with uow_factory() as uow:
        other_caller = replace(key_record(t), key=first.key)
        assert uow.idempotency.insert(other_caller)  # the key is the caller's own
        uow.commit()
    with uow_factory() as uow:
        got = uow.idempotency.get(first.caller, first.key)
        assert got is not None and replace(got, id=0) == replace(first, id=0)


def test_a_keys_insert_rides_with_the_next_statement_or_the_commit(
    uow_factory: UowFactory, round_trips: list[str]
) -> None:
    t = now()
    rec = key_record(t)
    with uow_factory() as uow:
        uow.idempotency.insert(rec)
        assert round_trips == []
        uow.payments.velocity("someone", t)
        assert len(round_trips) == 1 and round_trips[0].startswith("INSERT INTO idempotency_keys")
        assert "SELECT" in round_trips[0]
        uow.commit()
    round_trips.clear()
    # A duplicate: the next statement raises KeyTaken, and does not run; a commit would too.
    again = replace(key_record(t), caller=rec.caller, key=rec.key)  # inserted as a fresh copy each time
    with pytest.raises(KeyTaken), uow_factory() as uow:
        uow.idempotency.insert(replace(again))
        uow.payments.velocity("someone", t)
    with pytest.raises(KeyTaken), uow_factory() as uow:
        uow.idempotency.insert(replace(again))
        uow.commit()
    with pytest.raises(KeyTaken), uow_factory() as uow:  # confirm(): sent now, for a refusal
        uow.idempotency.insert(replace(again))
        uow.idempotency.confirm()
    with uow_factory() as uow:  # confirm() of a new key: it is in, and commits with the rest
        fresh = key_record(t)
        uow.idempotency.insert(fresh)
        uow.idempotency.confirm()
        uow.commit()
    with uow_factory() as uow:
        assert uow.idempotency.get(fresh.caller, fresh.key) is not None


def test_take_over_only_when_the_holder_is_gone(uow_factory: UowFactory) -> None:
    t = now()
    rec = key_record(t, locked_for=60)
    with uow_factory() as uow:
        uow.idempotency.insert(rec)
        uow.commit()
    with uow_factory() as uow:
        assert not uow.idempotency.take_over(rec.caller, rec.key, later(59, t), later(120, t))  # the lock is live
        assert uow.idempotency.take_over(rec.caller, rec.key, later(61, t), later(121, t))  # expired: ours now
        assert not uow.idempotency.take_over(rec.caller, rec.key, later(62, t), later(122, t))  # and not again
        uow.idempotency.release(rec.caller, rec.key)
        uow.commit()
    with uow_factory() as uow:
        assert uow.idempotency.take_over(rec.caller, rec.key, t, later(60, t))  # released: free at once
        uow.idempotency.complete(rec.caller, rec.key, 201, '{"id": "pay_x"}', "pay_x")
        uow.commit()
    with uow_factory() as uow:
        done = uow.idempotency.get(rec.caller, rec.key)
        assert not uow.idempotency.take_over(rec.caller, rec.key, later(3600, t), later(3660, t))  # completed: never
    assert done is not None
    assert (done.status, done.response_status, done.response_body, done.locked_until, done.recovery_point) == (
        "COMPLETED", 201, '{"id": "pay_x"}', None, "FINISHED")


def test_racing_take_overs_of_a_stale_key_have_one_winner(uow_factory: UowFactory) -> None:
    t = now()
    rec = key_record(t, locked_for=-1)  # its holder's lock ran out a second ago
    with uow_factory() as uow:
        uow.idempotency.insert(rec)
        uow.commit()

    def take(_: int) -> bool:
        with uow_factory() as uow:
            got = uow.idempotency.take_over(rec.caller, rec.key, now(), later(60))
            uow.commit()
        return got

    assert race(take, THREADS).count(True) == 1


def test_delete(uow_factory: UowFactory) -> None:
    rec = key_record(now())
    with uow_factory() as uow:
        uow.idempotency.insert(rec)
        uow.idempotency.delete(rec.caller, rec.key)
        uow.commit()
    with uow_factory() as uow:
        assert uow.idempotency.get(rec.caller, rec.key) is None


# --- services/idempotency.py over the SQL store ----------------------------------------------------


class Gateway:
    """Answers `succeeded`; `hold()` keeps callers inside the call until `let_go()`; `fail_next()` times out once."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.entered = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._fail = False
        self.lock = threading.Lock()

    def hold(self) -> None:
        self._open.clear()

    def let_go(self) -> None:
        self._open.set()

    def fail_next(self) -> None:
        self._fail = True

    def charge(self, payment_id: str) -> str:
        with self.lock:
            self.calls.append(payment_id)
            fail, self._fail = self._fail, False
        self.entered.set()
        assert self._open.wait(30), "the test never let the gateway call go"
        if fail:
            raise GatewayUnavailableError("timed out")
        return "succeeded"


class TopUp:
    """A keyed top-up in the shape of services/payments.TopUpFlow, with a gateway the test drives."""

    kind = lifecycle.PAYMENT
    prefix = "pay"

    def __init__(self, gateway: Gateway, user_id: str, reads_first: bool = False, refuses: bool = False) -> None:
        self.gateway, self.user_id = gateway, user_id
        self.reads_first = reads_first  # a read first, as the top-up's fraud check: the key's INSERT rides with it
        self.refuses = refuses  # refused before any statement, as with an open breaker

    def create(self, uow: AbstractUnitOfWork, record_id: str, t: datetime, claimed_until: datetime) -> Payment:
        if self.refuses:
            raise GatewayUnavailable("the gateway is failing; no payment was made")
        if self.reads_first:
            uow.payments.velocity(self.user_id, later(-3600, t))
        p = payment(user_id=self.user_id, at=t, claimed_until=claimed_until, next_attempt_at=later(300, t))
        p.id = record_id
        uow.payments.add(p)
        return p

    def resume(self, uow: AbstractUnitOfWork, record: Payment) -> None:
        pass

    def needs_call(self, record: Payment) -> bool:
        return record.status in lifecycle.PAYMENTS.open

    def call(self, record: Payment) -> str:
        return self.gateway.charge(record.id)

    def apply(self, uow: AbstractUnitOfWork, record: Payment, answer: str, t: datetime) -> Payment:
        move = lifecycle.PAYMENTS.move(record, "CAPTURED", t, gateway_payment_id=f"pi_{record.id}", captured_at=t)
        if uow.records.move(move):
            return move.after
        # Another attempt landed first (a taken-over request finishing late): report what is stored.
        return uow.records.get(self.kind, record.id)

    def unavailable(self, record: Payment) -> GatewayUnavailable:
        return GatewayUnavailable("gateway unavailable")

    def retry_at(self, t: datetime) -> datetime:
        return later(30, t)


def render(p: Payment) -> tuple[dict[str, Any], int]:
    return {"id": p.id, "status": p.status}, 201


class Requests:
    """POST /payments with one Idempotency-Key, as the API sends it through idempotency.execute."""

    def __init__(self, uow_factory: UowFactory, gateway: Gateway) -> None:
        self.uow_factory, self.gateway = uow_factory, gateway
        self.user = random_user()
        self.key = uuid.uuid4().hex

    def send(self, at: Callable[[], datetime] = now, fingerprint: str = "fp", **flow: bool) -> idempotency.Reply:
        req = idempotency.KeyedRequest(f"user:{self.user}", self.key, "POST", "/payments", fingerprint, 86400)
        return idempotency.execute(TopUp(self.gateway, self.user, **flow), req, self.uow_factory, render, at)

    def in_background(self, at: Callable[[], datetime] = now) -> tuple[threading.Thread, list[Any]]:
        out: list[Any] = []

        def run() -> None:
            try:
                out.append(self.send(at))
            except Exception as exc:  # noqa: BLE001 - for the assertions
                out.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        assert self.gateway.entered.wait(10), "the first request never reached the gateway"
        return thread, out


def captured_events(engine: Engine, payment_id: str) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(OutboxEventRow.id).where(
            OutboxEventRow.subject == payment_id, OutboxEventRow.event_type == "PAYMENT_CAPTURED")).all())


def one_call_the_rest_refused_or_replayed(results: list[Any], gw: Gateway) -> None:
    """Racing requests with one key: one called the gateway and answered; each other one was refused
    (409, in progress) or replayed that answer."""
    replies = [r for r in results if isinstance(r, idempotency.Reply)]
    refused = [r for r in results if isinstance(r, IdempotencyKeyInUse)]
    assert len(replies) + len(refused) == THREADS, results
    assert len(gw.calls) == 1
    assert all(r.status == 201 for r in replies) and sum(not r.replayed for r in replies) == 1


def test_a_retry_while_the_first_request_is_alive_is_refused(engine: Engine, uow_factory: UowFactory) -> None:
    gw = Gateway()
    requests = Requests(uow_factory, gw)
    gw.hold()
    first, out = requests.in_background()

    with pytest.raises(IdempotencyKeyInUse):
        requests.send()
    with pytest.raises(IdempotencyKeyReused):
        requests.send(fingerprint="another body")
    assert len(gw.calls) == 1  # the refused retry never reached the gateway

    gw.let_go()
    first.join(10)
    [reply] = out
    assert reply.status == 201 and not reply.replayed
    replay = requests.send()
    assert replay.replayed and replay.body == reply.body
    payment_id = json.loads(reply.body)["id"]
    assert captured_events(engine, payment_id) == 1


def test_a_stale_request_is_taken_over_and_the_money_moves_once(engine: Engine, uow_factory: UowFactory) -> None:
    gw = Gateway()
    requests = Requests(uow_factory, gw)
    gw.hold()
    stalled, out = requests.in_background()  # stuck in its gateway call, as a dead process would be
    [payment_id] = gw.calls

    # A retry after the lock (and the record's claim) ran out takes the request over and finishes it.
    late = now() + timedelta(seconds=idempotency.LOCK_SECONDS + 1)
    taking_over = threading.Thread(target=lambda: out.append(requests.send(lambda: late)))
    taking_over.start()
    wait_for(lambda: len(gw.calls) >= 2, timeout=10, what="the take-over's gateway call")
    assert gw.calls == [payment_id, payment_id]  # called again, for the same payment (same gateway key)

    gw.let_go()
    taking_over.join(10)
    stalled.join(10)
    assert all(isinstance(r, idempotency.Reply) and r.status == 201 for r in out), out
    with uow_factory() as uow:
        assert uow.records.get(lifecycle.PAYMENT, payment_id).status == "CAPTURED"
        key = uow.idempotency.get(f"user:{requests.user}", requests.key)
    assert key is not None and key.status == "COMPLETED"
    assert captured_events(engine, payment_id) == 1  # two answers, one capture


def test_a_gateway_timeout_releases_the_key_for_an_immediate_retry(engine: Engine, uow_factory: UowFactory) -> None:
    gw = Gateway()
    requests = Requests(uow_factory, gw)
    gw.fail_next()
    with pytest.raises(GatewayUnavailable):
        requests.send()
    with engine.connect() as conn:
        locked_until = conn.execute(select(IdempotencyKeyRow.locked_until).where(
            IdempotencyKeyRow.key == requests.key)).scalar_one()
    assert locked_until is None  # released, not left to lapse
    reply = requests.send()  # at once: no waiting for a lock
    assert reply.status == 201 and '"CAPTURED"' in reply.body
    assert len(gw.calls) == 2 and gw.calls[0] == gw.calls[1]


def test_racing_retries_of_a_stale_request_call_the_gateway_once(engine: Engine, uow_factory: UowFactory) -> None:
    gw = Gateway()
    requests = Requests(uow_factory, gw)
    gw.fail_next()
    with pytest.raises(GatewayUnavailable):
        requests.send()
    gw.calls.clear()

    def retry(_: int) -> idempotency.Reply:
        return requests.send()

    one_call_the_rest_refused_or_replayed(race(retry, THREADS), gw)  # one retry took the key over


@pytest.mark.parametrize("reads_first", [False, True], ids=["key-with-the-commit", "key-with-a-read"])
def test_racing_first_requests_with_one_key_charge_once(
    engine: Engine, uow_factory: UowFactory, reads_first: bool
) -> None:
    """The key's INSERT rides with the request's first statement or its commit: whichever it is, every
    request but one finds the key taken there (KeyTaken), and is refused or replays the winner's answer."""
    gw = Gateway()
    requests = Requests(uow_factory, gw)

    def first(_: int) -> idempotency.Reply:
        return requests.send(reads_first=reads_first)

    one_call_the_rest_refused_or_replayed(race(first, THREADS), gw)
    assert captured_events(engine, gw.calls[0]) == 1
    with engine.connect() as conn:
        keys = conn.execute(select(IdempotencyKeyRow.status).where(IdempotencyKeyRow.key == requests.key)).all()
    assert [k.status for k in keys] == ["COMPLETED"]


def test_a_refusal_before_any_statement_still_replays_a_finished_request(
    engine: Engine, uow_factory: UowFactory
) -> None:
    """An open breaker refuses before the request sends anything, so its key's INSERT is still waiting:
    it is sent before the refusal stands, and a retry of a request that finished gets that answer."""
    gw = Gateway()
    requests = Requests(uow_factory, gw)
    done = requests.send()
    again = requests.send(refuses=True)
    assert again.replayed and again.body == done.body
    assert len(gw.calls) == 1

    fresh = Requests(uow_factory, gw)  # a new key refused: nothing stored, the key included
    with pytest.raises(GatewayUnavailable):
        fresh.send(refuses=True)
    with uow_factory() as uow:
        assert uow.idempotency.get(f"user:{fresh.user}", fresh.key) is None
    assert fresh.send().status == 201  # and the same key works once the gateway does

