"""Issue 15 against fakes: ours or not decided once, fresh events before retries, one transaction per
event, a lapsed claim rolled back, appliers and sweeps that stop at once and sweeps that drain."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest

from payment_service.domain.events import EventType
from payment_service.gateways.base import WebhookEvent
from payment_service.services import payments as svc
from payment_service.services import webhooks
from payment_service.services.lifecycle import SweepPolicy, SweepReport, sweep, walk
from payment_service.services.risk import RiskRules

from .fakes import Clock, FakeGateway, fake_uow_factory, run_flow

SETTINGS = svc.PaymentSettings(RiskRules(), 900)
APPLY = webhooks.ApplySettings(SETTINGS)


@pytest.fixture
def env():
    uow_factory, store = fake_uow_factory()
    return uow_factory, store, FakeGateway(), Clock()


def start_3ds(env) -> svc.Payment:
    uow_factory, _, gw, clock = env
    cmd = svc.TopUp(user_id="u_1", amount=5000, currency="INR", gateway="stripe",
                    token="pm_card_threeDSecure2Required")
    return run_flow(svc.TopUpFlow(cmd, {"stripe": gw}, SETTINGS), uow_factory, now=clock)


def deliver(env, event_id: str, gateway_id: str | None, reference: str | None, status: str = "succeeded",
            payload: dict | None = None, event_type: str | None = None) -> None:
    uow_factory, _, _, clock = env
    body = payload if payload is not None else {"charge": {"status": status, "id": gateway_id, "reference": reference}}
    assert webhooks.store_webhook(WebhookEvent("stripe", event_id, event_type or f"payment_intent.{status}",
                                               gateway_id, reference, body), uow_factory, now=clock)


def apply(env, policy: webhooks.ApplyPolicy = webhooks.DEFAULT_APPLY_POLICY, stop=None) -> int:
    uow_factory, _, gw, clock = env
    return webhooks.apply_due_events(uow_factory, {"stripe": gw}, APPLY, now=clock, policy=policy, stop=stop)


def inbox(store, event_id: str):
    return next(e for e in store.inbox.values() if e.gateway_event_id == event_id)


# --- ours or not, decided once ------------------------------------------------------------------


def test_an_event_for_an_object_not_ours_is_settled_at_once_and_never_retried(env) -> None:
    _, store, _, clock = env
    # A payment link's intent: no payment_id of ours in its metadata, a gateway id we do not hold.
    deliver(env, "evt_foreign", "pi_someone_elses", None)
    assert apply(env) == 1
    e = inbox(store, "evt_foreign")
    assert (e.status, e.attempts, e.last_error) == ("NOT_OURS", 1, None)
    clock.advance(hours=1)
    assert apply(env) == 0 and inbox(store, "evt_foreign").attempts == 1
    assert store.outbox == []


def test_a_type_we_do_not_act_on_is_settled_at_once(env) -> None:
    _, store, _, _ = env
    deliver(env, "evt_cus", "cus_1", None, payload={"customer": {"id": "cus_1"}}, event_type="customer.updated")
    deliver(env, "evt_proc", "pi_x", "pay_x", status="processing")  # no outcome yet, nothing to look up
    assert apply(env) == 2
    assert [inbox(store, e).status for e in ("evt_cus", "evt_proc")] == ["IGNORED", "IGNORED"]


def test_an_id_of_ours_we_do_not_hold_is_retried_for_a_bounded_time_then_surfaced(env, caplog) -> None:
    _, store, _, clock = env
    policy = webhooks.ApplyPolicy(retry_for_seconds=600)
    deliver(env, "evt_ghost", "pi_ghost", "pay_ghost")
    apply(env, policy)
    assert inbox(store, "evt_ghost").status == "RETRY"
    tries = 1
    while clock.t < inbox(store, "evt_ghost").received_at + timedelta(seconds=600):
        clock.advance(seconds=60)
        tries += apply(env, policy)
        if inbox(store, "evt_ghost").status != "RETRY":
            break
    e = inbox(store, "evt_ghost")
    assert e.status == "FAILED" and "no payment for reference=pay_ghost" in e.last_error
    assert e.applied_at - e.received_at >= timedelta(seconds=600) and tries == e.attempts
    assert [r.message for r in caplog.records if r.levelno == logging.ERROR] == [
        "webhook for an id of ours never found"
    ]
    clock.advance(hours=1)
    assert apply(env, policy) == 0  # surfaced for a person, never taken again


# --- fresh events first, retries fair -------------------------------------------------------------


def test_a_fresh_3ds_completion_is_claimed_before_a_pile_of_due_retries(env) -> None:
    _, store, _, clock = env
    for i in range(300):
        deliver(env, f"evt_ghost_{i}", f"pi_ghost_{i}", f"pay_ghost_{i}")
    while apply(env):
        pass
    clock.advance(seconds=120)  # every one of them due again
    p = start_3ds(env)
    deliver(env, "evt_3ds", p.gateway_payment_id, p.id)
    policy = webhooks.ApplyPolicy(batch=50, retry_share=5)
    assert apply(env, policy) == 6  # one claim: the fresh event, and the retries' share
    assert store.payments[p.id].status == "CAPTURED"
    retried = [e for e in store.inbox.values() if e.gateway_event_id.startswith("evt_ghost") and e.attempts == 2]
    assert len(retried) == 5  # the retries move too, a share per claim


def test_each_event_is_applied_in_one_transaction(env) -> None:
    _, store, _, _ = env
    payments = [start_3ds(env) for _ in range(3)]
    for p in payments:
        deliver(env, f"evt_{p.id}", p.gateway_payment_id, p.id)
    before = store.commits
    assert apply(env) == 3
    # The claim, then one transaction per event: the move, its outbox row and the event's status.
    assert store.commits - before == 1 + 3
    assert all(store.payments[p.id].status == "CAPTURED" for p in payments)
    assert all(e.status == "APPLIED" for e in store.inbox.values())


def test_an_applier_whose_claim_lapsed_leaves_the_event_to_its_new_holder(env) -> None:
    uow_factory, store, gw, clock = env
    p = start_3ds(env)
    deliver(env, "evt_slow", p.gateway_payment_id, p.id)
    parse = gw.charge_result_from_event
    nested: list[int] = []

    def slow_parse(event):
        if gw.charge_result_from_event is slow_parse:
            gw.charge_result_from_event = parse
            # The first applier stalls past its lease; another takes the event over and applies it.
            clock.advance(seconds=webhooks.DEFAULT_APPLY_POLICY.lease_seconds + 1)
            nested.append(apply(env))
        return parse(event)

    gw.charge_result_from_event = slow_parse
    assert apply(env) == 1 and nested == [1]
    e = inbox(store, "evt_slow")
    assert e.status == "APPLIED" and e.attempts == 2
    assert [ev.type for ev in store.outbox] == [EventType.PAYMENT_CAPTURED]  # the stalled one's work rolled back


def test_a_stopping_applier_gives_back_the_events_it_did_not_start(env, monkeypatch) -> None:
    _, store, _, _ = env
    payments = [start_3ds(env) for _ in range(4)]
    for p in payments:
        deliver(env, f"evt_{p.id}", p.gateway_payment_id, p.id)
    deliver(env, "evt_cus", "cus_1", None, payload={"customer": {"id": "cus_1"}}, event_type="customer.updated")
    stop = threading.Event()
    move = webhooks.apply_charge_result

    def move_then_stop(*args, **kwargs):
        stop.set()  # SIGTERM arrives while the first event is being applied
        return move(*args, **kwargs)

    monkeypatch.setattr(webhooks, "apply_charge_result", move_then_stop)
    assert apply(env, stop=stop) == 2  # the first payment's event, and the one settled at once
    statuses = [(e.status, e.attempts) for e in sorted(store.inbox.values(), key=lambda e: e.id)]
    assert statuses == [("APPLIED", 1)] + [("RECEIVED", 0)] * 3 + [("IGNORED", 1)]  # given back: due at once
    monkeypatch.setattr(webhooks, "apply_charge_result", move)
    assert apply(env) == 3


# --- sweeps drain and stop ------------------------------------------------------------------------


def due_payments(env, n: int) -> list[str]:
    uow_factory, store, _, clock = env
    ids = []
    for _ in range(n):
        p = start_3ds(env)
        ids.append(p.id)
    clock.advance(seconds=901)
    return ids


def expire_handler(env, seen: list[str], stop: threading.Event | None = None):
    uow_factory, _, _, clock = env

    def handle(p):
        seen.append(p.id)
        if stop is not None:
            stop.set()
        with uow_factory() as uow:
            after = walk(uow, svc.PAYMENTS, p, "EXPIRED", clock(), failure_code="expired")[0]
            uow.commit()
        return after

    return handle


def test_one_sweep_run_drains_batch_after_batch(env) -> None:
    uow_factory, store, _, clock = env
    ids = due_payments(env, 5)
    seen: list[str] = []
    report = sweep("t", uow_factory, "payment", {"PENDING_3DS"}, expire_handler(env, seen), clock,
                   SweepPolicy(batch=2))
    assert report == SweepReport(claimed=5, finished=5) and seen == ids


def test_a_stopped_sweep_starts_nothing_more_and_gives_the_rest_back(env) -> None:
    uow_factory, store, _, clock = env
    ids = due_payments(env, 4)
    seen: list[str] = []
    stop = threading.Event()
    report = sweep("t", uow_factory, "payment", {"PENDING_3DS"}, expire_handler(env, seen, stop), clock,
                   SweepPolicy(batch=2), stop=stop)
    assert report == SweepReport(claimed=2, finished=1, returned=1) and seen == ids[:1]
    back = store.payments[ids[1]]
    assert back.status == "PENDING_3DS" and back.claimed_until is None and back.attempts == 0
    assert back.next_attempt_at == clock.t
    assert store.payments[ids[2]].claimed_until is None  # the next batch was never claimed
